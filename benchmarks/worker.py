"""One benchmark case in its own process, driven by JSON lines on stdin/stdout.

    python -m benchmarks.worker '{"factory": "benchmarks.impls:onnx_sdk", "params": {...}}'

The factory (`module:function`, called with `params`) returns an object with `call() -> int`
(one input; returns the number of generated items, e.g. tokens), `batch() -> int` (one batch;
returns the number of inputs) and `outputs() -> list` (outputs on the eval inputs, for quality).
Commands: {"op": "call"|"batch"|"outputs"|"exit"}; every reply is one JSON line with "ok".
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    spec = json.loads(sys.argv[1])
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(**fields):
        proto.write(json.dumps(fields) + "\n")

    try:
        t0 = time.perf_counter()
        module, func = spec["factory"].split(":")
        case = getattr(importlib.import_module(module), func)(spec["params"])
        reply(ok=True, load_s=time.perf_counter() - t0, rss_mb=_rss_mb())
    except Exception as exc:  # report why, the coordinator marks the case skipped
        traceback.print_exc()
        reply(ok=False, error=f"{type(exc).__name__}: {exc}")
        return
    for line in sys.stdin:
        op = json.loads(line)["op"]
        try:
            if op == "exit":
                reply(ok=True, peak_rss_mb=_peak_rss_mb())
                return
            t0 = time.perf_counter()
            value = {"call": case.call, "batch": case.batch, "outputs": case.outputs}[op]()
            reply(ok=True, s=time.perf_counter() - t0, value=value)
        except Exception as exc:
            traceback.print_exc()
            reply(ok=False, error=f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
