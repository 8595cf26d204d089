"""Do batches pay off? Per-input time of each task's default bundle called one input at a time, with a
list (the API: length-sorted batches of at most `Task.max_batch`), and with the whole list in one model
batch (`_run_batch`, what a list did before bucketing), in interleaved rounds in one process.

    python -m benchmarks.batching --rounds 3 --json benchmarks/results/batching.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

SIZES = {"keywords": 128, "describe": 16, "caption": 32, "products": 32}


def inputs_for(task: str, n: int, work: Path) -> list:
    from benchmarks.scale import make_inputs
    work.mkdir(parents=True, exist_ok=True)
    source = make_inputs(task, n, work)
    if source.is_dir():
        return sorted(str(p) for p in source.iterdir())[:n]
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    return [r.get("prompt", r) for r in rows][:n]


def per_input_ms(fn, items) -> float:
    t = time.perf_counter()
    fn(items)
    return (time.perf_counter() - t) * 1e3 / len(items)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batching", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tasks", default=",".join(SIZES))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from edgesight.registry import TASKS
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesight-batching-") as tmp:
        for name in args.tasks.split(","):
            task = TASKS[name].load_class().from_pretrained(threads=1)
            items = inputs_for(name, SIZES[name], Path(tmp) / name)
            task(items[:4])                                       # warm-up
            modes = {"single": lambda xs: [task(x) for x in xs], "list (bucketed)": task,
                     "one batch (before)": task._run_batch}
            times = {m: [] for m in modes}
            for _ in range(args.rounds):
                for m, fn in modes.items():
                    times[m].append(per_input_ms(fn, items))
            med = {m: statistics.median(v) for m, v in times.items()}
            rows.append({"task": name, "inputs": len(items), "max_batch": task.max_batch,
                         **{f"{m} ms": round(v, 2) for m, v in med.items()},
                         "list / single": round(med["list (bucketed)"] / med["single"], 3),
                         "one batch / single": round(med["one batch (before)"] / med["single"], 3)})
            print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "rounds": args.rounds, "loadavg_end": load}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
