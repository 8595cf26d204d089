"""What every task shares: bundle resolution, backend choice, thread count, batch dispatch."""
from __future__ import annotations

import os
from typing import Any

from .. import defaults
from ..backends import check_backend


def default_threads(threads: int | None) -> int:
    """Explicit threads win; else EDGESIGHT_THREADS; else OMP_NUM_THREADS; else the usable cores
    (onnxruntime and llama.cpp would otherwise size pools from host cores and ignore cgroups)."""
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return int(threads)
    for var in ("EDGESIGHT_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Task:
    """Base of the four task classes. Subclasses set `name` and implement `_run_batch`."""

    name: str = ""

    def __init__(self, bundle, backend: str | None = None, threads: int | None = None):
        self.bundle = bundle
        self.backend = check_backend(bundle, backend)
        self.threads = default_threads(threads)

    @classmethod
    def from_pretrained(cls, path=None, backend: str | None = None, threads: int | None = None, **kwargs):
        """Load a bundle directory (None = the embedded default) on `backend` with `threads` threads."""
        return cls(defaults.resolve(path, cls.name), backend=backend, threads=threads, **kwargs)

    def __call__(self, inputs, **kwargs) -> Any:
        """One input gives one result; a list gives a list of results (run as a batch)."""
        if isinstance(inputs, list):
            return self._run_batch(inputs, **kwargs) if inputs else []
        return self._run_batch([inputs], **kwargs)[0]

    def _run_batch(self, inputs: list, **kwargs) -> list:
        raise NotImplementedError

    def info(self) -> dict:
        m = self.bundle.manifest
        return {"task": self.name, "bundle": str(self.bundle.path), "format": m["format"],
                "precision": m.get("precision"), "kind": m.get("kind"), "backend": self.backend,
                "threads": self.threads, "provenance": m.get("provenance", {}), "fidelity": m.get("fidelity", {})}
