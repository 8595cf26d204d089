"""The runtime layer: every model of every task opens here, through one table and two protocols.

    session = open_session(bundle, "model", threads=2, device="cpu")      # a graph that runs named tensors
    session.run({"pixel_values": x})                                       # -> [outputs...]
    lm = open_text_model(bundle, threads=2, device="auto")                 # a text generator
    lm.generate(["<prompt>"], GenerationConfig())                          # -> [["continuation"]]
    vlm = open_vlm(bundle, threads=2)                                      # a VLM bundle (kind "vlm", issue 15)
    vlm.generate(image, "What is shown in this image?")                   # -> Generation(text, tokens, ...)

`RUNTIMES` says which bundle formats each runtime reads, which protocols it serves, which devices it
can use and what to install for them. A runtime is one module here (onnxruntime.py, llamacpp.py,
torch.py) with `devices()`, and `open_session(path, threads, device, arena)` and/or
`load_text_model(bundle, threads, device, **kw)` and/or `load_vlm(bundle, threads, device, **kw)`. Tasks never import a runtime module: they ask this
layer, so a new runtime (OpenVINO reading the same .onnx files, say) is one file plus one row.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

from ..errors import BackendError, DeviceError, InputError
from ..generation import GenerationConfig

DEVICES = ("cpu", "cuda", "auto")
MAX_THREADS = 1024


@dataclass(frozen=True)
class RuntimeSpec:
    name: str                 # what users pass as backend= (and the CLI's --backend)
    module: str               # edgesight.runtime.<module>
    formats: tuple[str, ...]  # bundle formats it reads
    extra: str | None         # pip extra that installs it (None: in the core install)
    requires: str | None      # the library the runtime imports (a missing one names `extra`)
    sessions: bool            # serves open_session (tensor graphs: encoders, taggers, BLIP, CLIP)
    text: bool                # serves open_text_model
    cuda_hint: str            # what makes device="cuda" work
    vlm: bool = False         # serves open_vlm (image + prompt -> text: bundles of kind "vlm")

    def load(self):
        return importlib.import_module(f"{__name__}.{self.module}")


RUNTIMES: dict[str, RuntimeSpec] = {r.name: r for r in [
    RuntimeSpec("onnx", "onnxruntime", ("onnx",), None, None, sessions=True, text=True, vlm=True,
                cuda_hint="pip uninstall -y onnxruntime && pip install 'edgesight[gpu]' (onnxruntime-gpu, CUDA 12)"),
    RuntimeSpec("gguf", "llamacpp", ("gguf",), "gguf", "llama_cpp", sessions=False, text=True, vlm=True,
                cuda_hint="CMAKE_ARGS='-DGGML_CUDA=on' pip install --force-reinstall --no-binary :all: llama-cpp-python==0.3.36"),
    RuntimeSpec("torch", "torch", ("torch",), "export", "torch", sessions=False, text=True,
                cuda_hint="a CUDA build of torch==2.13.0 (pip install torch --index-url <the PyTorch CUDA index>)"),
]}


@runtime_checkable
class Session(Protocol):
    """A loaded graph: named numpy tensors in, a list of numpy tensors out."""

    inputs: dict[str, tuple]     # name -> (shape (ints or symbolic names), numpy dtype)
    outputs: dict[str, tuple]    # name -> shape

    def run(self, feeds: dict, outputs: Sequence[str] | None = None) -> list: ...


@runtime_checkable
class TextModel(Protocol):
    """A loaded text generator. Runtimes reuse the KV cache of the longest prompt prefix they saw
    last (the instruction prefix), so repeated calls pay only for the user text."""

    backend: str
    supports_grammar: bool       # GenerationConfig.grammar (GBNF) is honoured

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        """For each prompt, `config.num_return_sequences` decoded continuations (special tokens removed)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def context_length(self) -> int: ...


@dataclass
class Generation:
    """One answer of a VisionTextModel: the text, how many tokens it took, why it stopped ("stop" | "length")."""
    text: str
    tokens: int
    finish_reason: str = ""


@runtime_checkable
class VisionTextModel(Protocol):
    """A loaded VLM bundle (kind "vlm"): an image and a prompt in, generated text out."""

    backend: str
    supports_grammar: bool       # `grammar` is honoured; otherwise passing one raises BackendError
    grammar_syntax: str          # "gbnf" (llama.cpp) or "lark" (llguidance: GBNF too, but see edgesight.grammar)

    def generate(self, image: Any, prompt: str, *, max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, grammar: str | None = None) -> Generation:
        ...


class BaseTextModel:
    """What every runtime's text model shares around its own `encode`, `decode` and `generate_ids`."""

    supports_grammar = False

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[str]]:
        return [[self.decode(seq) for seq in seqs] for seqs in self.generate_ids(prompts, config)]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    @staticmethod
    def check_prompts(prompts) -> None:
        if isinstance(prompts, str):
            raise InputError("generate() takes a list of prompts; wrap a single prompt in a list")
        for p in prompts:
            check_text(p)


