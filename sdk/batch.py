"""Batch jobs: one task over a backlog of inputs, in one process or on Ray Data.

    edgesight batch keywords prompts.jsonl --out keywords.jsonl                  # one process
    edgesight batch caption photos/ --out captions.parquet --engine ray --workers 2 --threads 1

    from edgesight.batch import run_batch
    summary = run_batch("describe", "detections.jsonl", "out.jsonl", engine="ray", workers=2)

Inputs: a folder (every file under it is one image, id = its relative path), a .jsonl / .csv / .parquet
table (one row per input, id = the row's "id" column or its line/row number) or a .txt file (one prompt a
line). How a row becomes a task input is the task's `inputs` kind in the registry ("text", "json",
"image"), read by `INPUT_KINDS` below: no task is special-cased here.

Output: .jsonl (one line per input) or .parquet (a directory of part files, which pyarrow, pandas and Ray
read as one table). Every input gives exactly one row: {"id", "input", "ok": true, "result": ...} or
{"id", "input", "ok": false, "error": {"type": "InputError", "message": ...}}. A rerun with the same --out
skips the ids already written (resume after a crash or Ctrl-C); a half-written last JSONL line is dropped.

Engines share everything but the scheduling: `BatchRunner` loads the bundle once and turns a batch of rows
into a batch of output rows (a failing batch is retried row by row, so one bad input costs only its own
row). `engine="local"` calls it in this process; `engine="ray"` gives it to Ray Data as the actor class of
`map_batches` (`concurrency=workers`, `num_cpus=threads` per actor), on `ray.init()` locally or
`ray.init(address=...)` on a cluster, and streams its output back here, where the same writer appends it.
Ray restarts a dead actor and re-runs its batch (Ray Data's defaults for actor pools), and an output
batch reaches the writer only once, so a killed worker loses and duplicates nothing.

Parquet support (pyarrow) comes with the `[ray]` extra (`ray[data]` depends on pyarrow); JSONL, CSV and
folders need nothing beyond the core. Ray is imported only when `engine="ray"`.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import InputError
from .limits import parse_json
from .progress import bar

ENGINES = ("local", "ray")
# Columns tried, in order, when no --column is given: the task input is the first one a table has.
DEFAULT_COLUMNS = {"text": ("prompt", "text", "input"), "json": ("input",), "image": ("image", "path", "file")}
OUTPUT_COLUMNS = ("id", "input", "ok", "result", "error_type", "error")


# ----------------------------------------------------------------------------- rows in

def _parse_text(row: dict, where: str):
    if row.get("text") is None:
        raise InputError(f"{where}: no prompt text in this row")
    return row["text"]


def _parse_json(row: dict, where: str):
    text = row.get("text")
    if text is None:
        raise InputError(f"{where}: no JSON input in this row")
    return parse_json(text, where)   # depth, number size and UTF-8 limits as everywhere else


def _parse_image(row: dict, where: str):
    if row.get("data") is not None:
        return bytes(row["data"])          # encoded image bytes (a binary Parquet column)
    if row.get("text") is None:
        raise InputError(f"{where}: no image path in this row")
    return row["text"]                     # a path: the task's load_image opens it (on the worker)


# inputs kind (TaskSpec.inputs) -> row {"text", "data"} -> the task's input
INPUT_KINDS: dict[str, Callable[[dict, str], Any]] = {"text": _parse_text, "json": _parse_json, "image": _parse_image}


def _row(id_, text=None, data=None, error=None) -> dict:
    """One input row, as the engines carry it (plain columns, so Ray's Arrow blocks hold any task's rows)."""
    return {"id": str(id_), "text": text, "data": data, "error": error}


def _cell(record: dict, kind: str, column: str | None, base: Path) -> dict:
    """The task input's cell of a JSONL/CSV/Parquet record -> {"text"/"data"}; json kinds keep JSON text."""
    names = (column,) if column else DEFAULT_COLUMNS[kind]
    name = next((n for n in names if n in record), None)
    if name is None:
        if kind == "json" and not column:          # a JSONL line that is the detector output itself
            return {"text": json.dumps({k: v for k, v in record.items() if k != "id"}, ensure_ascii=False)}
        return {"error": f"no column {' / '.join(repr(n) for n in names)} in this row (pass --column)"}
    value = record[name]
    if isinstance(value, (bytes, bytearray)):
        return {"data": bytes(value)}
    if kind == "json" and not isinstance(value, str):
        return {"text": json.dumps(value, ensure_ascii=False)}
    if kind == "image" and isinstance(value, str) and value and not Path(value).is_absolute():
        value = str(base / value)                  # image paths are relative to the table's folder
    if value is not None and not isinstance(value, str):
        return {"error": f"column {name!r} holds {type(value).__name__}, expected a string"}
    return {"text": value}


