"""Which cases exist: the quick group on a tiny Llama built on the fly, and one group per task of
edgesight.registry.TASKS for full runs. Artifacts are built here (in the coordinator), timed in workers.

Artifacts come from the SDK's own export when it can make them, so the peers load *the same files*
as edgesight (optimum gets a directory whose model.onnx is the bundle's file; llama-cpp-python the
bundle's GGUF). A case that cannot be built says why and is reported as skipped.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .runner import REPO, Case, Comparison, Group

QUICK_PROMPTS = [f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n" for text in (
    "Segment the cats and the dogs, but not the people.", "Find every bottle in the picture.",
    "A photo of a chair next to a desk.", "Keywords: car, traffic light, person.",
    "Describe the scene: boat, bird and umbrella.", "There is a cup on the table near the laptop.",
    "Show me the horse.", "The lamp costs 12.99 dollars; the book costs 3.50.")]
# ratio key, a (format, impl), b (format, impl), what it says, what is compared
SDK, TORCH = "edgesight", ("torch-fp32", "transformers")
QUICK_COMPARISONS = [
    ("onnx-fp32.edgesight_over_optimum", ("onnx-fp32", SDK), ("onnx-fp32", "optimum"),
     "SDK numpy loop vs optimum ORTModelForCausalLM, same ONNX file", "time"),
    ("gguf-q8_0.edgesight_over_llama_cpp", ("gguf-q8_0", SDK), ("gguf-q8_0", "llama-cpp-python"),
     "SDK GGUF backend vs raw llama-cpp-python, same GGUF", "time"),
    ("optimum_over_transformers", ("onnx-fp32", "optimum"), TORCH,
     "peer vs peer: optimum ONNX fp32 vs transformers fp32 (an anchor)", "time"),
    ("onnx.int8_over_fp32", ("onnx-int8", SDK), ("onnx-fp32", SDK), "dynamic int8 vs fp32, both on the SDK's ONNX loop", "time"),
    ("onnx-int8.edgesight_over_transformers", ("onnx-int8", SDK), TORCH, "quantized ONNX on the SDK vs the seeds' torch fp32", "time"),
    ("gguf-q8_0.edgesight_over_transformers", ("gguf-q8_0", SDK), TORCH, "GGUF Q8_0 on the SDK vs the seeds' torch fp32", "time"),
    ("gguf-q4_k_m.edgesight_over_transformers", ("gguf-q4_k_m", SDK), TORCH, "GGUF Q4_K_M on the SDK vs the seeds' torch fp32", "time"),
    ("size.onnx_int8_over_fp32", ("onnx-int8", SDK), ("onnx-fp32", SDK),
     "artifact size, int8 vs fp32 ONNX (catches a silently unquantized export)", "size"),
    ("size.gguf_q4_k_m_over_f16", ("gguf-q4_k_m", SDK), ("gguf-f16", SDK), "artifact size, Q4_K_M vs f16 GGUF", "size"),
]
GGUF_TYPES = {"gguf-f16": "f16", "gguf-q8_0": "q8_0", "gguf-q4_k_m": "q4_k_m"}


def _first_error(fn, *args):
    """(result, None) or (None, 'why it failed') — a build step that fails skips its cases."""
    try:
        return fn(*args), None
    except Exception as exc:  # any failure to build is reported with the case, never raised
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300]


# --- building the quick artifacts ---------------------------------------------------------------

def tiny_llama(work: Path) -> Path:
    out = work / "hf"
    if not (out / "config.json").is_file():
        sys.path.insert(0, str(REPO / "tests"))
        from kit import tiny_llama as build  # tests/kit.py: the tiny models the test suite uses
        build(out)
    return out


def onnx_fp32(hf_dir: Path, out: Path) -> Path:
    """The export stage's fp32 causal export (model.onnx with KV cache, tokenizer and config)."""
    from edgesight.export.onnx import export_onnx
    if not (out / "model.onnx").is_file():
        export_onnx(hf_dir, out, "text-generation-with-past")
    return out / "model.onnx"


def onnx_int8(fp32: Path, out: Path) -> Path:
    from edgesight.export.onnx import quantize_int8
    if not (out / "model.onnx").is_file():
        quantize_int8(fp32, out / "model.onnx")
    return out / "model.onnx"


def gguf(hf_dir: Path, out: Path, qtype: str) -> Path:
    """The export stage's GGUF: the converter for f16 / q8_0, llama.cpp's quantizer (from f16) for K-quants."""
    from edgesight.export import gguf as export_gguf
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        if qtype in ("f16", "q8_0"):
            export_gguf.convert_hf(hf_dir, out, qtype)
        else:
            export_gguf.quantize(gguf(hf_dir, out.with_name("model-f16.gguf"), "f16"), out, qtype)
    return out


