"""LoRA fine-tuning of the real EfficientNet-Lite0 on a rendered catalogue (real peft, real ONNX export),
kept short: 96-px images, a handful of steps. The accuracy effect at full size is measured by
`edgesight eval products` and reported in docs/products.md, not asserted here."""
import json

import numpy as np
import pytest

from catalog_kit import make_catalog, photo_queries, render
from edgesight.errors import TrainingError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from edgesight.training.products import train

    work = tmp_path_factory.mktemp("lora")
    csv_path, listed, _ = make_catalog(work / "catalog", n=8, holdout=0)
    report = train(csv_path, work / "run", steps=6, batch_size=6, lr=3e-3, rank=4, alpha=8, last_blocks=2,
                   image_size=96, precision="fp32", threads=1, progress=False)
    return report, csv_path, listed


def test_lora_trains_merges_and_exports_a_bundle(trained):
    from safetensors.numpy import load_file

    from edgesight.bundle import Bundle

    report, _, _ = trained
    assert len(report.loss_curve) == 6 and all(np.isfinite(loss) for _, loss in report.loss_curve)
    adapter = load_file(f"{report.adapter_dir}/adapter_model.safetensors")
    assert any("lora_B" in k for k in adapter) and any(np.abs(v).max() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert report.target_modules[-1] == "net._conv_head" and len(report.target_modules) == 5
    bundle = Bundle.load(report.bundle)
    assert bundle.manifest["provenance"]["lora"]["steps"] == 6
    assert bundle.manifest["preprocessing"]["size"] == 96
    assert bundle.manifest["fidelity"]["embedding_cosine_min"] > 0.999  # merged ONNX == merged torch
    saved = json.loads((bundle.path.parent / "report.json").read_text())
    assert set(saved["retrieval"]) == {"held_out_views", "top1_before", "top1_after"}


def test_merged_encoder_differs_from_base_and_recognises_the_catalogue(trained, tmp_path):
    from dataclasses import replace

    from edgesight.bundle import Bundle
    from edgesight.encoder import ImageEncoder
    from edgesight.export.image_encoder import LITE0_PREPROCESSING, efficientnet_lite0, export_image_encoder
    from edgesight.tasks.products import ProductRecognizer

    report, csv_path, listed = trained
    base = export_image_encoder(efficientnet_lite0(96), tmp_path / "base", precision="fp32", progress=False,
                                preprocessing=replace(LITE0_PREPROCESSING, size=96))
    photos = [render(p) for p in listed[:3]]
    tuned_emb = ImageEncoder.from_bundle(Bundle.load(report.bundle)).embed(photos)
    base_emb = ImageEncoder.from_bundle(base).embed(photos)
    assert (tuned_emb * base_emb).sum(1).min() < 0.9999  # the adapter really changed the merged weights
    pr = ProductRecognizer.from_pretrained(report.bundle, catalog=csv_path, threads=1)
    hits = [pr(image).matches[0].title == p.title for image, p in photo_queries(listed, seed=3)]
    assert sum(hits) >= len(listed) // 2, hits


def test_training_refuses_a_one_product_catalogue(tmp_path):
    from edgesight.training.products import train

    csv_path, _, _ = make_catalog(tmp_path, n=1, holdout=0)
    with pytest.raises(TrainingError, match="at least 2"):
        train(csv_path, tmp_path / "run", steps=1)


def test_training_names_a_bad_lora_target(tmp_path):
    from edgesight.training.products import train

    csv_path, _, _ = make_catalog(tmp_path, n=2, holdout=0)
    with pytest.raises(TrainingError, match="not in the encoder"):
        train(csv_path, tmp_path / "run", steps=1, target_modules=["net._blocks.99._project_conv"])
    with pytest.raises(TrainingError, match="target pointwise"):
        train(csv_path, tmp_path / "run", steps=1, target_modules=["net._blocks.3._depthwise_conv"])


def test_products_cli_adapts_the_encoder_to_the_catalogue_then_indexes_it(tmp_path, capsys):
    """`edgesight products --catalog CSV --adapt STEPS --save-index DIR`: LoRA on the catalogue's photos, the
    tuned encoder in DIR/encoder, the catalogue indexed with it in DIR/index (refused by the base encoder)."""
    from edgesight.cli import main
    from edgesight.errors import CatalogError
    from edgesight.tasks.products import ProductRecognizer

    csv_path, listed, _ = make_catalog(tmp_path / "catalog", n=4, holdout=0)
    assert main(["products", "--catalog", str(csv_path), "--adapt", "1", "--save-index", str(tmp_path / "out"),
                 "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adapted"]["steps"] == 1 and out["index"] == str(tmp_path / "out" / "index")
    tuned = ProductRecognizer.from_pretrained(out["adapted"]["encoder"], catalog=out["index"], threads=1)
    assert tuned.catalog.calibration["threshold"] and tuned.threshold_source == "catalogue"
    assert tuned(render(listed[1])).matches[0].title == listed[1].title
    with pytest.raises(CatalogError, match="rebuild it from the CSV"):
        ProductRecognizer.from_pretrained(None, catalog=out["index"], threads=1)
    assert main(["products", "--catalog", str(csv_path), "--adapt", "1", "--threads", "1"]) == 2   # no --save-index
    assert "--save-index" in capsys.readouterr().err