def read_rows(source, kind: str, column: str | None = None) -> list[dict]:
    """Every input of `source` as a row (id + cell); a row that cannot be read carries its error instead."""
    path = Path(source)
    if kind not in INPUT_KINDS:
        raise InputError(f"unknown input kind {kind!r}; kinds: {', '.join(INPUT_KINDS)}")
    if path.is_dir():
        if kind != "image":
            raise InputError(f"{path} is a folder; this task takes a .jsonl, .csv, .parquet or .txt file")
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts))
        return [_row(p.relative_to(path).as_posix(), text=str(p.resolve())) for p in files]
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".txt" and kind == "text":
        lines = _read_text(path).splitlines()
        return [_row(n, text=line) for n, line in enumerate(lines, 1) if line.strip()]
    if suffix == ".jsonl":
        records = []
        for n, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = parse_json(line, f"line {n}")
                records.append((n, rec if isinstance(rec, dict) else {"input": rec}, None))
            except InputError as exc:
                records.append((n, None, str(exc)))
    elif suffix == ".csv":
        records = [(n, rec, None) for n, rec in enumerate(csv.DictReader(io.StringIO(_read_text(path))), 2)]
    elif suffix == ".parquet":
        pq = _pyarrow_parquet()
        records = [(n, rec, None) for n, rec in enumerate(pq.read_table(path).to_pylist())]
    else:
        raise InputError(f"{path}: inputs are a folder of images or a .jsonl, .csv, .parquet"
                         f"{' or .txt' if kind == 'text' else ''} file, not {suffix or 'a file without suffix'}")
    rows, seen = [], set()
    for n, rec, error in records:
        id_ = str(rec["id"]) if rec is not None and rec.get("id") is not None else str(n)
        if id_ in seen:
            raise InputError(f"{path}: id {id_!r} appears twice; ids must be unique for the output to map back")
        seen.add(id_)
        rows.append(_row(id_, error=error) if rec is None else _row(id_, **_cell(rec, kind, column, path.resolve().parent)))
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (bad byte at position {exc.start})") from None


def _pyarrow_parquet():
    from ._optional import require
    return require("pyarrow.parquet", "ray")


# ----------------------------------------------------------------------------- the work

def _error(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc) or repr(exc)


def _json(result) -> str:
    return json.dumps(result, ensure_ascii=False, default=lambda o: o.to_dict())


class BatchRunner:
    """Loads the task's bundle once; `runner(batch)` maps input rows (columns "id", "text", "data",
    "error") to output rows (OUTPUT_COLUMNS). Ray Data constructs one per actor; the local engine one."""

    def __init__(self, task: str, model=None, *, backend: str | None = None, threads: int | None = 1,
                 device: str = "cpu", init: dict | None = None, options: dict | None = None):
        from .registry import get

        spec = get(task)
        self.parse = INPUT_KINDS[spec.inputs]
        self.task = spec.load_class().from_pretrained(model, backend=backend, threads=threads, device=device,
                                                      **(init or {}))
        self.options = options or {}

    def __call__(self, batch) -> dict:
        if hasattr(batch, "to_pydict"):        # Ray hands a pyarrow Table (None stays None, unlike numpy)
            batch = batch.to_pydict()
        ids = [str(i) for i in batch["id"]]
        rows = [{k: batch[k][i] for k in ("text", "data", "error")} for i in range(len(ids))]
        out = {c: [] for c in OUTPUT_COLUMNS}
        inputs, todo, outcome = [], [], {}
        for i, (id_, row) in enumerate(zip(ids, rows)):
            try:
                if row["error"] is not None:
                    raise InputError(row["error"])
                inputs.append(self.parse(row, f"input {id_}"))
                todo.append(i)
            except Exception as exc:  # noqa: BLE001 - a row that cannot be parsed is that row's error
                outcome[i] = (False, _error(exc))
        for i, result in zip(todo, self._run(inputs)):
            outcome[i] = result
        for i, (id_, row) in enumerate(zip(ids, rows)):
            ok, value = outcome[i]
            out["id"].append(id_)
            out["input"].append(row["text"])
            out["ok"].append(ok)
            out["result"].append(_json(value) if ok else None)
            out["error_type"].append(None if ok else value[0])
            out["error"].append(None if ok else value[1])
        return out

    def _run(self, inputs: list) -> list[tuple[bool, Any]]:
        """The whole batch in one call (the task buckets and caps it); if that fails, each input alone,
        so only the inputs that fail on their own become error rows."""
        if not inputs:
            return []
        try:
            return [(True, r) for r in self.task(inputs, **self.options)]
        except Exception:  # noqa: BLE001 - retried one by one below, where each failure gets its row
            pass
        results = []
        for x in inputs:
            try:
                results.append((True, self.task(x, **self.options)))
            except Exception as exc:  # noqa: BLE001 - typed error row; the job goes on
                results.append((False, _error(exc)))
        return results


