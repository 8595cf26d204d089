"""Captioning: tiny BLIP + tiny CLIP exported by our own exporter, run by the SDK, compared with
transformers in the same run; quantized variants' agreement recorded; the result contract."""
import json

import numpy as np
import pytest
from skimage import data

from edgesight.bundle import Bundle
from edgesight.errors import BundleError, ImageError, InputError
from edgesight.images import load_image
from edgesight.tasks.captioning import CaptionResult, Captioner, caption_words, from_json, lemma

PHOTOS = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


@pytest.fixture(scope="module")
def captioner(blip_bundle):
    return Captioner(blip_bundle, threads=1)


@pytest.fixture(scope="module")
def torch_blip(tiny_blip_dir):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    return (BlipForConditionalGeneration.from_pretrained(str(tiny_blip_dir)).eval(),
            BlipProcessor.from_pretrained(str(tiny_blip_dir)))


def test_bundle_layout_and_recorded_fidelity(blip_bundle):
    b = Bundle.load(blip_bundle.path)
    assert b.kind == "blip" and b.precision == "fp32"
    for role in ("encoder", "decoder", "tokenizer", "clip_image", "clip_text", "clip_tokenizer", "tag_embeds", "tag_vocab"):
        assert b.has(role), role
    assert b.get("fidelity")["greedy_agreement"] == 1.0 and b.get("fidelity")["beam3_agreement"] == 1.0


@pytest.mark.parametrize("beams", [1, 3])
def test_onnx_captions_equal_pytorch_generate(captioner, torch_blip, beams):
    import torch

    model, proc = torch_blip
    for photo in PHOTOS:
        with torch.no_grad():
            ref = model.generate(pixel_values=proc(images=photo, return_tensors="pt").pixel_values,
                                 num_beams=beams, max_new_tokens=12, do_sample=False)
        want = proc.decode(ref[0], skip_special_tokens=True)
        assert captioner.generate_captions(photo, num_beams=beams, max_new_tokens=12) == [want]


def test_result_contract(captioner):
    r = captioner(data.chelsea())
    assert isinstance(r, CaptionResult) and r.caption and len(r.samples) == 5
    scores = [s for _, s in r.tags]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4
    assert [t for t, _ in r.tags] and {t for t, _ in r.tags} == set(caption_words([r.caption, *r.samples]))
    seed = r.to_seed_dict()
    assert set(seed) == {"tags", "captions", "english_captions"} and seed["captions"] == [r.caption]
    json.dumps(r.to_dict())
    # seeded sampling is reproducible; another seed gives other samples; beam caption does not move
    assert captioner(data.chelsea()).samples == r.samples
    other = captioner(data.chelsea(), seed=123)
    assert other.samples != r.samples and other.caption == r.caption
    assert len(captioner(data.chelsea(), num_samples=2).samples) == 2
    batch = captioner([data.chelsea(), data.coffee()])
    assert [b.caption for b in batch][0] == r.caption and len(batch) == 2


def test_clip_scores_equal_pytorch_softmax(captioner, tiny_clip_dir):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(str(tiny_clip_dir)).eval(), CLIPProcessor.from_pretrained(str(tiny_clip_dir))
    words = ["cat", "dog", "pizza", "zebra", "coffee"]   # "zebra" is not in the shipped vocabulary
    image = load_image(data.coffee())
    got = dict(captioner.clip.scores(image, words))
    with torch.no_grad():
        inputs = proc(text=words, images=image, return_tensors="pt", padding=True)
        ref = model(**inputs).logits_per_image.softmax(-1)[0].numpy()
    np.testing.assert_allclose([got[w] for w in words], ref, atol=1e-5)


