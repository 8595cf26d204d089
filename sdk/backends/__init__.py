"""Backends behind one small protocol, one file each: onnx (onnxruntime + numpy loop),
gguf (llama.cpp), torch (transformers reference). Tasks never import a backend module directly:
they call `open_text_model(bundle, backend, threads)` or use the onnx helpers for image models.
"""
from __future__ import annotations

import importlib
from typing import Protocol, Sequence, runtime_checkable

from ..errors import BackendError, InputError
from ..generation import GenerationConfig

BACKENDS = {"onnx": "onnx", "gguf": "gguf", "torch": "torch"}   # backend name -> bundle format
EXTRAS = {"onnx": None, "gguf": "gguf", "torch": "export"}       # extra that installs the backend


@runtime_checkable
class TextModel(Protocol):
    """A loaded text generator. Backends reuse the KV cache of the longest prompt prefix they saw
    last (the instruction prefix), so repeated calls pay only for the user text."""

    backend: str

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        """For each prompt, `config.num_return_sequences` decoded continuations (special tokens removed)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def context_length(self) -> int: ...


class BaseTextModel:
    """What every backend's text model shares around its own `encode`, `decode` and `generate_ids`."""

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        return [[self.decode(seq) for seq in seqs] for seqs in self.generate_ids(prompts, config)]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    @staticmethod
    def check_prompts(prompts) -> None:
        if isinstance(prompts, str):
            raise InputError("generate() takes a list of prompts; wrap a single prompt in a list")


def check_backend(bundle, backend: str | None) -> str:
    """The backend to use for `bundle`: the explicit one if it can run the bundle, else the bundle's."""
    fmt = bundle.format
    if backend is None:
        return fmt
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if BACKENDS[backend] != fmt:
        raise BackendError(f"{bundle.path}: a {fmt} bundle cannot run on the {backend!r} backend; "
                           f"use backend={fmt!r} or export a {backend} bundle (`edgesight export --formats ...`)")
    return backend


def open_text_model(bundle, backend: str | None = None, threads: int | None = None, **kwargs) -> TextModel:
    """Load the text model of `bundle` on its backend (ONNX causal/seq2seq, GGUF, or torch)."""
    name = check_backend(bundle, backend)
    module = importlib.import_module(f"{__name__}.{name}")
    return module.load_text_model(bundle, threads=threads, **kwargs)
