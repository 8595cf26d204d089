"""The export stage: base + LoRA adapter -> merged model -> ONNX / GGUF bundles, each validated
against the merged torch model in the same run.

    from edgesight.export import export
    report = export("SmolLM2.Q4_1.gguf", "adapter/", task="describe", out="bundles/",
                    formats=["onnx", "onnx-int8", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-lora"])
    print(report.table())           # format, size, time, exact-match, agreed prefix, max |logit diff|
    report.to_dict()                # also written to OUT/export-report.json

What a bundle carries besides the weights comes from the task: its run-time module's hook
`export_spec(adapter_dir, kind)` (edgesight.tasks.<module>, named by the registry) gives the prompt,
vocabulary, generation settings and validation probes (describe: the adapter's chat prompt and
vocabulary; keywords: the chat prompt or the tagger's probes; products: an image encoder). Explicit
`prompt` / `generation` / `probes` / `max_new_tokens` arguments override it. A model trained elsewhere
brings its own way of being talked to (edgesight.export.prompts): `prompt` naming a task preset
("seed-000") or a prompt object with a template, or the base directory's llm_config.json, sets the
prompt, decoding, parser and probes in the model's own format. GGUF bundles whose prompt prefix is
long carry the llama.cpp state after it (restored at load: a restart does not recompute it).

The model kind picks the path: causal-lm / seq2seq (merge -> ONNX, GGUF, torch; greedy tokens
compared with the reference), token-classifier (a TOKEN_CLS adapter: edgesight.export.tagger, tag
agreement), image-encoder (edgesight.export.image_encoder, embedding cosine). FORMATS says which
formats serve which kinds. Each format becomes its own bundle directory OUT/<format> (BundleWriter:
atomic, sha256 per file) whose manifest records provenance, special tokens, prompt/generation
settings, export time/size and the fidelity figures. An fp32/f16 format that does not reproduce the
reference's greedy tokens gets no bundle, and export() raises ExportError (with `.report`) after the
other formats are done.
"""
from __future__ import annotations

import errno
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgesight.errors import ExportError


class DiskFullError(ExportError):
    """No space left where the export writes; nothing half-written is left behind."""


def disk_full(exc: BaseException) -> bool:
    """ENOSPC, also when a library (safetensors, onnx, the converter) reports it in its own error type."""
    while exc is not None:
        if (isinstance(exc, DiskFullError) or getattr(exc, "errno", None) == errno.ENOSPC
                or "No space left on device" in str(exc)):
            return True
        exc = exc.__cause__
    return False


