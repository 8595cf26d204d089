"""Issue 15, ONNX: a tiny Idefics3 model exported as a vlm bundle of ONNX graphs (vision + connector, embedding,
decoder with KV cache fed inputs_embeds) and run by the SDK without torch; checked against transformers (load_vlm)
in the same run: preprocessing and prompt token for token, greedy answers identical for fp32."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from kit_vlm import random_photo, tiny_vlm_or_skip  # noqa: E402

PROMPTS = ("What is shown in this image?", "Describe the picture.")
# square, wide, tall, small (upscaled), very wide: 2x2, 2x1, 1x2, 2x2, 2x1 tiles + overview at a longest edge of 128
SIZES = ((64, 64), (100, 48), (40, 90), (17, 17), (300, 41))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_vlm_or_skip(tmp_path_factory.mktemp("vlmonnx") / "hf")


@pytest.fixture(scope="module")
def bundles(model_dir, tmp_path_factory):
    """fp32 and int8 bundles; the export itself refuses an fp32 bundle whose greedy answers differ from torch."""
    from edgesight.export.vlm_onnx import export_vlm_onnx_bundles

    root = tmp_path_factory.mktemp("vlmonnxb")
    images = [random_photo(i, s) for i, s in enumerate(SIZES[:3])]
    made = export_vlm_onnx_bundles(model_dir, {"fp32": root / "fp32", "int8": root / "int8"}, images=images)
    return {p: b.path for p, b in made.items()}


@pytest.fixture(scope="module")
def hf(model_dir):
    from edgesight.export.vlm import load_processor, load_vlm

    processor, tok = load_processor(model_dir)
    return load_vlm(model_dir).eval(), processor, tok


def _processor_config(model_dir, **over):
    cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    return {**cfg, **over}


@pytest.mark.parametrize("settings", [{}, {"size": {"longest_edge": 256}}, {"do_image_splitting": False},
                                      {"resample": 2}])
def test_preprocessing_equals_transformers_image_processor(model_dir, settings):
    """Pixel tensors and the tile layout, bit for bit, over image shapes and processor settings."""
    from transformers import Idefics3ImageProcessor

    from edgesight.idefics3 import Idefics3Preprocessing

    cfg = _processor_config(model_dir, **settings)
    ref_proc = Idefics3ImageProcessor(**{k: v for k, v in cfg.items() if k != "image_processor_type"})
    ours = Idefics3Preprocessing.from_dict(cfg)
    for i, size in enumerate(SIZES):
        img = random_photo(i, size)
        ref = ref_proc(images=[[img]], return_tensors="np", return_row_col_info=True)
        pixels, rows, cols = ours(img)
        assert (rows, cols) == (ref["rows"][0][0], ref["cols"][0][0]), size
        assert pixels.dtype == np.float32 and pixels.shape == ref["pixel_values"][0].shape, size
        assert np.array_equal(pixels, ref["pixel_values"][0]), (size, np.abs(pixels - ref["pixel_values"][0]).max())


def test_prompt_token_ids_equal_transformers_processor(bundles, hf):
    """The ONNX runtime's prompt (chat template from the manifest, image tokens expanded, tokenized with
    tokenizers) is the Idefics3 processor's input_ids, for every tile layout."""
    from edgesight.bundle import Bundle
    from edgesight.runtime import open_vlm

    _, processor, tok = hf
    vlm = open_vlm(Bundle.load(bundles["fp32"]), threads=1)
    for i, size in enumerate(SIZES):
        img = random_photo(i, size)
        for prompt in PROMPTS:
            user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            head = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
            ref = processor(text=[head], images=[[img]], add_special_tokens=True)["input_ids"][0]
            _, rows, cols = vlm.preprocessing(img)
            assert vlm.prompt_ids(prompt, rows, cols) == ref, (size, prompt)


def test_onnx_fp32_greedy_equals_transformers_int8_agreement_recorded(bundles, hf, record_property):
    """The whole image path of the fp32 bundle through the SDK == transformers fp32 (load_vlm), 5 shapes x 2
    prompts; the int8 bundle's share of identical answers is recorded (random weights: not asserted)."""
    from edgesight.bundle import Bundle
    from edgesight.export.vlm_onnx import image_fidelity, torch_image_greedy
    from edgesight.runtime import open_vlm

    model, processor, tok = hf
    cases = [(random_photo(i, s), p) for i, s in enumerate(SIZES) for p in PROMPTS]
    ref = [torch_image_greedy(model, processor, tok, img, p, 12) for img, p in cases]
    got = {prec: [open_vlm(Bundle.load(path), threads=1).generate_ids(img, p, max_new_tokens=12) for img, p in cases]
           for prec, path in bundles.items()}
    assert got["fp32"] == ref
    assert len({tuple(r) for r in ref}) > 1            # the image and prompt change the answer: the test can see it
    fid = image_fidelity(ref, got["int8"])
    record_property("int8_answers_identical", fid["answers_identical"])
    record_property("int8_token_agreement", fid["token_agreement"])
    manifest = json.loads((bundles["fp32"] / "edgesight.json").read_text())
    assert manifest["kind"] == "vlm" and manifest["format"] == "onnx" and manifest["fidelity"]["exact_match"] is True
    assert set(manifest["components"]) == {"vision", "embed", "model", "tokenizer"}


def test_onnx_vlm_bundle_opens_on_its_runtime_and_refuses_bad_input(bundles):
    from edgesight.bundle import Bundle
    from edgesight.errors import BackendError, InputError
    from edgesight.runtime import RUNTIMES, VisionTextModel, open_vlm

    bundle = Bundle.load(bundles["fp32"])
    vlm = open_vlm(bundle, threads=1)
    assert isinstance(vlm, VisionTextModel) and vlm.backend == "onnx" and vlm.supports_grammar
    assert vlm.grammar_syntax == "lark"
    assert RUNTIMES["onnx"].vlm and RUNTIMES["gguf"].vlm and not RUNTIMES["torch"].vlm
    with pytest.raises(BackendError):
        open_vlm(bundle, backend="gguf")
    for bad in (b"not an image", b"", np.zeros((0, 3)), 42):
        with pytest.raises(InputError):
            vlm.generate(bad, "What?", max_new_tokens=2)
    with pytest.raises(InputError, match="image tokens"):
        vlm.generate(random_photo(0), "look: <image>", max_new_tokens=2)
    with pytest.raises(InputError, match="grammar"):
        vlm.generate(random_photo(0), "What?", grammar='root ::= ( "a"')
    with pytest.raises(InputError):
        vlm.generate(random_photo(0), 7)
    a = vlm.generate(random_photo(1), "Describe.", temperature=1.0, seed=3, max_new_tokens=8)
    b = vlm.generate(random_photo(1), "Describe.", temperature=1.0, seed=3, max_new_tokens=8)
    assert a == b and 1 <= a.tokens <= 8 and a.finish_reason in ("stop", "length")
