"""The export stage: base + LoRA adapter -> merged HF model -> ONNX / GGUF bundles, each validated
against the merged torch model in the same run.

    from edgesight.export import export
    report = export("SmolLM2.Q4_1.gguf", "adapter/", task="describe", out="bundles/",
                    formats=["onnx", "onnx-int8", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-lora"])
    print(report.table())           # format, size, time, exact-match, agreed prefix, max |logit diff|
    report.to_dict()                # also written to OUT/export-report.json

Each format becomes its own bundle directory OUT/<format> (BundleWriter: atomic, sha256 per file)
whose manifest records provenance, special tokens, prompt/generation settings, export time/size and
the fidelity figures. An fp32/f16 format that does not reproduce the reference's greedy tokens gets
no bundle, and export() raises ExportError (with `.report`) after the other formats are done.
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
# those); logits: record max |logit diff| of the first step; kinds: model kinds it supports.
FORMATS = {
    "torch":       dict(bundle="torch", precision="fp32", exact=True, tie_tol=0.0, logits=True, kinds=("causal-lm", "seq2seq")),
    "onnx":        dict(bundle="onnx", precision="fp32", exact=True, tie_tol=0.01, logits=True, kinds=("causal-lm", "seq2seq")),
    "onnx-int8":   dict(bundle="onnx", precision="int8", exact=False, logits=False, kinds=("causal-lm", "seq2seq")),
    "onnx-int4":   dict(bundle="onnx", precision="int4", exact=False, logits=False, kinds=("causal-lm",)),
    "gguf-f32":    dict(bundle="gguf", precision="f32", exact=True, tie_tol=0.01, logits=True, kinds=("causal-lm",)),
    "gguf-f16":    dict(bundle="gguf", precision="f16", exact=True, tie_tol=0.1, logits=True, kinds=("causal-lm",)),
    "gguf-q8_0":   dict(bundle="gguf", precision="q8_0", exact=False, logits=False, kinds=("causal-lm",)),
    "gguf-q4_k_m": dict(bundle="gguf", precision="q4_k_m", exact=False, logits=False, kinds=("causal-lm",)),
    "gguf-lora":   dict(bundle="gguf", precision="f16+lora", exact=False, logits=True, kinds=("causal-lm",)),
}
DEFAULT_FORMATS = ("onnx", "onnx-int8", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-lora")
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
                "max_logit_diff": f.get("max_logit_diff")}


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


def export(base, adapter=None, *, task: str, out, formats=DEFAULT_FORMATS, probes: list[str] | None = None,
           max_new_tokens: int = 16, prompt=None, generation: dict | None = None, per_channel: bool = False,
           threads: int | None = None, progress: bool | None = None) -> ExportReport:
    """Merge `adapter` into `base` (HF directory or .gguf file), export every format in `formats`,
    validate each through its SDK backend against the merged torch model, and write OUT/<format>."""
    from edgesight.progress import bar
    from edgesight.registry import TASKS
    from edgesight.runtime import default_threads

    from . import merge, validate

    formats = [formats] if isinstance(formats, str) else list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export format(s) {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(FORMATS)}")
    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    threads = default_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-work-", dir=out))
    steps = bar(total=2 + len(formats), desc="export", progress=progress, unit="step")
    try:
        # 1. merge, after checking everything that can be checked before any conversion
        steps.set_postfix_str("merge")
        base_dir = merge.materialize_base(base, work)
        kind, _ = merge.model_kind(base_dir)
        _check_formats(formats, kind, base_dir, adapter)
        merged = merge.merge(base_dir, adapter, work / "merged")
        steps.update()

        # 2. the reference: the merged torch model, greedy on the probes
        steps.set_postfix_str("reference")
        from edgesight.runtime.torch import TorchTextModel

        probes = list(probes or validate.default_probes(task))
        ref_model = TorchTextModel(merged.dir, threads=threads)
        fields = _manifest_fields(merged, base, adapter, prompt, generation)
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
    except Exception as exc:
        if disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(f"the disk is full while exporting to {out}; free space there and retry "
                                "(no partial bundle was left behind)") from exc
        raise
    finally:
        steps.close()
        shutil.rmtree(work, ignore_errors=True)
    from edgesight.bundle import atomic_write_bytes

    atomic_write_bytes(out / "export-report.json", json.dumps(report.to_dict(), indent=2).encode())
    if not report.ok:
        failed = [r for r in report.formats if r.status != "ok"]
        err = ExportError("; ".join(f"{r.format}: {r.error}" for r in failed))
        err.report = report
        raise err
    return report


def _check_formats(formats, kind: str, base_dir: Path, adapter) -> None:
    """Unsupported format/model combinations, a missing converter or an adapter the GGUF adapter
    path cannot carry: refuse before doing any work."""
    from . import gguf

    bad = [f for f in formats if kind not in FORMATS[f]["kinds"]]
    if bad:
        works = [f for f, spec in FORMATS.items() if kind in spec["kinds"]]
        raise ExportError(f"format(s) {', '.join(bad)} do not support {kind} models; for this model use: {', '.join(works)}")
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

    from . import merge, validate

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
