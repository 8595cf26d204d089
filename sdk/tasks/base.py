"""What every task shares: bundle resolution, runtime and device choice, thread count, batch dispatch.

A task opens its models through `self.session(role)` (a tensor graph) or `self.text_model()` (a text
generator): the runtime layer (edgesight.runtime) decides how, on which device, with how many threads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import defaults, runtime
from ..errors import ExportError


@dataclass
class Call:
    """What a task's `from_json` returns when the HTTP body carries per-call options besides the input
    (keywords' "vocabulary"): the server runs `task(inputs, **options)`."""

    inputs: Any
    options: dict = field(default_factory=dict)


class Task:
    """Base of the task classes. Subclasses set `name` and implement `_run_batch`."""

    name: str = ""

    def __init__(self, bundle, backend: str | None = None, threads: int | None = None, device: str | None = "cpu"):
        self.bundle = bundle
        self.runtime = runtime.runtime_for(bundle, backend)
        self.backend = self.runtime.name
        self.threads = runtime.default_threads(threads)
        self.device, self.device_note = runtime.resolve_device(self.runtime, device)

    @classmethod
    def from_pretrained(cls, path=None, backend: str | None = None, threads: int | None = None,
                        device: str | None = "cpu", **kwargs):
        """Load a bundle directory (None = the embedded default) on `backend` and `device`
        ("cpu", "cuda" or "auto") with `threads` threads."""
        return cls(defaults.resolve(path, cls.name), backend=backend, threads=threads, device=device, **kwargs)

    # -- the runtime layer, with this task's runtime, device and threads --
    def session(self, role: str, **kwargs) -> runtime.Session:
        return runtime.open_session(self.bundle, role, threads=self.threads, device=self.device,
                                    backend=self.backend, **kwargs)

    def text_model(self, **kwargs) -> runtime.TextModel:
        return runtime.open_text_model(self.bundle, self.backend, self.threads, self.device, **kwargs)

    # Inputs per model call. A list is run in batches of at most this many, similar lengths together:
    # one batch pads every input to its longest, so a large mixed batch costs more per input than
    # single calls (128 keyword prompts: one batch 2.2x the per-prompt time of single calls, length-sorted
    # batches of 8 0.74x; docs/scale.md).
    max_batch: int = 8

    def __call__(self, inputs, **kwargs) -> Any:
        """One input gives one result; a list gives a list of results (run in length-sorted batches)."""
        if isinstance(inputs, list):
            return in_buckets(inputs, lambda chunk: self._run_batch(chunk, **kwargs), cap=self.max_batch)
        return self._run_batch([inputs], **kwargs)[0]

    def _run_batch(self, inputs: list, **kwargs) -> list:
        raise NotImplementedError

    def info(self) -> dict:
        m = self.bundle.manifest
        return {"task": self.name, "bundle": str(self.bundle.path), "format": m["format"],
                "precision": m.get("precision"), "kind": m.get("kind"), "backend": self.backend,
                "device": self.device, **({"device_note": self.device_note} if self.device_note else {}),
                "threads": self.threads, "provenance": m.get("provenance", {}), "fidelity": m.get("fidelity", {})}


def input_size(x) -> int:
    """A cheap stand-in for how long an input's model sequence will be (text: characters; JSON: its
    repr); images and the rest are 0 (they are resized to one shape anyway)."""
    if isinstance(x, str):
        return len(x)
    return len(repr(x)) if isinstance(x, (dict, list, tuple)) else 0


def in_buckets(items: list, fn, *, cap: int, key=input_size) -> list:
    """fn(chunk) -> results for `items` in chunks of at most `cap`, chunks of similar `key` (length), so
    little padding is wasted; results come back in the order of `items`. Sorting is stable, so inputs of
    equal key (images) keep their order."""
    if len(items) <= 1:
        return fn(items) if items else []
    order, cap = sorted(range(len(items)), key=lambda i: key(items[i])), max(1, cap)
    out: list = [None] * len(items)
    for start in range(0, len(order), cap):
        idx = order[start:start + cap]
        for i, result in zip(idx, fn([items[i] for i in idx])):
            out[i] = result
    return out


# -- what the trainer wrote beside an adapter, for the tasks' export_spec hooks --

def adapter_json(adapter_dir, name: str, default=None):
    """recipe.json, vocab.json, ... of an adapter directory, or `default` when there is none."""
    path = Path(adapter_dir) / name if adapter_dir is not None else None
    if path is None or not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc}); retrain the adapter or fix the file") from None


def prompt_halves(recipe: dict, where, default: str = "") -> tuple[str, str]:
    """The training prompt around the user text: recipe["prompt_example"][0] split at its one {input}."""
    head = (recipe.get("prompt_example") or [default])[0]
    if head.count("{input}") != 1:
        raise ExportError(f"{where}: prompt_example has no single {{input}} hole; retrain the adapter")
    prefix, suffix = head.split("{input}")
    return prefix, suffix
