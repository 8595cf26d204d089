"""Measure cases: one worker process per case, loaded one after the other, then timed round-robin.

Round r calls every case of the group once, starting at a different case each round, so slow
drift of a noisy shared machine (other jobs, thermal, page cache) lands on every case alike.
Ratios are taken per round (a_r / b_r) and summarised by their median with a bootstrap interval.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgesight import progress

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    """One thing to time: a task's model in one format, run by one implementation."""

    task: str
    format: str                 # torch-fp32, onnx-fp32, onnx-int8, gguf-f16, gguf-q8_0, gguf-q4_k_m
    impl: str                   # edgesight, or a peer: transformers, optimum, llama-cpp-python
    factory: str = ""           # "module:function" that builds the case inside the worker
    params: dict = field(default_factory=dict)
    artifact: str | None = None  # file or directory whose size is reported
    skip: str | None = None      # why the case cannot run here (reported, never dropped)

    @property
    def id(self) -> str:
        return f"{self.task}/{self.format}/{self.impl}"


@dataclass
class Comparison:
    """ratio = a / b (latency measured in the same rounds, or artifact size). `key` is what the guard reads."""

    key: str
    a: str
    b: str
    what: str
    metric: str = "time"  # "time": paired per-round latency ratio; "size": artifact size ratio (exact)
    per_item: bool = True  # a and b count the same items (tokens), so a per-item ratio means something


@dataclass
class Group:
    """The cases of one task, timed together, and how their outputs are scored."""

    task: str
    cases: list[Case]
    comparisons: list[Comparison] = field(default_factory=list)
    score: Callable[[dict[str, list]], dict[str, dict]] | None = None  # outputs by case id -> metrics by case id
    note: str = ""


class WorkerError(RuntimeError):
    pass


