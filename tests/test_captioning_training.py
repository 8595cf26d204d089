"""LoRA on tiny BLIP's text decoder from an image folder + captions file: real peft training,
resume from a checkpoint, merge, and export of the merged model validated against PyTorch."""
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from edgesight.errors import TrainingError
from edgesight.training.captioning import merge, read_captions, train_captioning
from edgesight.training.trainer import TrainConfig

PHOTOS = {"cat.png": (data.chelsea, "a cat sitting on a bed"), "coffee.png": (data.coffee, "a cup of coffee on a table"),
          "rocket.png": (data.rocket, "a rocket in the sky"), "astronaut.png": (data.astronaut, "a woman holding a flower")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    for name, (load, _) in PHOTOS.items():
        Image.fromarray(load()).resize((96, 96)).save(root / name)
    (root / "captions.csv").write_text("image,caption\n" + "".join(f"{n},{c}\n" for n, (_, c) in PHOTOS.items()))
    (root / "captions.jsonl").write_text("".join(json.dumps({"image": n, "caption": c}) + "\n" for n, (_, c) in PHOTOS.items()))
    return root


def test_read_captions_csv_and_jsonl(folder):
    csv_rows, jsonl_rows = read_captions(folder, folder / "captions.csv"), read_captions(folder, folder / "captions.jsonl")
    assert csv_rows == jsonl_rows and len(csv_rows) == 4
    (folder / "bad.csv").write_text("image,caption\nmissing.png,a thing\n")
    with pytest.raises(TrainingError, match="missing.png"):
        read_captions(folder, folder / "bad.csv")
    (folder / "empty.csv").write_text("image,caption\ncat.png,\n")
    with pytest.raises(TrainingError, match="row 1"):
        read_captions(folder, folder / "empty.csv")


def test_lora_trains_resumes_merges_and_exports(tiny_blip_dir, folder, tmp_path):
    from safetensors.numpy import load_file

    from edgesight.export.captioning import export_blip

    examples = read_captions(folder, folder / "captions.csv")
    cfg = dict(batch_size=2, lr=3e-3, rank=8, alpha=16, dropout=0.0, save_every=3, threads=1, warmup_steps=1)
    first = train_captioning(tiny_blip_dir, examples, out_dir=tmp_path / "run", val_examples=examples[:2],
                             config=TrainConfig(steps=3, **cfg), progress=False)
    assert first.resumed_from == 0 and len(first.loss_curve) == 3
    report = train_captioning(tiny_blip_dir, examples, out_dir=tmp_path / "run", val_examples=examples[:2],
                              config=TrainConfig(steps=12, **cfg), progress=False)
    assert report.resumed_from == 3 and [s for s, _ in report.loss_curve] == list(range(1, 13))
    losses = [loss for _, loss in report.loss_curve]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])            # it learns the four captions
    assert report.validation[-1]["step"] == 12 and report.validation[-1]["loss"] < report.validation[0]["loss"]

    merged = merge(tiny_blip_dir, tmp_path / "run" / "adapter", tmp_path / "merged")
    before, after = load_file(str(tiny_blip_dir / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    name = "text_decoder.bert.encoder.layer.0.attention.self.query.weight"
    assert not np.allclose(before[name], after[name])          # the adapter was folded in
    bundle = export_blip(merged, tmp_path / "bundle", precision="fp32", max_new_tokens=8, progress=False)
    assert bundle.get("fidelity")["greedy_agreement"] == 1.0    # fp32 export of the merged model == PyTorch


def test_vision_lora_adapts_the_vision_attention_too(tiny_blip_dir, folder, tmp_path):
    from safetensors.numpy import load_file

    examples = read_captions(folder, folder / "captions.jsonl")
    train_captioning(tiny_blip_dir, examples, out_dir=tmp_path, vision_lora=True, progress=False,
                     config=TrainConfig(steps=1, batch_size=2, threads=1))
    keys = list(load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")))
    assert any("vision_model" in k and "qkv" in k for k in keys) and any("text_decoder" in k for k in keys)
    assert not any("text_decoder.cls" in k for k in keys)          # the LM head stays frozen