# One table drives argument checks, building and validation. exact: must reproduce the reference's
# greedy tokens, except at near-ties (reference top-2 logits within tie_tol: f16 rounding may flip
# those); logits: record max |logit diff| of the first step; kinds: model kinds it supports (token
# classifiers and image encoders are checked their own way: tag agreement, embedding cosine).
LM_KINDS = ("causal-lm", "seq2seq")
ALL_KINDS = LM_KINDS + ("token-classifier", "image-encoder")
FORMATS = {
    "torch":       dict(bundle="torch", precision="fp32", exact=True, tie_tol=0.0, logits=True, kinds=LM_KINDS),
    "onnx":        dict(bundle="onnx", precision="fp32", exact=True, tie_tol=0.01, logits=True, kinds=ALL_KINDS + ("vlm",)),
    "onnx-int8":   dict(bundle="onnx", precision="int8", exact=False, logits=False, kinds=ALL_KINDS + ("vlm",)),
    "onnx-int8-vision": dict(bundle="onnx", precision="int8-vision", exact=False, logits=False, kinds=("vlm",)),
    "onnx-int4":   dict(bundle="onnx", precision="int4", exact=False, logits=False, kinds=("causal-lm",)),
    "gguf-f32":    dict(bundle="gguf", precision="f32", exact=True, tie_tol=0.01, logits=True, kinds=("causal-lm",)),
    "gguf-f16":    dict(bundle="gguf", precision="f16", exact=True, tie_tol=0.1, logits=True, kinds=("causal-lm", "vlm")),
    "gguf-q8_0":   dict(bundle="gguf", precision="q8_0", exact=False, logits=False, kinds=("causal-lm", "vlm")),
    "gguf-q4_k_m": dict(bundle="gguf", precision="q4_k_m", exact=False, logits=False, kinds=("causal-lm", "vlm")),
    "gguf-lora":   dict(bundle="gguf", precision="f16+lora", exact=False, logits=True, kinds=("causal-lm",)),
}
DEFAULT_FORMATS = ("onnx", "onnx-int8", "onnx-int8-vision", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-lora")
ONNX_TASKS = {"causal-lm": "text-generation-with-past", "seq2seq": "text2text-generation-with-past"}
ONNX_ROLES = {"causal-lm": {"model": "model.onnx"},
              "seq2seq": {"encoder": "encoder_model.onnx", "decoder": "decoder_model_merged.onnx"}}


@dataclass
class FormatResult:
    format: str
    precision: str
    status: str                    # "ok" | "failed"
    bundle: str | None = None
    bytes: int | None = None
    seconds: float | None = None   # conversion time (validation excluded)
    fidelity: dict | None = None
    quantized_ops: dict | None = None
    error: str | None = None

    def row(self) -> dict:
        f = self.fidelity or {}
        return {"format": self.format, "precision": self.precision, "status": self.status,
                "mb": None if self.bytes is None else round(self.bytes / 1e6, 2), "seconds": self.seconds,
                "exact_match": f.get("exact_match"), "near_ties": f.get("near_ties"),
                "mean_agreed_prefix": f.get("mean_agreed_prefix"),
                "max_logit_diff": f.get("max_logit_diff"),
                # token classifiers: tag agreement with torch; image encoders: the lowest embedding cosine
                "agreement": f.get("token_tag_agreement", f.get("embedding_cosine_min"))}


@dataclass
class ExportReport:
    out: str
    task: str
    kind: str
    base: str
    adapter: str | None
    merge_seconds: float
    reference: dict                # probes, new tokens, the reference's decoded outputs
    formats: list[FormatResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.formats)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        from .validate import table
        return table([r.row() for r in self.formats])


def export(base=None, adapter=None, *, task: str, out, formats=None, probes: list[str] | None = None,
           max_new_tokens: int | None = None, prompt=None, generation: dict | None = None, per_channel: bool = False,
           mmproj: str | None = None, threads: int | None = None, progress: bool | None = None) -> ExportReport:
    """Merge `adapter` into `base` (HF directory or .gguf file; an image encoder name for image
    encoders; None = the real weights of the adapter's model kind, see default_base), export every
    format in `formats` (None: those of DEFAULT_FORMATS that serve the kind) with what the task's
    export spec adds, validate each against the merged torch model, and write OUT/<format>.
    `mmproj`: the vision projector type of GGUF VLM bundles, "f16" (default) or "q8_0" (smaller, not faster)."""
    from edgesight.runtime import default_threads

    from .validate import default_probes

    if formats is not None:
        formats = [formats] if isinstance(formats, str) else list(dict.fromkeys(formats))
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise ExportError(f"unknown export format(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(FORMATS)}")
    kind, spec = task_spec(task, base, adapter)
    if kind in LM_KINDS:   # the model's own prompt format, decoding and parser (--prompt, llm_config.json)
        from edgesight.registry import TASKS

        from . import prompts

        spec = prompts.apply(spec, task, prompt, base, kind, TASKS[task].hook("SAMPLE_INPUTS") or [])
        prompt = None
    if mmproj is not None:
        if kind != "vlm":
            raise ExportError(f"--mmproj applies to vision-language (vlm) exports; this adapter/base is a {kind} model")
        if mmproj not in ("f16", "q8_0"):
            raise ExportError(f"--mmproj {mmproj!r}: choose f16 or q8_0 (llama.cpp's mmproj types)")
        spec = {**spec, "mmproj_type": mmproj}
    if base is None and kind != "vlm":   # a VLM adapter names its base in its recipe
        base = default_base(kind)
    if formats is None:
        formats = [f for f in DEFAULT_FORMATS if kind in FORMATS[f]["kinds"] and (adapter or f != "gguf-lora")]
    bad = [f for f in formats if kind not in FORMATS[f]["kinds"]]
    if bad:
        works = [f for f, fs in FORMATS.items() if kind in fs["kinds"]]
        raise ExportError(f"format(s) {', '.join(bad)} do not support {kind} models; for this model use: {', '.join(works)}")
    threads = default_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "token-classifier":
            report = _export_tagger(base, adapter, task, out, formats, list(probes or spec.get("probes") or []),
                                    threads, progress, embedder=base if spec.get("embedder") == "base" else None)
        elif kind == "image-encoder":
            report = _export_encoder(base, adapter, task, out, formats, spec, threads, progress)
        elif kind == "vlm":
            report = _export_vlm(base, adapter, task, out, formats, spec, threads, progress)
        else:
            report = _export_lm(base, adapter, task, out, formats, kind,
                                probes=list(probes or spec.get("probes") or default_probes(task)),
                                max_new_tokens=max_new_tokens or spec.get("max_new_tokens") or 16,
                                prompt=prompt if prompt is not None else spec.get("prompt"),
                                generation=generation if generation is not None else spec.get("generation"),
                                extra={k: spec[k] for k in ("parser", "max_input_tokens") if k in spec},
                                per_channel=per_channel, threads=threads, progress=progress)
    except Exception as exc:
        if disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(f"the disk is full while exporting to {out}; free space there and retry "
                                "(no partial bundle was left behind)") from exc
        raise
    from edgesight.bundle import atomic_write_bytes

    atomic_write_bytes(out / "export-report.json", json.dumps(report.to_dict(), indent=2).encode())
    if not report.ok:
        failed = [r for r in report.formats if r.status != "ok"]
        err = ExportError("; ".join(f"{r.format}: {r.error}" for r in failed))
        err.report = report
        raise err
    return report


def export_into(out_dir, base=None, adapter=None, *, task: str, format: str, threads: int | None = None,
                progress: bool | None = None) -> Path:
    """One format of export() placed at `out_dir` itself (an older bundle there is replaced only once
    the new one is complete): what the default-bundle recipes call."""
    from edgesight.bundle import replace_dir

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        export(base, adapter, task=task, out=work, formats=[format], threads=threads, progress=progress)
        replace_dir(work / format, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


# ----------------------------------------------------------------------------- the task and the model kind

def task_spec(task: str, base, adapter) -> tuple[str, dict]:
    """(model kind, the task's export spec for it): the kind from the adapter and base (detect_kind),
    or the one the task declares (products: "image-encoder"); the spec from the task module's
    `export_spec(adapter_dir, kind)` hook ({} for a task without one)."""
    from edgesight.registry import TASKS

    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    hook = TASKS[task].hook("export_spec")
    kind = detect_kind(base, adapter)
    spec = dict(hook(adapter, kind)) if hook else {}
    declared = spec.pop("kind", None)
    if declared and kind not in (None, declared):
        raise ExportError(f"task {task} exports {declared} models, but {base if base is not None else adapter} "
                          f"is a {kind}; pass a {declared} base and adapter")
    if kind is None:
        kind = declared or "causal-lm"   # no base, no adapter: the task's kind, else the default LM
        if hook and not declared:
            spec = dict(hook(adapter, kind))
            spec.pop("kind", None)
    return kind, spec


def detect_kind(base, adapter) -> str | None:
    """causal-lm | seq2seq | token-classifier | image-encoder, from the adapter's task type and the
    base (an image encoder name or CLIP directory, an HF directory's config, a .gguf); None if neither says."""
    from .image_encoder import is_image_encoder
    from .merge import model_kind

    task_type = None
    cfg = Path(adapter) / "adapter_config.json" if adapter is not None else None
    if cfg is not None and cfg.is_file():
        task_type = json.loads(cfg.read_text(encoding="utf-8")).get("task_type")
    if task_type == "TOKEN_CLS":
        return "token-classifier"
    from .vlm import is_vlm_adapter, is_vlm_dir

    if is_vlm_adapter(adapter) or is_vlm_dir(base):
        return "vlm"
    if is_image_encoder(base):
        return "image-encoder"
    if base is not None:
        path = Path(base)
        if (path / "config.json").is_file():
            return model_kind(path)[0]
        return "causal-lm" if path.suffix == ".gguf" else None
    return {"CAUSAL_LM": "causal-lm", "SEQ_2_SEQ_LM": "seq2seq"}.get(task_type)


def default_base(kind: str):
    """The real weights a kind exports from when no base is given (edgesight.export.weights)."""
    from . import weights
    from .image_encoder import DEFAULT_ENCODER

    if kind == "image-encoder":
        return DEFAULT_ENCODER
    if kind == "token-classifier":
        return weights.minilm_dir()
    if kind == "causal-lm":
        return weights.smollm2_gguf()
    raise ExportError(f"{kind} models have no default base; pass --base (an HF directory, e.g. flan-t5-small)")


def resolve_stop_tokens(generation: dict | None, model_dir) -> dict | None:
    """generation["stop_tokens"] (token strings) -> generation["eos_token_ids"]: their ids in the merged
    tokenizer's vocabulary (those it has) plus the tokenizer's own eos."""
    if not generation or "stop_tokens" not in generation:
        return generation
    from transformers import AutoTokenizer

    generation = dict(generation)
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = tok.get_vocab()
    ends = [tok.convert_tokens_to_ids(t) for t in generation.pop("stop_tokens") if t in vocab]
    ends += [tok.eos_token_id] if tok.eos_token_id is not None else []
    generation["eos_token_ids"] = sorted(set(ends) | set(generation.get("eos_token_ids") or []))
    return generation


# ----------------------------------------------------------------------------- causal / seq2seq LMs

def _export_lm(base, adapter, task: str, out: Path, formats: list[str], kind: str, *, probes, max_new_tokens,
               prompt, generation, extra, per_channel, threads, progress) -> ExportReport:
    from edgesight.progress import bar

    from . import merge, validate

    work = Path(tempfile.mkdtemp(prefix=".export-work-", dir=out))
    steps = bar(total=2 + len(formats), desc="export", progress=progress, unit="step")
    try:
        # 1. merge, after checking everything that can be checked before any conversion
        steps.set_postfix_str("merge")
        base_dir = merge.materialize_base(base, work)
        kind, _ = merge.model_kind(base_dir)
        _check_formats(formats, base_dir, adapter)
        merged = merge.merge(base_dir, adapter, work / "merged")
        steps.update()

        # 2. the reference: the merged torch model, greedy on the probes
        steps.set_postfix_str("reference")
        from edgesight.runtime.torch import TorchTextModel

        ref_model = TorchTextModel(merged.dir, threads=threads)
        fields = _manifest_fields(merged, base, adapter, prompt, resolve_stop_tokens(generation, merged.dir)) | extra
        ref = validate.reference(ref_model, probes, max_new_tokens, eos=fields["tokens"]["eos"])
        report = ExportReport(str(out), task, kind, str(base), str(adapter) if adapter else None, merged.seconds,
                              {"probes": probes, "new_tokens": max_new_tokens,
                               "outputs": [ref_model.decode(o) for o in ref.outputs]})
        del ref_model
        steps.update()

        # 3. every format: build in a BundleWriter, validate through the SDK backend, then commit
        ctx = _Context(merged.dir, base_dir, Path(adapter) if adapter else None, kind, work, threads, per_channel)
        for fmt in formats:
            steps.set_postfix_str(fmt)
            report.formats.append(_export_one(fmt, ctx, task, out / fmt, fields, ref))
            steps.update()
    finally:
        steps.close()
        shutil.rmtree(work, ignore_errors=True)
    return report


# ----------------------------------------------------------------------------- token classifiers, image encoders

def _bundle_result(fmt: str, make) -> FormatResult:
    """Run `make()` (which commits the bundle of `fmt` and returns its directory) into a FormatResult."""
    from edgesight.bundle import Bundle

    result = FormatResult(fmt, FORMATS[fmt]["precision"], "failed")
    start = time.perf_counter()
    try:
        bundle = Bundle.load(make(), verify=False)
    except ExportError as exc:
        if disk_full(exc):
            raise
        result.error = str(exc)
        return result
    result.status, result.bundle = "ok", str(bundle.path)
    result.seconds = round(time.perf_counter() - start, 2)
    result.bytes = sum(f["bytes"] for f in bundle.manifest["files"].values())
    result.fidelity = bundle.get("fidelity")
    return result


def _export_tagger(base, adapter, task: str, out: Path, formats, probes, threads, progress,
                   embedder=None) -> ExportReport:
    """Token classifiers (the extractive keywords family): edgesight.export.tagger, per format."""
    from .tagger import CHECK_PROMPTS, export_tagger

    if adapter is None:
        raise ExportError("a token-classifier export needs --adapter (the trained head and its labels come from it)")
    probes = probes or list(CHECK_PROMPTS)
    report = ExportReport(str(out), task, "token-classifier", str(base), str(adapter), 0.0, {"probes": probes})
    for fmt in formats:
        report.formats.append(_bundle_result(fmt, lambda: export_tagger(
            base, adapter, out / fmt, precision=FORMATS[fmt]["precision"], threads=threads, progress=progress,
            probes=probes, embedder=embedder)))
    return report


def _export_encoder(base, adapter, task: str, out: Path, formats, spec: dict, threads, progress) -> ExportReport:
    """Image encoders (products): base encoder + the conv LoRA merged, then edgesight.export.image_encoder."""
    from edgesight.bundle import sha256_file
    from edgesight.images import Preprocessing

    from .captioning import sample_images
    from .image_encoder import export_image_encoder, load_encoder

    start = time.perf_counter()
    prep = Preprocessing.from_dict(spec["preprocessing"]) if spec.get("preprocessing") else None
    module, prep, name = load_encoder(base, adapter, prep)
    merge_seconds = round(time.perf_counter() - start, 2)
    calibration = spec.get("calibration") or sample_images()
    provenance = {"base": str(base), "adapter": str(adapter) if adapter else None,
                  "adapter_sha256": sha256_file(Path(adapter) / "adapter_model.safetensors") if adapter else None}
    report = ExportReport(str(out), task, "image-encoder", str(base), str(adapter) if adapter else None, merge_seconds,
                          {"images": len(calibration)})
    for fmt in formats:
        report.formats.append(_bundle_result(fmt, lambda: export_image_encoder(
            module, out / fmt, preprocessing=prep, precision=FORMATS[fmt]["precision"], calibration=calibration,
            task=task, name=name, provenance=provenance, threads=threads, progress=progress).path))
    return report


def _export_vlm(base, adapter, task: str, out: Path, formats, spec: dict, threads, progress) -> ExportReport:
    """SmolVLM / Idefics3 (issue 15): the adapter of `edgesight train products --family vlm` merged into its
    base (or a merged / base HF directory as is), then one bundle of kind "vlm" per format. GGUF: converted
    once (text GGUF per format + mmproj), each text GGUF checked against the merged torch model (greedy tokens
    on a text-only probe; f16 must match). ONNX (edgesight.export.vlm_onnx): vision + embedding + decoder
    graphs, each bundle run by the SDK on probe photos against the merged torch model (fp32 must match)."""
    from edgesight.bundle import sha256_file
    from edgesight.progress import bar
    from edgesight.tasks.vlm import SEED_PROMPT

    from .vlm import check_vlm_dir, convert_vlm, export_vlm_bundle, gguf_greedy, merge_adapter, text_fidelity, \
        text_probe, torch_greedy

    mmproj = spec.get("mmproj_type", "f16")
    n = int(spec.get("probe_tokens", 12))
    work = Path(tempfile.mkdtemp(prefix=".export-work-", dir=out))
    steps = bar(total=2 + len(formats), desc="export vlm", progress=progress, unit="step")
    try:
        start = time.perf_counter()
        if adapter is not None:
            steps.set_postfix_str("merge")
            merged = merge_adapter(adapter, work / "merged", base)
        else:
            if base is None:
                raise ExportError("a VLM export needs --base (a SmolVLM / Idefics3 HF directory, e.g. OUT/merged of "
                                  "`edgesight train products --family vlm`) or --adapter")
            check_vlm_dir(base)
            merged = Path(base)
        merge_seconds = round(time.perf_counter() - start, 2)
        steps.update()
        steps.set_postfix_str("reference")
        probe = text_probe(merged, SEED_PROMPT)
        ref = torch_greedy(merged, probe, n)
        report = ExportReport(str(out), task, "vlm", str(base), str(adapter) if adapter else None, merge_seconds,
                              {"probe_ids": probe, "new_tokens": n, "outputs": [ref]})
        steps.update()
        gguf = [f for f in formats if FORMATS[f]["bundle"] == "gguf"]
        types = [FORMATS[f]["precision"] for f in gguf]
        conv = convert_vlm(merged, work / "gguf", types, (mmproj,), threads) if gguf else None
        provenance = {"base": str(base), "adapter": str(adapter) if adapter else None,
                      "adapter_sha256": sha256_file(Path(adapter) / "adapter_model.safetensors") if adapter else None}
        onnx = _vlm_onnx(merged, out, [f for f in formats if FORMATS[f]["bundle"] == "onnx"], task, threads, provenance)
        for fmt in formats:
            if fmt in onnx:
                steps.set_postfix_str(fmt)
                report.formats.append(_bundle_result(fmt, onnx[fmt]))
                steps.update()
        for fmt, qtype in zip(gguf, types):
            steps.set_postfix_str(fmt)

            def make(fmt=fmt, qtype=qtype):
                fid = text_fidelity(ref, gguf_greedy(conv["text"][qtype], probe, n, threads))
                if FORMATS[fmt]["exact"] and not fid["exact_match"]:
                    raise ExportError(f"{fmt}: greedy tokens differ from the merged torch model on the text probe "
                                      f"(agreed prefix {fid['mean_agreed_prefix']}/{n})")
                return export_vlm_bundle(merged, out / fmt, text_type=qtype, mmproj_type=mmproj, task=task,
                                         converted=conv, threads=threads, provenance=provenance, fidelity=fid).path

            report.formats.append(_bundle_result(fmt, make))
            steps.update()
    finally:
        steps.close()
        shutil.rmtree(work, ignore_errors=True)
    return report


def _vlm_onnx(merged, out: Path, formats, task: str, threads, provenance) -> dict:
    """{format: make} for the ONNX formats of a VLM export (one graph export shared by fp32 and int8)."""
    from .vlm_onnx import export_vlm_onnx_bundles

    if not formats:
        return {}
    try:
        made, failed = export_vlm_onnx_bundles(merged, {FORMATS[f]["precision"]: out / f for f in formats}, task=task,
                                               threads=threads, provenance=provenance), {}
    except ExportError as exc:
        if not hasattr(exc, "failed"):
            raise
        made, failed = exc.made, exc.failed

    def make(fmt):
        precision = FORMATS[fmt]["precision"]
        if precision in failed:
            raise ExportError(failed[precision])
        return made[precision].path

    return {f: (lambda f=f: make(f)) for f in formats}


def _check_formats(formats, base_dir: Path, adapter) -> None:
    """A missing converter or an adapter the GGUF adapter path cannot carry: refuse before doing any
    work (export() has refused format/kind combinations FORMATS does not list)."""
    from . import gguf

    if any(f.startswith("gguf") for f in formats):
        gguf.converter_dir()
        gguf.check_architecture(base_dir)
    if "gguf-lora" in formats:
        if adapter is None:
            raise ExportError("gguf-lora needs --adapter (it ships the adapter next to the f16 base)")
        gguf.check_lora_for_gguf(adapter)


@dataclass
class _Context:
    merged: Path
    base: Path
    adapter: Path | None
    kind: str
    work: Path
    threads: int
    per_channel: bool
    cache: dict = field(default_factory=dict)   # intermediate artifacts shared between formats

    def once(self, key: str, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


def _manifest_fields(merged, base, adapter, prompt, generation) -> dict:
    from edgesight import __version__
    from edgesight.generation import GenerationConfig

    from .onnx import special_tokens

    cfg = json.loads((merged.dir / "config.json").read_text())
    return {"tokens": special_tokens(merged.dir),
            "context_length": int(min(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 512, 4096)),
            "prompt": prompt,
            "generation": GenerationConfig.from_dict(generation).to_dict(),
            "provenance": {"base": str(base), "adapter": str(adapter) if adapter else None,
                           "adapter_sha256": merged.adapter_sha256, "architecture": merged.architecture,
                           "edgesight_version": __version__}}


def _export_one(fmt: str, ctx: _Context, task: str, dest: Path, fields: dict, ref) -> FormatResult:
    from edgesight.runtime import open_text_model
    from edgesight.bundle import Bundle, BundleWriter

    from . import validate

    spec = FORMATS[fmt]
    result = FormatResult(fmt, spec["precision"], "failed")
    writer = BundleWriter(dest, task=task, format=spec["bundle"], precision=spec["precision"], kind=ctx.kind,
                          **json.loads(json.dumps(fields)))
    try:
        start = time.perf_counter()
        result.quantized_ops = _build(fmt, ctx, writer)
        result.seconds = round(time.perf_counter() - start, 2)
        result.bytes = sum(p.stat().st_size for p in writer.dir.rglob("*") if p.is_file())
        # validate what users will run: the SDK backend on the bundle as it will be committed
        model = open_text_model(Bundle(writer.dir, writer.manifest), threads=ctx.threads)
        fid = validate.compare(ref, model, fmt, logits=spec["logits"], tie_tol=spec.get("tie_tol", 0.0))
        _add_prefix_state(model, writer, fields, ref)
        del model
        result.fidelity = fid.to_dict()
        writer.manifest["fidelity"] = {k: v for k, v in result.fidelity.items() if k != "outputs"}
        writer.manifest["export"] = {"seconds": result.seconds, "bytes": result.bytes,
                                     "quantized_ops": result.quantized_ops}
        if spec["exact"]:
            validate.require_exact(fid)
        result.bundle = str(writer.commit().path)
        result.status = "ok"
    except ExportError as exc:
        writer.abort()
        if disk_full(exc):
            raise   # every later format would fail the same way: stop here
        result.error = str(exc)
    except BaseException:
        writer.abort()
        raise
    return result


MIN_STATE_TOKENS = 32   # a shorter shared prefix costs about nothing to recompute: no state file for it


def _add_prefix_state(model, w, fields: dict, ref) -> None:
    """A runtime that can save its context (llama.cpp) stores the state after the prompt prefix every
    call starts with (as far as the probes, real prompts, share its tokens) in the bundle, so a freshly
    loaded model does not recompute it (edgesight.runtime.llamacpp restores it)."""
    from edgesight.bundle import atomic_write_bytes

    from .validate import agreed_prefix

    prompt = fields.get("prompt")
    prefix = prompt.get("prefix") if isinstance(prompt, dict) else None
    if not prefix or not hasattr(model, "save_prefix_state"):
        return
    ids = model.encode(prefix)
    shared = min([agreed_prefix(ids, p) for p in ref.prompt_ids] or [0])
    if shared < MIN_STATE_TOKENS:
        return
    blob, meta = model.save_prefix_state(ids[:shared])
    atomic_write_bytes(w.dir / "prefix_state.data", blob)
    w.set_role("prefix_state", "prefix_state.data")
    w.manifest["prefix_state"] = meta

def _build(fmt: str, ctx: _Context, w) -> dict | None:
    """Write the files of `fmt` into the bundle writer; returns the quantized op counts if any."""
    from . import gguf
    from .onnx import SIDE_FILES, export_onnx, quantize_int4, quantize_int8

    if fmt == "torch":
        for f in sorted(ctx.merged.iterdir()):
            if f.is_file():
                w.add_file(f, f"model/{f.name}")
        w.set_role("model", "model")
        return None
    if fmt.startswith("onnx"):
        fp32 = ctx.once("onnx", lambda: Path(export_onnx(ctx.merged, ctx.work / "onnx", ONNX_TASKS[ctx.kind])["dir"]))
        ops = {}
        for role, name in ONNX_ROLES[ctx.kind].items():
            if fmt == "onnx":
                w.add_file(fp32 / name, name, role=role)
                continue
            dst = ctx.work / fmt / name
            q = (quantize_int8(fp32 / name, dst, per_channel=ctx.per_channel) if fmt == "onnx-int8"
                 else quantize_int4(fp32 / name, dst))
            ops[name] = q["quantized"]
            w.add_file(dst, name, role=role, move=True)
            data = dst.with_name(name + ".data")
            if data.exists():
                w.add_file(data, data.name, move=True)
        for name in SIDE_FILES:
            if (fp32 / name).is_file():
                w.add_file(fp32 / name, name, role="tokenizer" if name == "tokenizer.json" else None)
        return ops or None
    # GGUF bundles carry the tokenizer too: all backends then tokenize identically (see runtime/llamacpp.py)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (ctx.merged / name).is_file():
            w.add_file(ctx.merged / name, name, role="tokenizer" if name == "tokenizer.json" else None)
    if fmt == "gguf-lora":
        w.add_file(ctx.once("base-f16", lambda: gguf.convert_hf(ctx.base, ctx.work / "base.f16.gguf", "f16")),
                   "base.f16.gguf", role="model")
        w.add_file(gguf.convert_lora(ctx.adapter, ctx.base, ctx.work / "adapter.gguf"), "adapter.gguf",
                   role="lora", move=True)
        return None
    qtype = fmt.removeprefix("gguf-")
    if qtype in gguf.CONVERTER_TYPES:
        src = ctx.once(f"gguf-{qtype}", lambda: gguf.convert_hf(ctx.merged, ctx.work / f"model.{qtype}.gguf", qtype))
    else:  # K-quants come from the f16 conversion
        f16 = ctx.once("gguf-f16", lambda: gguf.convert_hf(ctx.merged, ctx.work / "model.f16.gguf", "f16"))
        src = gguf.quantize(f16, ctx.work / f"model.{qtype}.gguf", qtype, threads=ctx.threads)
    w.add_file(src, f"model.{qtype}.gguf", role="model")
    return None
