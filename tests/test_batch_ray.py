"""`edgesight batch --engine ray` on a real local Ray (2 CPUs, 2 actors): every row back exactly once,
bad rows included, the same answers as the local engine; a worker process killed mid-run is replaced
and the job still writes every row once. About 25-40 s on 2 cores (Ray start-up is most of it)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from edgesight.batch import BatchRunner, read_output, run_batch  # noqa: E402

N = 60
BAD = sum(i % 13 == 5 or i % 17 == 3 for i in range(N))   # broken JSON or a non-string prompt


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    # the test's runner subclass travels by value: Ray workers cannot import tests/
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def prompts(path: Path) -> Path:
    names = ["cats", "dogs", "red cars", "bicycles", "umbrellas", "chairs"]
    lines = []
    for i in range(N):
        if i % 13 == 5:
            lines.append("{broken json")
        elif i % 17 == 3:
            lines.append(json.dumps({"prompt": ["not", "a", "string"]}))
        else:
            lines.append(json.dumps({"prompt": f"Segment the {names[i % 6]} and the {names[(i + 2) % 6]} ({i})"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def check_once(out: Path, expected: dict) -> dict:
    rows = read_output(out)
    ids = [r["id"] for r in rows]
    assert sorted(ids, key=int) == [str(n) for n in range(1, N + 1)], "rows lost or duplicated"
    got = {r["id"]: (r["result"] if r["ok"] else r["error"]["type"]) for r in rows}
    assert got == expected
    return got


@pytest.fixture(scope="module")
def local_answers(tmp_path_factory):
    work = tmp_path_factory.mktemp("local")
    src = prompts(work / "p.jsonl")
    run_batch("keywords", src, work / "o.jsonl", threads=1, batch_size=8, progress=False)
    answers = {r["id"]: (r["result"] if r["ok"] else r["error"]["type"]) for r in read_output(work / "o.jsonl")}
    assert sum(a == "InputError" for a in answers.values()) == BAD   # the bad rows are there, as errors
    return src, answers


def test_two_workers_every_row_once(local_ray, local_answers, tmp_path):
    src, answers = local_answers
    summary = run_batch("keywords", src, tmp_path / "o.parquet", engine="ray", workers=2, threads=1,
                        batch_size=8, progress=False)
    assert (summary.done, summary.errors) == (N, BAD)
    check_once(tmp_path / "o.parquet", answers)


class DiesOnce(BatchRunner):
    """Kills its own worker process on its second batch, once per job (a marker file remembers)."""

    def __init__(self, task, marker=None, **kwargs):
        super().__init__(task, **kwargs)
        self.marker, self.calls = marker, 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2 and self.marker and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)                     # no exception, no clean-up: the process is gone
        return super().__call__(batch)


def test_killed_worker_loses_and_duplicates_nothing(local_ray, local_answers, tmp_path):
    src, answers = local_answers
    marker = tmp_path / "died"
    runner = type("Runner", (DiesOnce,), {"__init__": lambda self, task, **kw: DiesOnce.__init__(self, task, str(marker), **kw)})
    summary = run_batch("keywords", src, tmp_path / "o.jsonl", engine="ray", workers=2, threads=1, batch_size=4,
                        progress=False, runner=runner)
    assert marker.is_file(), "no worker was killed: the test did not test anything"
    assert summary.done == N
    check_once(tmp_path / "o.jsonl", answers)
