"""Which cases exist: the quick group on a tiny Llama built on the fly, and one group per task of
edgesight.registry.TASKS for full runs. Artifacts are built here (in the coordinator), timed in workers.

Artifacts are bundles from the SDK's own export stage, and the peers load *the same files* (optimum
gets a directory of links to the bundle's model.onnx and tokenizer; llama-cpp-python the bundle's
GGUF). A case that cannot be built says why and is reported as skipped.
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
LLM_COMPARISONS = [
    ("onnx-fp32.edgesight_over_optimum", ("onnx-fp32", SDK), ("onnx-fp32", "optimum"),
     "SDK numpy loop vs optimum ORTModelForCausalLM, same ONNX file", "time"),
    ("gguf-q8_0.edgesight_over_llama_cpp", ("gguf-q8_0", SDK), ("gguf-q8_0", "llama-cpp-python"),
     "SDK GGUF backend vs raw llama-cpp-python, same GGUF", "time"),
    ("optimum_over_transformers", ("onnx-fp32", "optimum"), TORCH,
     "peer vs peer: optimum ONNX fp32 vs transformers fp32 (an anchor)", "time"),
    ("onnx.int8_over_fp32", ("onnx-int8", SDK), ("onnx-fp32", SDK), "dynamic int8 vs fp32, both on the SDK's ONNX loop", "time"),
    ("onnx.int4_over_fp32", ("onnx-int4", SDK), ("onnx-fp32", SDK), "weight-only int4 vs fp32, both on the SDK's ONNX loop", "time"),
    ("onnx-int8.edgesight_over_transformers", ("onnx-int8", SDK), TORCH, "quantized ONNX on the SDK vs the seeds' torch fp32", "time"),
    ("gguf-q8_0.edgesight_over_transformers", ("gguf-q8_0", SDK), TORCH, "GGUF Q8_0 on the SDK vs the seeds' torch fp32", "time"),
    ("gguf-q4_k_m.edgesight_over_transformers", ("gguf-q4_k_m", SDK), TORCH, "GGUF Q4_K_M on the SDK vs the seeds' torch fp32", "time"),
    ("size.onnx_int8_over_fp32", ("onnx-int8", SDK), ("onnx-fp32", SDK),
     "artifact size, int8 vs fp32 ONNX (catches a silently unquantized export)", "size"),
    ("size.gguf_q4_k_m_over_f16", ("gguf-q4_k_m", SDK), ("gguf-f16", SDK), "artifact size, Q4_K_M vs f16 GGUF", "size"),
]
# The quick bundles also serve the keywords task (its generative family) at task level.
KEYWORDS_PROMPT = {"prefix": "<|im_start|>system\nList the objects to segment.<|im_end|>\n<|im_start|>user\n",
                   "suffix": "<|im_end|>\n<|im_start|>assistant\n"}
# case format -> edgesight.export format name
EXPORT_NAMES = {"onnx-fp32": "onnx", "onnx-int8": "onnx-int8", "onnx-int4": "onnx-int4", "gguf-f16": "gguf-f16",
                "gguf-q8_0": "gguf-q8_0", "gguf-q4_k_m": "gguf-q4_k_m"}


def _first_error(fn, *args):
    """(result, None) or (None, 'why it failed') — a build step that fails skips its cases."""
    try:
        return fn(*args), None
    except Exception as exc:  # any failure to build is reported with the case, never raised
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300]


# --- building the quick artifacts ---------------------------------------------------------------

def smollm2(work: Path) -> Path:
    """The real SmolLM2-135M-Instruct (shipped as a Q4_1 GGUF), dequantized to an fp32 HF directory."""
    from edgesight.export.merge import materialize_base
    from edgesight.export.weights import smollm2_gguf

    out = work / "base-from-gguf"
    return out if (out / "config.json").is_file() else materialize_base(smollm2_gguf(), work)


def tiny_llama(work: Path) -> Path:
    out = work / "hf"
    if not (out / "config.json").is_file():
        sys.path.insert(0, str(REPO / "tests"))
        from kit import tiny_llama as build  # tests/kit.py: the tiny models the test suite uses
        build(out)
    return out


def sdk_bundles(hf_dir: Path, out: Path, threads: int) -> tuple[dict[str, Path], dict[str, str]]:
    """Bundles by case format from edgesight's export stage (validated against torch as users get
    them), and why each format that failed did; an existing complete set is reused."""
    from edgesight.errors import ExportError
    from edgesight.export import export

    if not all((out / name / "edgesight.json").is_file() for name in EXPORT_NAMES.values()):
        try:
            report = export(hf_dir, task="keywords", out=out, formats=list(EXPORT_NAMES.values()), threads=threads,
                            progress=False, prompt=KEYWORDS_PROMPT, generation={"max_new_tokens": 16, "eos_token_ids": []})
        except ExportError as exc:  # some formats failed; the others are still bundles
            if getattr(exc, "report", None) is None:
                raise
            report = exc.report
        why = {r.format: r.error for r in report.formats if r.status != "ok"}
    else:
        why = {}
    made = {fmt: out / name for fmt, name in EXPORT_NAMES.items() if (out / name / "edgesight.json").is_file()}
    return made, {fmt: f"export failed: {why.get(name, 'no bundle')}" for fmt, name in EXPORT_NAMES.items() if fmt not in made}


def _peer_dir(bundle_dir: Path, out: Path) -> Path:
    """A directory optimum loads whose files are links to the bundle's: the very same model.onnx."""
    out.mkdir(parents=True, exist_ok=True)
    for f in bundle_dir.iterdir():
        if f.is_file() and f.name != "edgesight.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    return out