# ----------------------------------------------------------------------------- rows out

class _JsonlWriter:
    def __init__(self, path: Path):
        self.path = path
        self.done = set()
        if path.is_file():
            data = path.read_bytes()
            keep = data[: data.rfind(b"\n") + 1]          # a crash can leave half a line: drop it
            if len(keep) != len(data):
                with open(path, "r+b") as f:
                    f.truncate(len(keep))
            self.done = {json.loads(line)["id"] for line in keep.decode("utf-8").splitlines() if line.strip()}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, out: dict) -> None:
        lines = []
        for i in range(len(out["id"])):
            rec = {"id": out["id"][i], "input": out["input"][i], "ok": bool(out["ok"][i])}
            if rec["ok"]:
                rec["result"] = json.loads(out["result"][i])
            else:
                rec["error"] = {"type": out["error_type"][i], "message": out["error"][i]}
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
        self.file.write("".join(lines))
        self.file.flush()                                  # a finished batch survives a crash of the next

    def close(self) -> None:
        self.file.close()


class _ParquetWriter:
    """A directory of part-NNNNN.parquet files (each written whole, then renamed into place)."""

    def __init__(self, path: Path):
        self.pq = _pyarrow_parquet()
        import pyarrow as pa
        self.pa, self.path = pa, path
        if path.exists() and not path.is_dir():
            raise InputError(f"{path} exists and is not a Parquet directory; choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        parts = sorted(path.glob("part-*.parquet"))
        self.done = {i for p in parts for i in self.pq.read_table(p, columns=["id"]).column("id").to_pylist()}
        self.next = len(parts)
        self.schema = pa.schema([("id", pa.string()), ("input", pa.string()), ("ok", pa.bool_()),
                                 ("result", pa.string()), ("error_type", pa.string()), ("error", pa.string())])

    def write(self, out: dict) -> None:
        from .bundle import atomic_write_bytes
        table = self.pa.Table.from_pydict({c: list(out[c]) for c in OUTPUT_COLUMNS}, schema=self.schema)
        buf = self.pa.BufferOutputStream()
        self.pq.write_table(table, buf)
        while (self.path / f"part-{self.next:05d}.parquet").exists():
            self.next += 1
        atomic_write_bytes(self.path / f"part-{self.next:05d}.parquet", buf.getvalue().to_pybytes())
        self.next += 1

    def close(self) -> None:
        pass


def _writer(out: Path):
    if out.suffix.lower() == ".jsonl":
        return _JsonlWriter(out)
    if out.suffix.lower() == ".parquet":
        return _ParquetWriter(out)
    raise InputError(f"--out {out}: write a .jsonl file or a .parquet directory")


def read_output(out) -> list[dict]:
    """The rows a batch job wrote (JSONL or Parquet), results decoded: for tests and quick looks."""
    out = Path(out)
    if out.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = _pyarrow_parquet().read_table(out).to_pylist()
    return [{"id": r["id"], "input": r["input"], "ok": r["ok"],
             **({"result": json.loads(r["result"])} if r["ok"] else {"error": {"type": r["error_type"], "message": r["error"]}})}
            for r in rows]


# ----------------------------------------------------------------------------- the job

@dataclass
class BatchSummary:
    out: str
    engine: str
    total: int          # inputs in the source
    skipped: int        # already in the output (resumed)
    done: int           # written by this run
    errors: int         # of those, error rows
    seconds: float      # wall time of the processing (bundle loading and Ray start-up included)
    first_output_s: float | None = None   # until the first output rows were written (start-up)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _columns(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in ("id", "text", "data", "error")}


def run_batch(task: str, source, out, *, engine: str = "local", model=None, backend: str | None = None,
              threads: int | None = None, device: str = "cpu", workers: int = 1, batch_size: int = 64,
              column: str | None = None, init: dict | None = None, options: dict | None = None,
              address: str | None = None, progress: bool | None = None, runner: type | None = None) -> BatchSummary:
    """Run `task` over every input of `source` into `out` (.jsonl or .parquet); see the module doc.

    `threads`: inference threads per worker (default: the usable cores for "local", 1 for "ray");
    `workers`: Ray actors (each loads the bundle once, `num_cpus=threads`); `address`: a Ray cluster
    ("auto", "ray://host:10001"; None = a local Ray started here, or the one already initialised);
    `init`: from_pretrained keyword arguments (e.g. {"catalog": "catalog.csv"}); `options`: per-call
    keyword arguments (e.g. {"vocabulary": ["Cat", "Dog"]}); `runner`: a BatchRunner subclass to use instead."""
    import time

    from .registry import get

    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if batch_size < 1 or workers < 1:
        raise InputError("batch_size and workers must be >= 1")
    spec = get(task)
    t0 = time.perf_counter()
    rows = read_rows(source, spec.inputs, column)
    writer = _writer(Path(out))
    todo = [r for r in rows if r["id"] not in writer.done]
    errors, first = 0, None
    try:
        with bar(total=len(todo), desc=f"batch {task}", unit="input", progress=progress) as pbar:
            if todo:
                kwargs = dict(model=model, backend=backend, device=device, init=init, options=options,
                              runner=runner or BatchRunner)
                chunks = (_run_local(task, todo, batch_size, threads=threads, **kwargs) if engine == "local" else
                          _run_ray(task, todo, batch_size, threads=threads or 1, workers=workers, address=address, **kwargs))
                for chunk in chunks:
                    writer.write(chunk)
                    first = first or round(time.perf_counter() - t0, 3)
                    errors += sum(not ok for ok in chunk["ok"])
                    pbar.update(len(chunk["id"]))
    finally:
        writer.close()
    return BatchSummary(str(out), engine, len(rows), len(rows) - len(todo), len(todo), errors,
                        round(time.perf_counter() - t0, 3), first)


def _run_local(task, rows, batch_size, *, runner, **kwargs):
    runner = runner(task, **kwargs)
    for i in range(0, len(rows), batch_size):
        yield runner(_columns(rows[i:i + batch_size]))


def _run_ray(task, rows, batch_size, *, threads: int, workers: int, address, runner, **kwargs):
    from ._optional import require

    ray = require("ray", "ray")
    require("ray.data", "ray")
    if not ray.is_initialized():
        # a local Ray gets exactly the CPUs the workers ask for; a cluster has its own
        ray.init(address=address, **({} if address else {"num_cpus": workers * threads}),
                 include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False               # ours counts rows as they are written
    ctx.print_on_execution_start = False
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 8 * workers)))
    ds = ds.map_batches(runner, fn_constructor_args=(task,), fn_constructor_kwargs={**kwargs, "threads": threads},
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
                        num_cpus=threads, num_gpus=1 if kwargs.get("device") == "cuda" else None,
                        batch_format="pyarrow")
    for chunk in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield chunk.to_pydict()


