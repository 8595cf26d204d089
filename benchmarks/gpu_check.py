"""Every task's default bundle on device="cuda" against the same bundle on the CPU: outputs compared,
latency per call, one table. Run by benchmarks/gpu_check.sh on a machine with an NVIDIA GPU.

    python -m benchmarks.gpu_check [--repeats 5] [--threads 4] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SAMPLES = {
    "keywords": ["Segment cats, dogs, but not humans", "Find the red cars and the bicycles"],
    "describe": None,   # the task module's SAMPLE_INPUTS
    "caption": None,
    "products": None,
}


def _timed(task, inputs, repeats: int):
    outs = [task(x) for x in inputs]            # warm-up (CUDA kernels, caches) and the outputs compared
    times = []
    for _ in range(repeats):
        for x in inputs:
            t0 = time.perf_counter()
            task(x)
            times.append((time.perf_counter() - t0) * 1000)
    return [o.to_dict() if hasattr(o, "to_dict") else o for o in outs], statistics.median(times)


def main(argv=None) -> int:
    from edgesight.registry import TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows, failed = [], 0
    for name, spec in TASKS.items():
        inputs = SAMPLES.get(name) or list(spec.load_module().SAMPLE_INPUTS)
        row = {"task": name}
        try:
            cls = spec.load_class()
            cpu = cls.from_pretrained(None, threads=args.threads, device="cpu")
            gpu = cls.from_pretrained(None, threads=args.threads, device="cuda")
            cpu_out, row["cpu_ms"] = _timed(cpu, inputs, args.repeats)
            gpu_out, row["cuda_ms"] = _timed(gpu, inputs, args.repeats)
            row.update(backend=gpu.backend, precision=gpu.bundle.precision, same_output=cpu_out == gpu_out,
                       speedup=round(row["cpu_ms"] / row["cuda_ms"], 2))
            if not row["same_output"]:
                row["cpu_output"], row["cuda_output"] = cpu_out, gpu_out
        except Exception as exc:  # report every task, then fail
            row["error"] = f"{type(exc).__name__}: {exc}"
            failed += 1
        rows.append(row)
    print(f"{'task':<10} {'backend':<8} {'precision':<9} {'cpu ms':>9} {'cuda ms':>9} {'speed-up':>9}  same output")
    for r in rows:
        if "error" in r:
            print(f"{r['task']:<10} ERROR {r['error']}")
        else:
            print(f"{r['task']:<10} {r['backend']:<8} {str(r['precision']):<9} {r['cpu_ms']:>9.1f} {r['cuda_ms']:>9.1f} "
                  f"{r['speedup']:>9.2f}  {r['same_output']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