class Worker:
    """A case's process. Its stderr goes to a log whose tail explains failures."""

    def __init__(self, case: Case, threads: int, timeout: float):
        self.case, self.timeout = case, timeout
        self.log = tempfile.NamedTemporaryFile("w+", prefix="edgesight-bench-", suffix=".log", delete=False)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   EDGESIGHT_THREADS=str(threads), EDGESIGHT_PROGRESS="0", TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        spec = json.dumps({"factory": case.factory, "params": case.params})
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", spec], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready = self._read()

    def _read(self) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.kill()
            why = "timed out" if not ready else f"exited with status {self.proc.wait()}"
            raise WorkerError(f"worker {why}: {self.tail()}")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(reply["error"])
        return reply

    def ask(self, op: str) -> dict:
        self.proc.stdin.write(json.dumps({"op": op}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def tail(self, lines: int = 6) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> dict:
        try:
            return self.ask("exit") if self.proc.poll() is None else {}
        finally:
            self.kill()
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)


def summarize(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "min_ms": float(ms.min()), "mean_ms": float(ms.mean()), "n": int(ms.size)}


def paired_ratio(a: list[float], b: list[float], seed: int = 0, items_a=None, items_b=None) -> dict:
    """Median of per-round ratios with a 95% bootstrap interval of that median. With the items each
    call produced (tokens), also the per-item ratio: fair when outputs end at different lengths."""
    r = np.asarray(a) / np.asarray(b)
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(r, size=(2000, r.size), replace=True), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    out = {"ratio": float(np.median(r)), "ci95": [float(lo), float(hi)],
           "ratio_of_medians": float(np.median(a) / np.median(b)), "rounds": int(r.size)}
    if items_a and items_b and all(items_a) and all(items_b):
        out["ratio_per_item"] = float(np.median(r * np.asarray(items_b) / np.asarray(items_a)))
    return out


def size_mb(path: str | None) -> float | None:
    if not path or not Path(path).exists():
        return None
    p = Path(path)
    total = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total / 2**20


def measure(group: Group, *, threads: int, rounds: int, warmup: int, batch_rounds: int,
            timeout: float = 900.0, progress_bar: bool | None = None) -> dict:
    """Run a group's cases; return {"cases": [...], "ratios": [...]} as JSON-able dicts."""
    results = {c.id: {"task": c.task, "format": c.format, "impl": c.impl, "id": c.id, "status": "skipped",
                      "reason": c.skip, "artifact_mb": size_mb(c.artifact), "threads": threads} for c in group.cases}
    workers: dict[str, Worker] = {}
    live = [c for c in group.cases if not c.skip]
    samples: dict[str, list[float]] = {c.id: [] for c in live}
    steps = len(live) * (2 + warmup + rounds + batch_rounds)
    bar = progress.bar(total=steps, desc=f"bench {group.task}", progress=progress_bar, unit="call")

    def fail(cid: str, exc: Exception) -> None:
        results[cid].update(status="skipped" if cid not in workers else "error", reason=str(exc))
        if cid in workers:
            workers.pop(cid).kill()

    def each(op: str, record: Callable[[str, dict], None], order: list[str] | None = None) -> None:
        for cid in order or list(workers):
            if cid in workers:
                try:
                    record(cid, workers[cid].ask(op))
                except WorkerError as exc:
                    fail(cid, exc)
            bar.update(1)

    try:
        for c in live:  # load one at a time: loads must not compete for the cores
            try:
                w = Worker(c, threads, timeout)
                workers[c.id] = w
                results[c.id].update(status="ok", reason=None, load_s=w.ready["load_s"], rss_after_load_mb=w.ready["rss_mb"])
            except WorkerError as exc:
                fail(c.id, exc)
            bar.update(1)
        each("call", lambda cid, r: results[cid].update(first_call_ms=r["s"] * 1000))
        for _ in range(warmup):
            each("call", lambda cid, r: None)
        items: dict[str, list] = {cid: [] for cid in samples}
        for i in range(rounds):
            ids = list(workers)
            order = ids[i % len(ids):] + ids[:i % len(ids)] if ids else []

            def keep(cid, r):
                samples[cid].append(r["s"])
                items[cid].append(r["value"])
            each("call", keep, order)
        throughput: dict[str, list[float]] = {cid: [] for cid in samples}
        for _ in range(batch_rounds):
            each("batch", lambda cid, r: throughput[cid].append(r["value"] / r["s"]))
        outputs: dict[str, list] = {}
        each("outputs", lambda cid, r: outputs.__setitem__(cid, r["value"]))
        for cid in list(workers):
            try:
                results[cid]["peak_rss_mb"] = workers.pop(cid).close().get("peak_rss_mb")
            except WorkerError as exc:
                results[cid]["reason"] = f"exit: {exc}"
            bar.update(1)
    finally:
        for w in workers.values():
            w.kill()
        bar.close()

    for cid, s in samples.items():
        if results[cid]["status"] == "ok" and len(s) == rounds:
            results[cid].update(summarize(s), samples_ms=[x * 1000 for x in s],
                                items_per_call=float(np.median(items[cid])) if items[cid] else None,
                                batch_items_per_s=float(np.median(throughput[cid])) if throughput[cid] else None)
    if group.score and outputs:
        for cid, metrics in group.score(outputs).items():
            results[cid]["quality"] = metrics
    ratios = []
    for comp in group.comparisons:
        entry = {"key": comp.key, "a": comp.a, "b": comp.b, "what": comp.what, "metric": comp.metric}
        a, b = samples.get(comp.a), samples.get(comp.b)
        if comp.metric == "size":
            sa, sb = (results.get(x, {}).get("artifact_mb") for x in (comp.a, comp.b))
            if sa and sb:
                entry.update(status="ok", ratio=sa / sb, ci95=[sa / sb, sa / sb])
            else:
                entry.update(status="skipped", reason="artifact missing")
        elif a and b and len(a) == len(b) == rounds and all(results[x]["status"] == "ok" for x in (comp.a, comp.b)):
            entry.update(status="ok", **paired_ratio(a, b, **({"items_a": items.get(comp.a), "items_b": items.get(comp.b)} if comp.per_item else {})))
        else:
            why = [f"{x}: {results[x]['reason']}" for x in (comp.a, comp.b) if x in results and results[x]["status"] != "ok"]
            entry.update(status="skipped", reason="; ".join(why) or "case not defined")
        ratios.append(entry)
    return {"cases": list(results.values()), "ratios": ratios}
