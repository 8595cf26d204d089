"""Issue 15: the generative VLM path on tiny SmolVLM-architecture models built in the test run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

from kit_vlm import tiny_vlm  # noqa: E402


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    try:
        return tiny_vlm(tmp_path_factory.mktemp("vlm") / "hf")
    except Exception as exc:   # no SmolLM2 GGUF installed
        if "MissingWeights" in type(exc).__name__:
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="module")
def bundles(vlm_dir, tmp_path_factory):
    from edgesight.export.vlm import convert_vlm, export_vlm_bundle

    root = tmp_path_factory.mktemp("vlmb")
    conv = convert_vlm(vlm_dir, root / "gguf", ("f16", "q8_0", "q4_k_m"), ("f16", "q8_0"))
    return {t: export_vlm_bundle(vlm_dir, root / t, text_type=t, mmproj_type="q8_0" if t == "q8_0" else "f16",
                                 converted=conv).path for t in ("f16", "q8_0", "q4_k_m")}


def _image(seed=0, size=64):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def hf_greedy(model_dir, image, prompt, n):
    """transformers greedy on the input llama.cpp's mtmd builds for Idefics3: it always splits, here into a
    1x1 grid plus the overview image, laid out as transformers' Idefics3 processor lays out a split image."""
    import torch
    from transformers import AutoTokenizer, Idefics3ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = Idefics3ForConditionalGeneration.from_pretrained(model_dir).eval()
    cfg = model.config
    n_img = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor ** 2
    text = (tok.bos_token + "User:" + "<fake_token_around_image><row_1_col_1>" + "<image>" * n_img + "\n"
            + "\n<fake_token_around_image><global-img>" + "<image>" * n_img + "<fake_token_around_image>"
            + prompt + "<end_of_utterance>\nAssistant:")
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    one = (torch.from_numpy(arr).permute(2, 0, 1) / 255.0 - 0.5) / 0.5
    pv = torch.stack([one, one])[None]   # the 1x1 tile and the overview are the same 64-px image
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv, max_new_tokens=n,
                             do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_text_gguf_f16_greedy_matches_transformers_quantized_agreement(vlm_dir, bundles):
    """The exported language model: greedy tokens of the f16 GGUF == transformers' Idefics3 on the same
    prompt tokens (text only). With an image the outputs differ today (NOT MET in the issue-15 note: the
    mtmd image path is not token-identical to transformers on these tiny models)."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoTokenizer, Idefics3ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(vlm_dir)
    model = Idefics3ForConditionalGeneration.from_pretrained(vlm_dir).eval()
    ids = tok(tok.bos_token + "User:What is this product?<end_of_utterance>\nAssistant:", add_special_tokens=False).input_ids
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                             eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    got = {}
    for t, p in bundles.items():
        llm = Llama(model_path=str(p / "model.gguf"), n_ctx=256, n_threads=1, verbose=False)
        out = []
        for tid in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            out.append(tid)
            if len(out) == len(ref):
                break
        got[t] = out
    assert got["f16"] == ref
    print("agreement with transformers", {t: sum(a == b for a, b in zip(v, ref)) / len(ref) for t, v in got.items()})


def test_image_answers_through_mtmd(bundles):
    from edgesight.tasks.vlm import VLMModel

    outs = {t: VLMModel.from_pretrained(p, threads=1).generate(_image(1), "What is this product?", max_new_tokens=6)
            for t, p in bundles.items()}
    assert all(g.tokens > 0 and g.text for g in outs.values())
    m = VLMModel.from_pretrained(bundles["f16"], threads=1)
    assert m.generate(_image(1), "What?", max_new_tokens=6).text != m.generate(_image(5), "What?", max_new_tokens=6).text


def test_mmproj_of_another_model_is_refused(vlm_dir, bundles, tmp_path):
    from edgesight.export.vlm import export_vlm_bundle
    from edgesight.bundle import BundleWriter, Bundle
    from edgesight.tasks.vlm import VLMModel, VLMPairError

    other = tiny_vlm(tmp_path / "other", seed=1)   # same shapes, other weights
    ob = export_vlm_bundle(other, tmp_path / "ob", text_type="f16")
    good = Bundle.load(bundles["f16"])
    with BundleWriter(tmp_path / "mixed", task="products", format="gguf", precision="f16", kind="vlm") as w:
        w.add_file(good.file("model"), "model.gguf", role="model")
        w.add_file(ob.file("mmproj"), "mmproj.gguf", role="mmproj")   # hashes are right, the pair is not
        w.manifest["vlm"] = dict(good.get("vlm"))
    with pytest.raises(VLMPairError, match="does not belong"):
        VLMModel.from_pretrained(tmp_path / "mixed")


def test_bad_images_are_typed_errors(bundles):
    from edgesight.errors import InputError
    from edgesight.tasks.vlm import VLMModel

    m = VLMModel.from_pretrained(bundles["q8_0"], threads=1)
    for bad in (b"not an image", b"", np.zeros((0, 3)), 42):
        with pytest.raises(InputError):
            m.generate(bad, "What is this product?", max_new_tokens=2)


def test_seeded_sampling_reproducible_and_grammar_always_parses(bundles):
    from edgesight.tasks.products import ProductResult
    from edgesight.tasks.vlm import VLMModel, VLMProductRecognizer

    m = VLMModel.from_pretrained(bundles["q8_0"], threads=1)
    a = m.generate(_image(2), "Describe.", temperature=1.0, seed=7, max_new_tokens=12).text
    b = m.generate(_image(2), "Describe.", temperature=1.0, seed=7, max_new_tokens=12).text
    assert a == b
    rec = VLMProductRecognizer(m)
    for seed in range(3):   # random weights: only the grammar makes this parse
        r = rec(_image(seed), temperature=1.0, seed=seed, max_new_tokens=60)
        assert isinstance(r, ProductResult) and r.path == "vlm" and r.raw.lstrip().startswith("Product: ")
        assert r.title and r.category and isinstance(r.price, float) and not r.unknown, r
        assert json.loads(json.dumps(r.to_dict()))["raw"] == r.raw
    free = rec(_image(3), "what is the price in 6.5?", max_new_tokens=8)
    assert free.prompt == "what is the price in 6.5?" and isinstance(free.raw, str)


def test_product_recognizer_dispatches_vlm_bundle(bundles):
    from edgesight.tasks.products import ProductRecognizer
    from edgesight.tasks.vlm import VLMProductRecognizer

    pr = ProductRecognizer.from_pretrained(bundles["q8_0"], threads=1)
    assert isinstance(pr, VLMProductRecognizer)
    r = pr(_image(4))
    assert r.path == "vlm" and r.raw.lstrip().startswith("Product: ") and isinstance(r.price, float)


def test_cascade_retrieval_first_then_vlm(bundles, tmp_path):
    """Listed product -> the catalogue answers; held-out product (catalogue says unknown) -> the VLM answers."""
    from catalog_kit import make_catalog, photo_queries
    from edgesight.tasks.products import ProductRecognizer, ProductResult
    from edgesight.tasks.vlm import ProductCascade

    csv, listed, held = make_catalog(tmp_path, n=12, holdout=3)
    retrieval = ProductRecognizer.from_pretrained(None, catalog=csv, threads=1)
    cascade = ProductCascade(retrieval, ProductRecognizer.from_pretrained(bundles["q8_0"], threads=1))
    paths = {}
    for name, prods in (("listed", listed[:3]), ("held", held)):
        for img, _ in photo_queries(prods)[:3]:
            r = cascade(img)
            assert isinstance(r, ProductResult)
            paths.setdefault(name, []).append(r.path)
            if r.path == "vlm":
                assert r.raw.lstrip().startswith("Product: ") and r.retrieval.unknown
            else:
                assert r.title and r.raw is None and r.retrieval.title == r.title
    assert "retrieval" in paths["listed"] and "vlm" in paths["held"], paths


def test_captioner_takes_a_vlm_bundle_greedy_caption_and_reproducible_samples(bundles):
    from edgesight import Captioner
    from edgesight.errors import ImageError, InputError
    from edgesight.tasks.captioning import CaptionResult, caption_words

    cap = Captioner.from_pretrained(bundles["q8_0"], threads=1, num_samples=2, seed=5)
    img = _image(3)
    a, b = cap(img), cap(img)
    assert isinstance(a, CaptionResult) and len(a.samples) == 2
    assert a.caption and a.caption == b.caption            # greedy: the same every time
    assert a.samples == b.samples                           # seeded sampling reproduces
    assert cap(img, seed=6).samples != a.samples or a.samples[0] == a.samples[1]   # the seed is used
    assert {w for w, _ in a.tags} <= set(caption_words([a.caption, *a.samples]))   # tags come from the captions
    with pytest.raises((ImageError, InputError)):
        cap(b"not an image")