# ----------------------------------------------------------------------------- the command

def add_cli_arguments(p) -> None:
    from .cli import add_runtime_arguments
    from .registry import TASKS

    p.add_argument("task", choices=list(TASKS))
    p.add_argument("input", help="a folder of images, or a .jsonl / .csv / .parquet (/ .txt of prompts) file")
    p.add_argument("--out", required=True, help="output .jsonl file or .parquet directory; rerun to resume")
    p.add_argument("--model", default=None, help="bundle directory (default: the task's embedded default)")
    p.add_argument("--engine", choices=ENGINES, default="local")
    p.add_argument("--workers", type=int, default=1, help="Ray actors, each with its own copy of the model")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--column", default=None, help="the table column holding the input (default: "
                   + "; ".join(f"{k}: {'/'.join(v)}" for k, v in DEFAULT_COLUMNS.items()) + ")")
    p.add_argument("--init", action="append", default=[], metavar="KEY=VALUE",
                   help="from_pretrained option, e.g. catalog=catalog.csv (VALUE is JSON or a string)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help='per-call option, e.g. vocabulary=\'["Cat", "Dog"]\'')
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runtime_arguments(p)
    p.set_defaults(json=True)


def _pairs(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(args) -> dict:
    summary = run_batch(args.task, args.input, args.out, engine=args.engine, model=args.model, backend=args.backend,
                        threads=args.threads, device=args.device, workers=args.workers, batch_size=args.batch_size,
                        column=args.column, init=_pairs(args.init, "--init"), options=_pairs(args.option, "--option"),
                        address=args.address, progress=False if args.no_progress else None)
    return summary.to_dict()


__all__ = ["run_batch", "read_rows", "read_output", "BatchRunner", "BatchSummary", "INPUT_KINDS"]