def test_quantized_variants_record_agreement(tiny_blip_dir, tiny_clip_dir, blip_bundle, tmp_path):
    from edgesight.export.captioning import export_blip, requantize

    fp32_decoder = blip_bundle.file("decoder").stat().st_size
    direct = export_blip(tiny_blip_dir, tmp_path / "int4", clip_dir=tiny_clip_dir, precision="int4",
                         max_new_tokens=12, threads=1, progress=False)              # validated against PyTorch
    derived = requantize(blip_bundle.path, tmp_path / "int8", "int8", threads=1)  # validated against the fp32 bundle
    assert derived.get("fidelity")["reference"] == "fp32 bundle" and derived.get("derived_from") == str(blip_bundle.path)
    for b, precision in ((direct, "int4"), (derived, "int8")):
        fid = b.get("fidelity")
        assert b.precision == precision and 0.0 <= fid["greedy_agreement"] <= 1.0 and 0.0 <= fid["beam3_agreement"] <= 1.0
        assert b.file("decoder").stat().st_size < fp32_decoder   # the weights really are quantized
        r = Captioner(b, threads=1)(data.astronaut())
        assert r.caption and len(r.samples) == 5 and r.tags


def test_words_and_lemmas():
    assert [lemma(w) for w in ("cats", "buses", "berries", "glass", "people", "bus", "dishes")] == \
           ["cat", "bus", "berry", "glass", "person", "bus", "dish"]
    assert caption_words(["A cat sitting on two chairs.", "the cats and a dog in a picture"]) == \
           ["cat", "sitting", "chair", "dog"]


def test_bad_inputs_are_typed(captioner, blip_bundle):
    with pytest.raises(ImageError):
        captioner(b"not an image")
    with pytest.raises(InputError, match="num_samples"):
        captioner(data.chelsea(), num_samples=-1)
    with pytest.raises(InputError, match="base64"):
        from_json({"image": "***"})
    with pytest.raises(InputError, match="JSON object"):
        from_json(["image"])
    manifest = dict(blip_bundle.manifest, kind="gpt-something")
    with pytest.raises(BundleError, match="kind"):
        Captioner(Bundle(blip_bundle.path, manifest))


def test_cli_prints_seed_json(blip_bundle, tmp_path, capsys):
    from PIL import Image

    from edgesight.cli import main

    path = tmp_path / "cat.jpg"
    Image.fromarray(data.chelsea()).save(path)
    assert main(["caption", "--model", str(blip_bundle.path), "--json", "--seed-format", "--samples", "2", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out[0]) == {"tags", "captions", "english_captions"} and len(out[0]["english_captions"]) == 2
    assert main(["caption", "--model", str(blip_bundle.path), str(tmp_path / "missing.jpg")]) == 2


def test_vit_gpt2_through_optimum_equals_pytorch(tiny_vit_gpt2_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer, ViTImageProcessor, VisionEncoderDecoderModel

    from edgesight.export.captioning import export_vit_gpt2

    bundle = export_vit_gpt2(tiny_vit_gpt2_dir, tmp_path / "vg", precision="fp32", max_new_tokens=10, progress=False)
    assert bundle.kind == "vision-encoder-decoder" and bundle.get("fidelity")["beam3_agreement"] == 1.0
    model = VisionEncoderDecoderModel.from_pretrained(str(tiny_vit_gpt2_dir)).eval()
    proc, tok = ViTImageProcessor.from_pretrained(str(tiny_vit_gpt2_dir)), AutoTokenizer.from_pretrained(str(tiny_vit_gpt2_dir))
    cap = Captioner(bundle, threads=1)
    for photo in PHOTOS:
        with torch.no_grad():
            ref = model.generate(pixel_values=proc(images=photo, return_tensors="pt").pixel_values, num_beams=3, max_new_tokens=10)
        assert cap.generate_captions(photo, num_beams=3, max_new_tokens=10) == [tok.decode(ref[0], skip_special_tokens=True)]
    r = cap(data.chelsea())
    assert len(r.samples) == 5 and r.tags and r.tags == sorted(r.tags, key=lambda t: -t[1])   # caption-frequency scores


def test_merged_beam_and_sample_decoding_equals_separate_runs(captioner):
    from edgesight.generation import GenerationConfig

    for photo in PHOTOS[:2]:
        img = load_image(photo)
        r = captioner(img)     # beam and samples decoded in lockstep, one batch per token
        assert [r.caption] == captioner.model.captions(img, [captioner.beam])[0]
        sample = GenerationConfig.from_dict({**captioner.sample.to_dict(), "num_return_sequences": 5, "seed": 0})
        assert r.samples == captioner.model.captions(img, [sample])[0]
