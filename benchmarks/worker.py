"""One benchmark case in its own process, driven by JSON lines on stdin/stdout.

    python -m benchmarks.worker '{"factory": "benchmarks.impls:onnx_sdk", "params": {...}}'

The factory (`module:function`, called with `params`) returns an object with `call()` (one input),
`items() -> int` (what that call generated, e.g. tokens; counted outside the timing), `batch() -> int`
(one batch; returns the number of inputs) and `outputs() -> list` (outputs on the eval inputs).
Commands: {"op": "call"|"batch"|"outputs"|"exit"}; every reply is one JSON line with "ok".
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback


def _status_mb(field: str) -> float:
    # VmHWM is this process's own peak: ru_maxrss would carry the parent's peak across fork+exec.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def _rss_mb() -> float:
    return _status_mb("VmRSS:")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM:")


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
            seconds = time.perf_counter() - t0
            reply(ok=True, s=seconds, value=case.items() if op == "call" else value)
        except Exception as exc:
            traceback.print_exc()
            reply(ok=False, error=f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