# --- the quick group -----------------------------------------------------------------------------

def agreement(reference: str):
    """Quality of a generator: share of eval prompts whose greedy output equals the reference's."""
    def score(outputs: dict[str, list]) -> dict[str, dict]:
        ref = outputs.get(reference)
        if ref is None:
            return {}
        same = lambda a, b: a.strip() == b.strip()  # noqa: E731  (backends differ only in edge whitespace)
        return {cid: {"agreement_vs_torch": sum(map(same, out, ref)) / len(ref)}
                for cid, out in outputs.items()}
    return score


def llm_group(task: str, source, work: Path, threads: int, *, max_new_tokens: int, note: str,
              batch_size: int = 4) -> Group:
    """One causal LM (`source(work)` -> HF dir) in every format, on the SDK and on its peers."""
    common = {"threads": threads, "inputs": QUICK_PROMPTS, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    hf, why_hf = _first_error(source, work)
    built, why_export = _first_error(sdk_bundles, hf, work / "bundles", threads) if hf else (None, why_hf)
    bundles, failed = built or ({}, {fmt: why_export for fmt in EXPORT_NAMES})

    def case(fmt, impl, factory, artifact=None, skip=None, **params):
        return Case(task, fmt, impl, f"benchmarks.impls:{factory}", {**common, **params},
                    str(artifact) if artifact else None, skip)

    cases = [case("torch-fp32", "transformers", "torch_text", hf, why_hf, hf_dir=str(hf))]
    for fmt in EXPORT_NAMES:
        b = bundles.get(fmt)
        model, n_ctx, tokenizer = None, None, None
        if b:
            from edgesight.bundle import Bundle
            manifest = Bundle.load(b, verify=False)
            model, n_ctx = manifest.file("model"), manifest.get("context_length")
            tokenizer = manifest.file("tokenizer") if manifest.has("tokenizer") else None
        cases.append(case(fmt, SDK, "sdk_text", b, failed.get(fmt), bundle=str(b)))
        if fmt == "onnx-fp32":
            peer = _peer_dir(b, work / "peer" / fmt) if b else None
            cases.append(case(fmt, "optimum", "optimum_text", b, failed.get(fmt), onnx_dir=str(peer)))
        if fmt == "gguf-q8_0":
            cases.append(case(fmt, "llama-cpp-python", "llama_text", b, failed.get(fmt), gguf=str(model), n_ctx=n_ctx,
                              tokenizer=str(tokenizer) if tokenizer else None))
    cid = lambda fmt, impl: f"{task}/{fmt}/{impl}"  # noqa: E731
    comps = [Comparison(f"{task}.{key}", cid(*a), cid(*b), what, metric) for key, a, b, what, metric in LLM_COMPARISONS]
    return Group(task, cases, comps, agreement(cid(*TORCH)),
                 note=f"{note}, exported by edgesight.export; {len(QUICK_PROMPTS)} ChatML prompts, greedy, "
                      f"up to {max_new_tokens} new tokens")


# --- what a run measures ---------------------------------------------------------------------------

def task_groups(work: Path, threads: int, quick: bool, roots: list[Path] = ()) -> dict[str, callable]:
    """Group builders by name. Quick: the tiny LLM and the keywords task on it. Full: real SmolLM2 in
    every format, then one group per registry task on its real-size bundles."""
    from edgesight.registry import TASKS

    if quick:  # a tiny Llama, and the keywords task itself on two of its bundles
        tiny = work / "tiny-llm"

        def keywords() -> Group:
            _first_error(lambda: sdk_bundles(tiny_llama(tiny), tiny / "bundles", threads))  # if run alone
            return task_group("keywords", tiny, threads, [tiny / "bundles" / "gguf-q8_0", tiny / "bundles" / "onnx"],
                              default=False, seeds=False)  # the tiny-llm group has the torch peer
        return {"tiny-llm": lambda: llm_group("tiny-llm", tiny_llama, tiny, threads, max_new_tokens=16,
                                              note="tiny random Llama from tests/kit.py"),
                "keywords": keywords}
    builders = {"smollm2": lambda: llm_group("smollm2", smollm2, work / "smollm2", threads, max_new_tokens=32,
                                             note="real SmolLM2-135M-Instruct (base, no adapter)"),
                "t5-small": lambda: t5_group(work / "t5-small", threads),
                "clip-b32": lambda: clip_group(work / "clip-b32", threads)}
    for name in TASKS:
        builders[name] = lambda name=name: task_group(name, work / name, threads, list(roots))
    return builders


def build_default(task: str, out: Path, threads: int) -> Path:
    """The task's embedded default bundle, built by its registry recipe as `edgesight build-defaults` does
    (cached in `out`)."""
    from edgesight.registry import TASKS, load_hook

    if not (out / "edgesight.json").is_file():
        if TASKS[task].recipe is None:
            raise RuntimeError(f"task {task} has no default-bundle recipe")
        load_hook(TASKS[task].recipe)(out, threads=threads, progress=False)
    return out


# Real-size stand-ins where no trained bundle of the format the issue asks about exists yet: the real
# SmolLM2 bundles of the smollm2 group (base weights, no adapter: a merged LoRA has the same shapes, so
# the same speed), re-tagged for the task with a ChatML prompt. Reported with the format suffix "-base".
STANDINS = {"keywords": "gguf-q8_0", "describe": "onnx"}
CHATML = {"prefix": "<|im_start|>user\n", "suffix": "<|im_end|>\n<|im_start|>assistant\n"}


def standin(task: str, work: Path) -> Path:
    """The smollm2 group's bundle of format STANDINS[task], as a `task` bundle (files copied, manifest re-tagged)."""
    from edgesight.bundle import Bundle, BundleWriter

    out = work / f"standin-{STANDINS[task]}"
    if (out / "edgesight.json").is_file():
        return out
    src = Bundle.load(work.parent / "smollm2" / "bundles" / STANDINS[task])
    keep = {k: v for k, v in src.manifest.items() if k not in ("schema", "task", "format", "precision", "kind", "files",
                                                                "components", "created")}
    keep["prompt"] = CHATML if task != "keywords" else KEYWORDS_PROMPT
    if task == "describe":
        from edgesight.tasks.descriptions import default_generation
        keep["generation"] = default_generation(src.kind)
    roles = {rel: role for role, rel in src.manifest["components"].items()}
    with BundleWriter(out, task=task, format=src.format, precision=src.precision, kind=src.kind, **keep) as w:
        for rel in src.manifest["files"]:
            w.add_file(src.path / rel, rel, role=roles.get(rel))
    return out


def find_bundles(task: str, roots: list[Path], default: bool = True) -> list:
    """The task's embedded default bundle (if `default`) and every bundle for `task` under `roots`."""
    from edgesight import defaults
    from edgesight.bundle import MANIFEST, Bundle

    dirs = [defaults.default_bundle_dir(task)] * default
    dirs += [m.parent for r in roots for m in sorted(Path(r).glob(f"**/{MANIFEST}"))]
    found, seen = [], set()
    for d in dirs:
        if (d / MANIFEST).is_file() and d.resolve() not in seen:
            seen.add(d.resolve())
            b = Bundle.load(d, verify=False)
            if b.task == task:
                found.append(b)
    return found


# fidelity fields that are sizes of the check, not results of it
NOT_METRICS = {"probes", "new_tokens", "mean_reference_length", "images", "max_new_tokens", "prompts", "n"}


def fidelity(bundles: dict[str, object]):
    """Quality of a task case: the task's own evaluation on the bundle (`eval.*`, run in the worker)
    and the agreement with the torch reference measured at export (`export_*`, from the manifest)."""
    def score(outputs: dict[str, dict]) -> dict[str, dict]:
        scores = {}
        for cid, b in bundles.items():
            if cid in outputs:
                ev = outputs[cid] if isinstance(outputs[cid], dict) else {}
                scores[cid] = {**{f"eval.{k}": v for k, v in (ev.get("eval") or {}).items()},
                               **({"eval_error": ev["eval_error"]} if "eval_error" in ev else {}),
                               **{f"export_{k}": v for k, v in (b.get("fidelity") or {}).items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS}}
        return scores
    return score


def task_group(task: str, work: Path, threads: int, roots: list[Path], default: bool = True,
               seeds: bool = True) -> Group:
    """A registry task on every bundle found for it: the SDK task, and for text models peers that
    replay the task's own model calls (the SDK TextModel alone, raw llama-cpp-python on the same
    GGUF, optimum on the same ONNX files, and the seeds' transformers + PeftModel path)."""
    from edgesight.registry import TASKS

    spec = TASKS[task]
    why, skipped = "no bundle found", []
    if default and not find_bundles(task, [], default=True):  # build the embedded default into the work dir
        built, why = _first_error(build_default, task, work / "default", threads)
        roots = [*roots, *([built] if built else [])]
    if default and task in STANDINS:
        have = [b for b in find_bundles(task, roots, default) if b.kind in ("causal-lm", "seq2seq")
                and f"{b.format}-{b.precision}".startswith(STANDINS[task])]
        made, why_standin = (None, None) if have else _first_error(standin, task, work)
        roots = [*roots, *([made] if made else [])]
        if why_standin:
            skipped.append(Case(task, f"{STANDINS[task]}-base", SDK, skip=f"no real-size stand-in: {why_standin}"))
    bundles = find_bundles(task, roots, default)
    if not bundles:
        return Group(task, skipped + [Case(task, "default", SDK, skip=f"no {task} bundle: {why}; run `edgesight "
                                                                    "build-defaults` or pass --bundles DIR")])
    common = {"task": task, "threads": threads, "batch_size": 4,
              "inputs_from": f"edgesight.tasks.{spec.module}:SAMPLE_INPUTS"}  # unless the bundle ships samples/
    labels = [f"{b.format}-{b.precision}" for b in bundles]
    cases, comps, by_case, seeds_done = skipped, [], {}, not seeds
    for b, label in zip(bundles, labels):
        fmt = label if labels.count(label) == 1 else f"{label}-{b.kind}"
        fmt += "-base" if b.path.name.startswith("standin-") else ""
        samples = sorted(str(p) for p in (b.path / "samples").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        params = {**common, "bundle": str(b.path), **({"inputs": samples} if samples else {})}
        sdk = Case(task, fmt, SDK, "benchmarks.impls:sdk_task", params, str(b.path))
        cases.append(sdk)
        by_case[sdk.id] = b
        if b.kind not in ("causal-lm", "seq2seq"):  # image / tagging models: raw onnxruntime sessions
            peers = ["onnxruntime"] if b.format == "onnx" else []
        else:
            peers = ["textmodel", {"gguf": "llama-cpp-python", "onnx": "optimum"}.get(b.format)]
        prov = b.get("provenance") or {}
        if b.kind in ("causal-lm", "seq2seq") and not seeds_done and prov.get("base") and Path(prov["base"]).exists():
            peers.append("transformers")  # the seeds' path, once per task: it is slow to load
            seeds_done = True
        for peer in filter(None, peers):
            extra = {"peer": peer, "base": prov.get("base"), "adapter": prov.get("adapter")}
            if peer == "optimum":
                extra["onnx_dir"] = str(_peer_dir(b.path, work / "peer" / fmt))
            case = Case(task, fmt, peer, "benchmarks.impls:replay_task", {**params, **extra}, str(b.path))
            cases.append(case)
            comps.append(Comparison(f"{task}.{fmt}.edgesight_over_{peer.replace('-', '_')}", sdk.id, case.id,
                                    f"{spec.cls} vs {peer} doing the same model calls", per_item=False))
    return Group(task, cases, comps, fidelity(by_case),
                 note=f"{spec.cls} on {len(bundles)} bundle(s), inputs: the task's SAMPLE_INPUTS; peers replay the "
                      "model calls the task made; quality = the task's own eval (eval.*) and the export's fidelity (export_*)")


# --- real-size random-weight models (no real weights here): T5-small and CLIP ViT-B/32 ----------------

DESCRIBE_INPUTS = [f"describe: {text}" for text in (
    "cat, sofa, lamp", "dog, ball, grass, person", "car, traffic light, street", "cup, table, laptop, book",
    "boat, bird, umbrella, beach", "horse, fence, field", "pizza, plate, knife", "bicycle, bus, building")]
T5_GENERATION = {"num_beams": 4, "no_repeat_ngram_size": 2, "max_new_tokens": 24}


def t5_small(work: Path) -> Path:
    """T5-small sizes (d_model 512, 6+6 layers, 8 heads, d_ff 2048, vocab 32128), random weights
    (seed 0), with tests/kit.py's offline unigram tokenizer (fewer pieces; the model keeps 32128 rows).
    The eos row of the tied embedding is zeroed: its logit is then 0, far below the top of 32128
    random logits, so every beam runs the full token budget as real traffic would."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    out = work / "hf"
    if (out / "config.json").is_file() and (out / "READY").is_file():
        return out
    sys.path.insert(0, str(REPO / "tests"))
    from kit import tiny_t5
    tiny_t5(out)  # the tokenizer (and a tiny model, replaced below)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                                                num_decoder_layers=6, num_heads=8, decoder_start_token_id=0,
                                                pad_token_id=0, eos_token_id=1)).eval()
    with torch.no_grad():
        model.shared.weight[1] = 0
    model.generation_config.decoder_start_token_id, model.generation_config.eos_token_id = 0, 1
    model.save_pretrained(out, safe_serialization=True)
    (out / "READY").write_text("")
    return out


def t5_bundles(hf: Path, work: Path) -> dict[str, tuple[Path, Path]]:
    """(bundle, optimum dir) by case format: the SDK's ONNX export (tests/kit.py's onnx_text_bundle),
    and its dynamic int8 (edgesight.export.onnx.quantize_int8) on encoder and merged decoder."""
    from edgesight.bundle import Bundle, BundleWriter
    from edgesight.export.onnx import quantize_int8

    sys.path.insert(0, str(REPO / "tests"))
    from kit import onnx_text_bundle

    fp32 = work / "onnx-fp32"
    if not (fp32 / "bundle" / "edgesight.json").is_file():
        onnx_text_bundle(hf, fp32, "seq2seq", task="describe")
    int8, src = work / "onnx-int8", Bundle.load(fp32 / "bundle")
    if not (int8 / "bundle" / "edgesight.json").is_file():
        (int8 / "onnx").mkdir(parents=True, exist_ok=True)
        for f in (fp32 / "onnx").iterdir():  # optimum's directory: config + tokenizer, int8 graphs
            if f.suffix != ".onnx" and not (int8 / "onnx" / f.name).exists():
                (int8 / "onnx" / f.name).symlink_to(f.resolve())
        for name in ("encoder_model.onnx", "decoder_model_merged.onnx"):
            quantize_int8(fp32 / "onnx" / name, int8 / "onnx" / name)
        roles = {rel: role for role, rel in src.manifest["components"].items()}
        keep = {k: src.manifest[k] for k in ("tokens", "context_length") if k in src.manifest}
        with BundleWriter(int8 / "bundle", task="describe", format="onnx", precision="int8", kind="seq2seq", **keep) as w:
            for rel in src.manifest["files"]:
                w.add_file(int8 / "onnx" / rel if rel.endswith(".onnx") else src.path / rel, rel, role=roles.get(rel))
    return {f"onnx-{p}": (work / f"onnx-{p}" / "bundle", work / f"onnx-{p}" / "onnx") for p in ("fp32", "int8")}


def t5_group(work: Path, threads: int) -> Group:
    """Describe-style seq2seq at T5-small size: the seeds' torch generate() vs the SDK ONNX backend vs optimum."""
    task = "t5-small"
    common = {"threads": threads, "inputs": DESCRIBE_INPUTS, "max_new_tokens": T5_GENERATION["max_new_tokens"],
              "generation": T5_GENERATION, "seq2seq": True, "batch_size": 4}
    hf, why = _first_error(t5_small, work)
    built, why = _first_error(t5_bundles, hf, work) if hf else (None, why)
    built = built or {}
    cases = [Case(task, "torch-fp32", "transformers", "benchmarks.impls:torch_text", {**common, "hf_dir": str(hf)},
                  str(hf / "model.safetensors") if hf else None, None if hf else why)]
    for fmt in ("onnx-fp32", "onnx-int8"):
        b, peer = built.get(fmt, (None, None))
        skip = None if b else why
        cases.append(Case(task, fmt, SDK, "benchmarks.impls:sdk_text", {**common, "bundle": str(b)}, b and str(b), skip))
        cases.append(Case(task, fmt, "optimum", "benchmarks.impls:optimum_text", {**common, "onnx_dir": str(peer)},
                          b and str(b), skip))
    cid = lambda fmt, impl: f"{task}/{fmt}/{impl}"  # noqa: E731
    comps = [Comparison(f"{task}.{key}", cid(*a), cid(*b), what, metric) for key, a, b, what, metric in (
        ("onnx-fp32.edgesight_over_optimum", ("onnx-fp32", SDK), ("onnx-fp32", "optimum"),
         "SDK seq2seq loop vs optimum ORTModelForSeq2SeqLM, same ONNX files", "time"),
        ("onnx-int8.edgesight_over_optimum", ("onnx-int8", SDK), ("onnx-int8", "optimum"),
         "SDK seq2seq loop vs optimum, same int8 ONNX files", "time"),
        ("onnx.int8_over_fp32", ("onnx-int8", SDK), ("onnx-fp32", SDK), "dynamic int8 vs fp32 on the SDK", "time"),
        ("onnx-fp32.edgesight_over_transformers", ("onnx-fp32", SDK), TORCH, "SDK ONNX fp32 vs the seeds' torch fp32", "time"),
        ("onnx-int8.edgesight_over_transformers", ("onnx-int8", SDK), TORCH, "SDK ONNX int8 vs the seeds' torch fp32", "time"),
        ("size.onnx_int8_over_fp32", ("onnx-int8", SDK), ("onnx-fp32", SDK), "artifact size, int8 vs fp32 ONNX", "size"))]
    return Group(task, cases, comps, note="T5-small sizes with random weights (seed 0), describe-style prompts, "
                 f"beam 4, no_repeat_ngram 2, exactly {T5_GENERATION['max_new_tokens']} new tokens (eos suppressed); "
                 "quality not meaningful")


def clip_b32(work: Path) -> Path:
    """CLIPConfig() defaults (ViT-B/32 at 224 px + 12-layer text tower, 151M params), random weights
    (seed 0), with tests/kit_vision.py's offline BPE tokenizer (the model keeps 49408 rows)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    out = work / "hf"
    if (out / "READY").is_file():
        return out
    sys.path.insert(0, str(REPO / "tests"))
    from kit_vision import tiny_clip
    tiny_clip(out)  # the tokenizer (and a tiny model, replaced below)
    tok = CLIPTokenizerFast.from_pretrained(out)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config={"bos_token_id": tok.bos_token_id, "eos_token_id": eos,
                                              "pad_token_id": eos})).eval()
    model.save_pretrained(out, safe_serialization=True)
    CLIPProcessor(CLIPImageProcessor(), tok).save_pretrained(out)  # CLIP's own 224 px preprocessing
    (out / "READY").write_text("")
    return out


def clip_bundles(hf: Path, work: Path) -> dict[str, Path]:
    """The SDK's CLIP part of a caption bundle (edgesight.export.captioning: optimum export split into
    image / text graphs, tag text embeddings cached at export; int8 = dynamic int8 image graph)."""
    import tempfile

    from edgesight.bundle import BundleWriter
    from edgesight.export.captioning import DEFAULT_TAG_VOCAB, _add_clip

    made = {}
    for precision in ("fp32", "int8"):
        out = work / f"clip-{precision}"
        if not (out / "edgesight.json").is_file():
            with tempfile.TemporaryDirectory(prefix="es-clip-") as tmp, \
                    BundleWriter(out, task="caption", format="onnx", precision=precision, kind="clip") as w:
                _add_clip(w, hf, Path(tmp), list(DEFAULT_TAG_VOCAB), precision)
        made[f"onnx-{precision}"] = out
    return made


def clip_group(work: Path, threads: int) -> Group:
    """CLIP ViT-B/32 image tower: the SDK's tag scorer (preprocess + image graph + cached text embeddings),
    its onnxruntime image session alone, and torch fp32 get_image_features on the same pixels."""
    task = "clip-b32"
    common = {"threads": threads, "batch_size": 4, "inputs": list(range(4))}  # seeds of synthetic photos
    hf, why = _first_error(clip_b32, work)
    built, why = _first_error(clip_bundles, hf, work) if hf else (None, why)
    built = built or {}
    fp32 = built.get("onnx-fp32")
    cases = [Case(task, "torch-fp32", "transformers", "benchmarks.impls:torch_clip",
                  {**common, "hf_dir": str(hf), "bundle": str(fp32)}, str(hf / "model.safetensors") if hf else None,
                  None if hf and fp32 else why)]
    for fmt in ("onnx-fp32", "onnx-int8"):
        b = built.get(fmt)
        for impl, factory in ((SDK, "sdk_clip"), ("onnxruntime", "ort_clip")):
            cases.append(Case(task, fmt, impl, f"benchmarks.impls:{factory}", {**common, "bundle": str(b)},
                              b and str(b / "clip_image.onnx"), None if b else why))
    cid = lambda fmt, impl: f"{task}/{fmt}/{impl}"  # noqa: E731
    comps = [Comparison(f"{task}.{key}", cid(*a), cid(*b), what, metric, per_item=False) for key, a, b, what, metric in (
        ("onnx-fp32.edgesight_over_onnxruntime", ("onnx-fp32", SDK), ("onnx-fp32", "onnxruntime"),
         "SDK tag scoring (preprocess + image graph + scores) vs the image session alone", "time"),
        ("onnx-fp32.onnxruntime_over_transformers", ("onnx-fp32", "onnxruntime"), TORCH,
         "image tower: onnxruntime fp32 vs torch fp32 get_image_features, same pixels", "time"),
        ("onnx-int8.onnxruntime_over_transformers", ("onnx-int8", "onnxruntime"), TORCH,
         "image tower: onnxruntime int8 vs torch fp32, same pixels", "time"),
        ("onnx.int8_over_fp32", ("onnx-int8", "onnxruntime"), ("onnx-fp32", "onnxruntime"),
         "image tower, dynamic int8 vs fp32", "time"),
        ("onnx-int8.edgesight_over_transformers", ("onnx-int8", SDK), TORCH,
         "SDK tag scoring on int8 vs torch fp32 image features alone", "time"),
        ("size.onnx_int8_over_fp32", ("onnx-int8", SDK), ("onnx-fp32", SDK), "image graph size, int8 vs fp32", "size"))]
    return Group(task, cases, comps, note="CLIPConfig() defaults (ViT-B/32, 224 px) with random weights (seed 0); "
                 f"{len(common['inputs'])} synthetic photos; quality not meaningful")
