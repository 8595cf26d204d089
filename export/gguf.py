"""GGUF export: the llama.cpp converter (vendored in the llama-cpp-python sdist, fetched by
scripts/setup.sh, never copied into this repo), K-quants through `llama_model_quantize`, and LoRA
adapters as GGUF adapters for one-base-many-adapters deployments.

    convert_hf(merged_dir, "m.f16.gguf", "f16")        # f32 | f16 | q8_0 (converter)
    quantize("m.f16.gguf", "m.q4_k_m.gguf", "q4_k_m")  # K-quants (llama.cpp library)
    convert_lora(adapter_dir, base_dir, "a.gguf")       # runtime adapter for the base GGUF
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgesight.bundle import staging_file
from edgesight.errors import ExportError

from . import DiskFullError, fetch
from .fetch import FetchError

CONVERTER_ENV = "EDGESIGHT_LLAMA_CPP_SRC"
CONVERTER_POINTER = ".edgesight-llama-cpp-src"  # written into the venv by scripts/setup.sh (a checkout)
CONVERTER_TYPES = ("f32", "f16", "q8_0")
LLAMA_FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
# Architectures the llama-cpp-python backend can run (decoder-only; its high-level API has no encoder pass).
GGUF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel",
                      "Phi3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "StableLmForCausalLM")


class MissingConverterError(FetchError):
    """The llama.cpp GGUF converter is not on this machine and may not be fetched."""


def _valid(path: Path | None) -> bool:
    return path is not None and (path / "convert_hf_to_gguf.py").is_file() and (path / "gguf-py").is_dir()


def converter_dir() -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist: $EDGESIGHT_LLAMA_CPP_SRC, else the venv pointer
    (scripts/setup.sh), else a copy fetched earlier under $EDGESIGHT_HOME, else fetched now with pip
    (edgesight.export.fetch; refused when EDGESIGHT_OFFLINE=1)."""
    where = os.environ.get(CONVERTER_ENV)
    if where:  # an explicit choice is never second-guessed by a download
        if not _valid(Path(where)):
            raise MissingConverterError(f"{CONVERTER_ENV}={where} is not llama.cpp's vendor folder (no "
                                        "convert_hf_to_gguf.py and gguf-py there); unset it to let edgesight fetch "
                                        "the converter, or run scripts/setup.sh in a checkout")
        return Path(where)
    pointer = Path(sys.prefix) / CONVERTER_POINTER
    path = Path(pointer.read_text(encoding="utf-8").strip()) if pointer.is_file() else None
    if _valid(path):
        return path
    version = fetch.llama_cpp_version()
    if fetch.offline():
        found = fetch.fetched_converter(version)
        if found:
            return found
        raise MissingConverterError(
            f"the llama.cpp GGUF converter was not found and {fetch.OFFLINE_ENV} forbids fetching it; run "
            f"`python -m edgesight.export.fetch converter` while online (or scripts/setup.sh in a checkout)")
    return fetch.fetch_converter(version)


def check_architecture(model_dir: Path) -> str:
    """The model's architecture if the GGUF backend can run it, else an ExportError naming what works."""
    arch = (json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or ["?"])[0]
    if arch not in GGUF_ARCHITECTURES:
        raise ExportError(f"{arch} cannot be exported to GGUF for edgesight: the llama.cpp backend runs "
                          f"decoder-only models ({', '.join(GGUF_ARCHITECTURES)}); use --formats onnx,onnx-int8 "
                          "(or torch) for this model")
    return arch


