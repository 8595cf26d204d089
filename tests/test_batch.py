"""`edgesight batch` on the local engine with the default bundles: every input gives exactly one row
(a result or a typed error), reruns resume, tables and folders of every task's input kind."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgesight.batch import read_output, read_rows, run_batch
from edgesight.errors import InputError

PROMPTS = ["Segment cats and dogs", "Find the red cars", "ignore everything except the umbrellas", ""]


def write_prompts(path: Path, prompts=PROMPTS) -> Path:
    lines = [json.dumps({"prompt": p}) for p in prompts]
    lines += ['{"prompt": 5}', "not json", '{"text": "Outline every bicycle"}', '{"other": "no prompt"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def by_id(rows):
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a row was written twice"
    return {r["id"]: r for r in rows}


def test_jsonl_every_row_once_with_typed_errors(tmp_path):
    src = write_prompts(tmp_path / "p.jsonl")
    summary = run_batch("keywords", src, tmp_path / "out.jsonl", threads=1, batch_size=3, progress=False)
    rows = by_id(read_output(tmp_path / "out.jsonl"))
    assert set(rows) == {str(n) for n in range(1, 9)} and summary.done == 8 and summary.errors == 3
    assert rows["1"]["result"] == ["Cat", "Dog"] and rows["4"]["result"] == []
    assert rows["7"]["result"] == ["Bicycle"]          # "text" is the second default column
    for bad in ("5", "6", "8"):
        assert rows[bad]["ok"] is False and rows[bad]["error"]["type"] == "InputError"
    # the same prompts one by one give the same answers as the batch
    import edgesight
    kw = edgesight.KeywordExtractor.from_pretrained(threads=1)
    assert [rows[str(i)]["result"] for i in (1, 2, 3)] == [kw(p) for p in PROMPTS[:3]]


def test_rerun_resumes_without_duplicates(tmp_path):
    src = write_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "out.jsonl"
    run_batch("keywords", src, out, threads=1, batch_size=3, progress=False)
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10], encoding="utf-8")   # a crash mid-line
    summary = run_batch("keywords", src, out, threads=1, batch_size=3, progress=False)
    assert (summary.skipped, summary.done) == (3, 5)
    assert set(by_id(read_output(out))) == {str(n) for n in range(1, 9)}
    again = run_batch("keywords", src, out, threads=1, progress=False)
    assert (again.skipped, again.done) == (8, 0)


def test_a_bad_row_costs_only_itself(tmp_path):
    """The model raises on one input of a batch (over the length limit): only that row is an error."""
    src = tmp_path / "p.csv"
    src.write_text("id,prompt\na,Find the cars\nb," + "cat " * 400 + "\nc,Segment the dogs\n", encoding="utf-8")
    run_batch("keywords", src, tmp_path / "o.jsonl", threads=1, progress=False)
    rows = by_id(read_output(tmp_path / "o.jsonl"))
    assert rows["a"]["result"] == ["Car"] and rows["c"]["result"] == ["Dog"]
    assert rows["b"]["error"]["type"] == "InputError" and "tokens" in rows["b"]["error"]["message"]


def test_images_folder_to_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    from PIL import Image
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "red.png")
    Image.new("RGB", (48, 64), (30, 30, 200)).save(folder / "sub" / "blue.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / ".hidden").write_bytes(b"skipped")
    for task in ("caption", "products"):
        out = tmp_path / f"{task}.parquet"
        summary = run_batch(task, folder, out, threads=1, batch_size=2, progress=False)
        rows = by_id(read_output(out))
        assert set(rows) == {"red.png", "sub/blue.jpg", "broken.jpg"} and summary.errors == 1
        assert rows["broken.jpg"]["error"]["type"] == "ImageError"
        assert rows["red.png"]["ok"] and rows["sub/blue.jpg"]["ok"]
    assert "caption" in rows_of(tmp_path / "caption.parquet")["red.png"]["result"]


def rows_of(out):
    return by_id(read_output(out))


def test_describe_jsonl_detector_outputs(tmp_path):
    src = tmp_path / "d.jsonl"
    good = {"detections": [{"label": "plastic", "confidence": 0.9}], "scene": {"class": "grass", "confidence": 0.95}}
    src.write_text(json.dumps(good) + "\n" + json.dumps({"id": "bad", "detections": "nope"}) + "\n"
                   + json.dumps({"input": good}) + "\n", encoding="utf-8")
    run_batch("describe", src, tmp_path / "o.jsonl", threads=1, progress=False)
    rows = by_id(read_output(tmp_path / "o.jsonl"))
    assert set(rows) == {"1", "bad", "3"}
    assert rows["1"]["result"]["text"] and rows["1"]["result"] == rows["3"]["result"]
    assert rows["bad"]["error"]["type"] == "InputError"


def test_source_errors_are_typed(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl", "text")
    with pytest.raises(InputError, match="folder"):
        read_rows(tmp_path, "text")
    dup = tmp_path / "d.jsonl"
    dup.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="twice"):
        read_rows(dup, "text")
    with pytest.raises(InputError, match="jsonl"):
        run_batch("keywords", write_prompts(tmp_path / "p.jsonl"), tmp_path / "out.txt", progress=False)


def test_cli_batch(tmp_path):
    src = write_prompts(tmp_path / "p.jsonl")
    cmd = [sys.executable, "-m", "edgesight.cli", "batch", "keywords", str(src), "--out", str(tmp_path / "o.jsonl"),
           "--threads", "1", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["done"] == 8
    bad = subprocess.run(cmd + ["--engine", "spark"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "spark" in bad.stderr


def test_core_import_stays_lean():
    code = ("import sys, edgesight, edgesight.batch, edgesight.cli; "
            "bad = [m for m in ('torch', 'ray', 'pyarrow', 'transformers') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_in_buckets_caps_sorts_and_restores_order():
    from edgesight.tasks.base import in_buckets
    items = ["x" * n for n in (9, 1, 5, 3, 7, 2, 8, 4, 6, 0)]
    calls = []

    def fn(chunk):
        calls.append([len(x) for x in chunk])
        return [len(x) for x in chunk]

    assert in_buckets(items, fn, cap=4) == [len(x) for x in items]
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]     # similar lengths share a batch, none over the cap
    assert in_buckets([], fn, cap=4) == [] and in_buckets([{"a": 1}], lambda c: ["r"], cap=4) == ["r"]


def test_hostile_jsonl_lines_are_error_rows(tmp_path):
    """A line nested 10 000 deep or with a 5 000-digit number is that row's typed error (the shared JSON
    limits of edgesight.limits), never a RecursionError/ValueError that stops the job."""
    src = tmp_path / "h.jsonl"
    src.write_text("[" * 10_000 + "]" * 10_000 + "\n" + '{"prompt": ' + "9" * 5000 + "}\n"
                   + '{"prompt": "Find the cars"}\n', encoding="utf-8")
    rows = read_rows(src, "text")
    assert len(rows) == 3 and "deep" in rows[0]["error"] and "digits" in rows[1]["error"]
    assert rows[2].get("error") is None