def check_text(text) -> str:
    """A prompt must be a str of valid Unicode (a lone surrogate cannot be tokenized) within the
    character limit, checked before tokenizing (edgesight.limits); invisible format characters are removed."""
    from ..limits import check_prompt

    return check_prompt(text)


def default_threads(threads: int | None) -> int:
    """Explicit threads win; else EDGESIGHT_THREADS; else OMP_NUM_THREADS; else the usable cores
    (onnxruntime and llama.cpp would otherwise size pools from host cores and ignore cgroups)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise InputError(f"threads must be a whole number from 1 to {MAX_THREADS}, got {threads!r}")
        return threads
    for var in ("EDGESIGHT_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and 0 < int(os.environ[var]) <= MAX_THREADS:
            return int(os.environ[var])
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def runtime_for(bundle, backend: str | None = None) -> RuntimeSpec:
    """The runtime for `bundle`: the explicit backend if it reads the bundle's format, else the format's own."""
    fmt = bundle.format
    if backend is None:
        found = [r for r in RUNTIMES.values() if fmt in r.formats]
        if not found:
            raise BackendError(f"{bundle.path}: no runtime reads {fmt!r} bundles; runtimes: {', '.join(RUNTIMES)}")
        return found[0]
    if backend not in RUNTIMES:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(RUNTIMES)}")
    spec = RUNTIMES[backend]
    if fmt not in spec.formats:
        raise BackendError(f"{bundle.path}: a {fmt} bundle cannot run on the {backend!r} backend; "
                           f"use backend={runtime_for(bundle).name!r} or export a {backend} bundle "
                           "(`edgesight export --formats ...`)")
    return spec


def _module(spec: RuntimeSpec):
    from .._optional import require

    if spec.requires:   # the runtime's own library: a missing extra says which pip install fixes it
        require(spec.requires, spec.extra)
    return spec.load()


def resolve_device(spec: RuntimeSpec, device: str | None) -> tuple[str, str | None]:
    """(device to use, note for info()). "cuda" that is not there is a DeviceError saying what to
    install; "auto" takes CUDA when the runtime can use it and falls back to the CPU, saying so."""
    device = device or "cpu"
    if device not in DEVICES and not device.startswith("cuda:"):
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    if device == "cpu":
        return "cpu", None
    available = _module(spec).devices()
    if device == "auto":
        if "cuda" in available:
            return "cuda", "device='auto' chose cuda"
        return "cpu", f"device='auto' fell back to cpu: the {spec.name} runtime sees no CUDA device"
    if "cuda" not in available:
        raise DeviceError(f"device={device!r} was asked for, but the {spec.name} runtime here has no CUDA support "
                          f"(devices: {', '.join(available)}); install it with: {spec.cuda_hint} — or use device='cpu'")
    return device, None


def open_session(bundle, role: str, *, threads: int | None = None, device: str = "cpu", backend: str | None = None,
                 arena: bool = True) -> Session:
    """The graph playing `role` in `bundle` (e.g. "model", "encoder") on a session runtime."""
    spec = runtime_for(bundle, backend)
    if not spec.sessions:
        raise BackendError(f"{bundle.path}: component {role!r} is a tensor graph; the {spec.name} runtime runs text "
                           "models only")
    return open_graph(bundle.file(role), backend=spec.name, threads=threads, device=device, arena=arena)


def open_graph(path, *, backend: str = "onnx", threads: int | None = None, device: str = "cpu",
               arena: bool = True) -> Session:
    """A graph file outside a bundle (the export stage validates what it is writing this way)."""
    spec = RUNTIMES[backend]
    device, _ = resolve_device(spec, device)
    return _module(spec).open_session(path, threads=default_threads(threads), device=device, arena=arena)


def open_text_model(bundle, backend: str | None = None, threads: int | None = None, device: str = "cpu",
                    **kwargs) -> TextModel:
    """The text model of `bundle` (ONNX causal/seq2seq, GGUF, or torch) on its runtime."""
    spec = runtime_for(bundle, backend)
    if not spec.text:
        raise BackendError(f"{bundle.path}: the {spec.name} runtime runs tensor graphs only, not text models")
    device, _ = resolve_device(spec, device)
    return _module(spec).load_text_model(bundle, threads=default_threads(threads), device=device, **kwargs)


def open_vlm(bundle, backend: str | None = None, threads: int | None = None, device: str = "cpu",
             **kwargs) -> VisionTextModel:
    """The vision-language model of a bundle of kind "vlm" (GGUF text + mmproj, or ONNX graphs) on its runtime."""
    spec = runtime_for(bundle, backend)
    if not spec.vlm:
        raise BackendError(f"{bundle.path}: the {spec.name} runtime does not run vision-language models")
    device, _ = resolve_device(spec, device)
    return _module(spec).load_vlm(bundle, threads=default_threads(threads), device=device, **kwargs)