def _run(script: str, args: list, what: str) -> None:
    src = converter_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src / "gguf-py"), str(src), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", NO_LOCAL_GGUF="")
    proc = subprocess.run([sys.executable, str(src / script), *map(str, args)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        if "No space left" in tail:
            raise DiskFullError(f"{what}: the disk is full; free space under the output directory and retry")
        raise ExportError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def convert_hf(model_dir, out_file, outtype: str = "f16") -> Path:
    """HF directory -> GGUF with the converter (`--outtype f32|f16|q8_0`)."""
    if outtype not in CONVERTER_TYPES:
        raise ExportError(f"converter outtype {outtype!r} is not one of {CONVERTER_TYPES}; K-quants go through quantize()")
    model_dir, out_file = Path(model_dir), Path(out_file)
    check_architecture(model_dir)
    with tempfile.TemporaryDirectory(prefix="edgesight-gguf-src-") as clean:
        # TOOLCHAIN: a BPE model that went GGUF -> transformers -> disk carries a `tokenizer.model`
        # that is not sentencepiece and the converter dies on it; convert from a view without it.
        src = model_dir
        spm = model_dir / "tokenizer.model"
        if spm.is_file() and not is_sentencepiece(spm):
            src = Path(clean)
            for f in model_dir.iterdir():
                if f.name != "tokenizer.model":
                    os.symlink(f.resolve(), src / f.name)
        with staging_file(out_file) as tmp:
            _run("convert_hf_to_gguf.py", [src, "--outfile", tmp, "--outtype", outtype], f"GGUF {outtype} conversion of {model_dir}")
    return out_file


def is_sentencepiece(path: Path) -> bool:
    try:
        import sentencepiece as spm

        spm.SentencePieceProcessor(model_file=str(path))
        return True
    except Exception:  # any parse failure means "not a sentencepiece model"
        return False


def quantize(src, dst, qtype: str = "q4_k_m", threads: int = 1) -> Path:
    """GGUF -> K-quant GGUF with llama.cpp's own quantizer (in process)."""
    from edgesight._optional import require

    llama_cpp = require("llama_cpp", "gguf")
    if qtype not in LLAMA_FTYPES:
        raise ExportError(f"unknown GGUF quantization {qtype!r}; choose one of {', '.join(LLAMA_FTYPES)}")
    import ctypes

    dst = Path(dst)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_FTYPES[qtype])
    params.nthread = threads
    with staging_file(dst) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise ExportError(f"llama_model_quantize {src} -> {qtype} failed (code {rc}); "
                              "check that the source is an f16/f32 GGUF and that the disk is not full")
    return dst


def check_lora_for_gguf(adapter_dir) -> None:
    """The GGUF adapter path cannot carry embedding / output-head weights (llama.cpp's LoRA applies to
    linear layers only), and only safetensors adapters are read (no pickle)."""
    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExportError(f"{adapter_dir}: no adapter_model.safetensors (pickle .bin adapters are never read); "
                          "re-save the adapter with save_pretrained(safe_serialization=True)")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    from safetensors import safe_open

    with safe_open(str(weights), "np") as f:
        names = list(f.keys())
    touched = sorted({n for n in names if "embed_tokens" in n or "lm_head" in n})
    touched += [m for m in (cfg.get("modules_to_save") or []) if m in ("embed_tokens", "lm_head")]
    if touched:
        raise ExportError(f"{adapter_dir}: the adapter touches the embeddings or output head "
                          f"({', '.join(touched[:4])}), which a GGUF LoRA adapter cannot carry; drop gguf-lora "
                          "from --formats (the merged gguf-* formats include these weights) or retrain with "
                          "target_modules limited to the attention/MLP projections")


def convert_lora(adapter_dir, base_dir, out_file) -> Path:
    """peft LoRA directory -> GGUF adapter for `Llama(model_path=base.gguf, lora_path=out_file)`.
    `base_dir` is the HF directory of the base (config + tokenizer), so nothing is fetched from the Hub."""
    check_lora_for_gguf(adapter_dir)
    check_architecture(Path(base_dir))
    out_file = Path(out_file)
    with staging_file(out_file) as tmp:
        _run("convert_lora_to_gguf.py", ["--base", base_dir, "--outtype", "f32", "--outfile", tmp, adapter_dir],
             f"GGUF LoRA conversion of {adapter_dir}")
    return out_file