def _peer_dir(src_dir: Path, onnx_file: Path, out: Path) -> Path:
    """A directory optimum can load whose model.onnx *is* `onnx_file` (a link, not a copy)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in src_dir.iterdir():
        if f.suffix in (".json", ".model", ".txt", ".jinja") and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    if not (out / "model.onnx").exists():
        (out / "model.onnx").symlink_to(Path(onnx_file).resolve())
    return out


def sdk_bundles(hf_dir: Path, out: Path, formats: list[str]) -> dict[str, Path]:
    """Bundles of the tiny model made by edgesight's export stage, by format (onnx-fp32, gguf-q8_0...)."""
    raise NotImplementedError("edgesight.export does not yet provide a causal-LM export the benchmarks can call")


# --- the quick group -----------------------------------------------------------------------------

def agreement(reference: str):
    """Quality of a generator: share of eval prompts whose greedy output equals the reference's."""
    def score(outputs: dict[str, list]) -> dict[str, dict]:
        ref = outputs.get(reference)
        if ref is None:
            return {}
        return {cid: {"agreement_vs_torch": sum(a == b for a, b in zip(out, ref)) / len(ref)}
                for cid, out in outputs.items()}
    return score


def quick_group(work: Path, threads: int, *, max_new_tokens: int = 16, batch_size: int = 4) -> Group:
    task = "tiny-llm"
    common = {"threads": threads, "inputs": QUICK_PROMPTS, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    hf, why_hf = _first_error(tiny_llama, work)

    def case(fmt, impl, factory, artifact=None, skip=None, **params):
        return Case(task, fmt, impl, f"benchmarks.impls:{factory}", {**common, **params},
                    str(artifact) if artifact else None, skip)

    cases = [case("torch-fp32", "transformers", "torch_text", hf, why_hf, hf_dir=str(hf))]
    formats = ["onnx-fp32", "onnx-int8", *GGUF_TYPES]
    bundles, why_sdk = _first_error(sdk_bundles, hf, work / "bundles", formats) if hf else (None, why_hf)
    files: dict[str, tuple[Path | None, str | None]] = {}
    if bundles:  # peers run the bundles' own files
        from edgesight.bundle import Bundle
        files = {f: (Bundle.load(b).file("model"), None) for f, b in bundles.items()}
    elif hf:
        fp32 = _first_error(onnx_fp32, hf, work / "onnx-fp32")
        files["onnx-fp32"] = fp32
        files["onnx-int8"] = _first_error(onnx_int8, fp32[0], work / "onnx-int8") if fp32[0] else (None, fp32[1])
        for fmt, q in GGUF_TYPES.items():
            files[fmt] = _first_error(gguf, hf, work / fmt / f"model-{q}.gguf", q)
    for fmt in formats:
        path, why = files.get(fmt, (None, why_hf))
        sdk_skip = why or (None if bundles else f"no edgesight bundle: {why_sdk}")
        cases.append(case(fmt, "edgesight", "sdk_text", path, sdk_skip,
                          bundle=str(bundles[fmt]) if bundles else None))
        if fmt.startswith("onnx") and path:
            peer = _peer_dir(hf, path, work / "peer" / fmt) if hf else None
            cases.append(case(fmt, "optimum", "optimum_text", path, why, onnx_dir=str(peer)))
        elif fmt.startswith("onnx"):
            cases.append(case(fmt, "optimum", "optimum_text", None, why))
        if fmt == "gguf-q8_0":
            cases.append(case(fmt, "llama-cpp-python", "llama_text", path, why, gguf=str(path)))
    cid = lambda fmt, impl: f"{task}/{fmt}/{impl}"  # noqa: E731
    comps = [Comparison(f"{task}.{key}", cid(*a), cid(*b), what, metric) for key, a, b, what, metric in QUICK_COMPARISONS]
    return Group(task, cases, comps, agreement(cid("torch-fp32", "transformers")),
                 note=f"tiny random Llama from tests/kit.py, {len(QUICK_PROMPTS)} ChatML prompts, "
                      f"greedy, up to {max_new_tokens} new tokens")


# --- what a run measures ---------------------------------------------------------------------------

def task_groups(work: Path, threads: int, quick: bool) -> dict[str, callable]:
    """Group builders by name: the quick tiny-LLM group, and (full runs) one group per registry task."""
    from edgesight.registry import TASKS

    builders = {"tiny-llm": lambda: quick_group(work / "tiny-llm", threads)}
    if not quick:
        for name in TASKS:
            builders[name] = lambda name=name: full_group(name, work / name, threads)
    return builders


def full_group(task: str, work: Path, threads: int) -> Group:
    """A registry task at real size (filled in as the tasks land)."""
    from edgesight.registry import TASKS

    spec = TASKS[task]
    cases = [Case(task, fmt, "edgesight", skip="real-size case not defined yet") for fmt in spec.formats]
    return Group(task, cases)
