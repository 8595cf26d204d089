"""Issue 15: the generative VLM path on tiny SmolVLM-architecture models built in the test run."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

from kit_vlm import random_photo as _image, tiny_vlm_or_skip  # noqa: E402


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return tiny_vlm_or_skip(tmp_path_factory.mktemp("vlm") / "hf")


def run(*argv) -> int:
    from edgesight import cli

    return cli.main([str(a) for a in argv])


TRAIN = ("--steps", 8, "--batch-size", 2, "--lr", 5e-3, "--threads", 1, "--save-every", 0, "--no-progress")


@pytest.fixture(scope="module")
def chain(vlm_dir, tmp_path_factory):
    """The front door on the tiny model, shared by every test here (one training, one conversion):
    a catalogue of 6 generated product photos -> `edgesight train products --family vlm` (stopped at step 3,
    then the same command resumes) -> `edgesight export --task products --adapter` (GGUF f16, q8_0, q4_k_m and
    ONNX fp32, int8)."""
    pytest.importorskip("peft")
    from types import SimpleNamespace

    from edgesight.training.data.products import catalog_products, write_catalog

    work = tmp_path_factory.mktemp("vlm-chain")
    csv = write_catalog(work / "cat", catalog_products(6, seed=0), size=64)
    argv = ("train", "products", "--family", "vlm", "--catalog", csv, "--base", vlm_dir, "--out", work / "run") + TRAIN
    assert run(*argv, "--stop-after", 3) == 0
    stopped = {"checkpoint": (work / "run" / "checkpoint" / "trainer_state.json").is_file(),
               "adapter": (work / "run" / "adapter").exists(), "merged": (work / "run" / "merged").exists()}
    assert run(*argv) == 0
    assert run("export", "--task", "products", "--adapter", work / "run" / "adapter",   # the README's command: default formats
               "--out", work / "bundles", "--threads", 1, "--no-progress") == 0
    return SimpleNamespace(work=work, csv=csv, argv=argv, stopped=stopped, run=work / "run", merged=work / "run" / "merged",
                           bundles={t: work / "bundles" / f"gguf-{t}" for t in ("f16", "q8_0", "q4_k_m")},
                           onnx={t: work / "bundles" / f for t, f in (("fp32", "onnx"), ("int8", "onnx-int8"),
                                                                      ("int8-vision", "onnx-int8-vision"))})


@pytest.fixture(scope="module")
def bundles(chain):
    return chain.bundles


@pytest.fixture(scope="module")
def base_bundle(vlm_dir, tmp_path_factory):
    """The untrained base exported with a q8_0 mmproj (its pair id differs from the trained model's)."""
    from edgesight.export.vlm import export_vlm_bundle

    return export_vlm_bundle(vlm_dir, tmp_path_factory.mktemp("vlm-base") / "b", text_type="q8_0", mmproj_type="q8_0").path


def test_text_gguf_f16_greedy_matches_transformers_quantized_agreement(chain, bundles):
    """The exported (trained, merged) language model: greedy tokens of the f16 GGUF == transformers' Idefics3
    on the merged weights, same prompt tokens (text only); the export recorded the same check. With an image the outputs differ today (NOT MET in the issue-15 note: the
    mtmd image path is not token-identical to transformers on these tiny models)."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoTokenizer, Idefics3ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(chain.merged)
    model = Idefics3ForConditionalGeneration.from_pretrained(chain.merged).eval()
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
    assert json.loads((bundles["f16"] / "edgesight.json").read_text())["fidelity"]["exact_match"] is True
    print("agreement with transformers", {t: sum(a == b for a, b in zip(v, ref)) / len(ref) for t, v in got.items()})


def test_image_answers_through_mtmd(bundles, base_bundle):
    from edgesight.tasks.vlm import VLMModel

    outs = {t: VLMModel.from_pretrained(p, threads=1).generate(_image(1), "What is this product?", max_new_tokens=6)
            for t, p in {**bundles, "base q8_0 + mmproj q8_0": base_bundle}.items()}
    assert all(g.tokens > 0 and g.text for g in outs.values())
    m = VLMModel.from_pretrained(bundles["f16"], threads=1)
    assert m.generate(_image(1), "What?", max_new_tokens=6).text != m.generate(_image(5), "What?", max_new_tokens=6).text


def test_mmproj_of_another_model_is_refused(bundles, base_bundle, tmp_path):
    """The trained model's text GGUF with the base's mmproj (same shapes, other weights, hashes valid)."""
    from edgesight.bundle import BundleWriter, Bundle
    from edgesight.tasks.vlm import VLMModel, VLMPairError

    good = Bundle.load(bundles["f16"])
    with BundleWriter(tmp_path / "mixed", task="products", format="gguf", precision="f16", kind="vlm") as w:
        w.add_file(good.file("model"), "model.gguf", role="model")
        w.add_file(Bundle.load(base_bundle).file("mmproj"), "mmproj.gguf", role="mmproj")
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


@pytest.mark.parametrize("fmt", ["gguf-q8_0", "onnx-int8"])
def test_seeded_sampling_reproducible_and_grammar_always_parses(bundles, chain, fmt):
    """GGUF takes PRODUCT_GRAMMAR (llama.cpp GBNF), ONNX its Lark twin (llguidance): both always parse."""
    from edgesight.errors import InputError
    from edgesight.tasks.products import ProductResult
    from edgesight.tasks.vlm import VLMModel, VLMProductRecognizer, parse_answer

    m = VLMModel.from_pretrained(bundles["q8_0"] if fmt == "gguf-q8_0" else chain.onnx["int8"], threads=1)
    a = m.generate(_image(2), "Describe.", temperature=1.0, seed=7, max_new_tokens=12).text
    b = m.generate(_image(2), "Describe.", temperature=1.0, seed=7, max_new_tokens=12).text
    assert a == b
    with pytest.raises(InputError, match="grammar does not parse"):   # llama.cpp: a NULL sampler would crash
        m.generate(_image(2), "Describe.", grammar='root ::= ( "a"', max_new_tokens=4)
    free = [m.generate(_image(s), "What is shown in this image?", temperature=1.5, seed=s, max_new_tokens=60).text
            for s in range(3)]
    assert not all(parse_answer(t) for t in free)   # sampled hot without the grammar, the answer need not parse
    rec = VLMProductRecognizer(m)
    for seed in range(3):   # sampled hot: only the grammar makes this parse
        r = rec(_image(seed), temperature=1.5, seed=seed, max_new_tokens=60 if fmt == "gguf-q8_0" else 192)
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


# --- training: `edgesight train products --family vlm` -> `edgesight export` -> ProductRecognizer ---------

def test_front_door_train_export_answer(chain, capsys):
    """The chain through edgesight.cli.main: the loss falls, the stopped run left a checkpoint and no adapter,
    the rerun resumed, the export made bundles of kind vlm, and the bundle answers in the seed's format."""
    from edgesight.tasks.products import ProductRecognizer, ProductResult
    from edgesight.tasks.vlm import SEED_PROMPT, VLMProductRecognizer

    assert chain.stopped == {"checkpoint": True, "adapter": False, "merged": False}
    rep = json.loads((chain.run / "report.json").read_text())
    losses = [loss for _, loss in rep["loss_curve"]]
    assert [s for s, _ in rep["loss_curve"]] == list(range(1, 9)) and rep["resumed_from"] == 3
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
    assert rep["validation"] == [] and rep["merged"] == str(chain.merged)   # 6 rows: no held-out tenth
    recipe = json.loads((chain.run / "adapter" / "recipe.json").read_text())
    assert recipe["family"] == "vlm" and recipe["prompt"] == SEED_PROMPT and "text_model" in recipe["lora_targets"]
    head, answer = recipe["prompt_example"]
    assert head.endswith("What is shown in this image?<end_of_utterance>\nAssistant:")
    assert answer.startswith("Product: {title}, Category: {category}, Full Price: {price}<end_of_utterance>")
    for t, b in chain.bundles.items():
        m = json.loads((b / "edgesight.json").read_text())
        assert m["kind"] == "vlm" and m["precision"] == t and m["provenance"]["adapter"]
    pr = ProductRecognizer.from_pretrained(chain.bundles["q8_0"], threads=1)
    assert isinstance(pr, VLMProductRecognizer)
    photo = chain.csv.parent / "images" / "0000.png"
    r = pr(photo)
    assert isinstance(r, ProductResult) and r.path == "vlm" and not r.unknown
    assert r.raw.lstrip().startswith("Product: ") and r.title and r.category and isinstance(r.price, float)
    capsys.readouterr()
    assert run("products", "--model", chain.bundles["q8_0"], "--threads", 1, "--json", photo) == 0
    (cli_result,) = json.loads(capsys.readouterr().out)["results"]
    assert cli_result["raw"] == r.raw and cli_result["path"] == "vlm" and cli_result["image"] == str(photo)
    assert run("products", "--model", chain.bundles["q8_0"], "--threads", 1, "--json", "--prompt",
               "what is the price in 6.5?", photo) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["prompt"] == "what is the price in 6.5?"
    assert run("products", "--model", chain.bundles["q8_0"], "--catalog", chain.csv, photo) == 2
    assert "catalogue options" in capsys.readouterr().err


def test_resumed_run_equals_an_uninterrupted_one(chain, tmp_path):
    from safetensors.numpy import load_file

    argv = [a if a != chain.run else tmp_path / "run" for a in chain.argv]
    assert run(*argv) == 0
    once = json.loads((tmp_path / "run" / "report.json").read_text())
    resumed = json.loads((chain.run / "report.json").read_text())
    assert once["resumed_from"] == 0
    np.testing.assert_allclose([x for _, x in once["loss_curve"]], [x for _, x in resumed["loss_curve"]], rtol=1e-4)
    a = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(chain.run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_loss_is_on_the_answer_only(chain, vlm_dir):
    """Labels are -100 on the chat prompt and every image token (2x2 tiles + overview of 4 tokens each for a
    64-px photo); the labelled tokens decode to the seed's answer string plus the template's end of turn."""
    from edgesight.tasks.vlm import format_answer
    from edgesight.training.vlm import encode_rows, load_processor, read_rows

    rows = read_rows(chain.csv)
    processor, tok = load_processor(vlm_dir)
    enc = encode_rows(rows, processor, tok, 2048)
    image_id = tok.convert_tokens_to_ids("<image>")
    for r, e in zip(rows, enc):
        ids, labels = np.array(e["input_ids"]), np.array(e["labels"])
        assert (ids == image_id).sum() == 5 * 4 and (labels[ids == image_id] == -100).all()
        first = int(np.argmax(labels != -100))
        assert (labels[first:] == ids[first:]).all() and (labels[:first] == -100).all()
        assert tok.decode(ids[first:]) == format_answer(r.title, r.category, r.price) + "<end_of_utterance>\n"


def test_bad_catalogue_rows_are_typed_errors_with_their_lines(chain, vlm_dir, tmp_path, capsys):
    import csv as csvmod

    from catalog_kit import broken_catalog
    from edgesight.errors import CatalogError, TrainingError
    from edgesight.training.vlm import VLMDataError, read_rows

    path = broken_catalog(tmp_path, chain.csv)
    with open(path, "a", newline="", encoding="utf-8") as f:   # a category the answer grammar cannot write
        csvmod.writer(f).writerow(["ZZZ Comma code", "food, other", "1.00", str(chain.csv.parent / "images" / "0000.png"), ""])
    with pytest.raises(VLMDataError) as err:
        read_rows(path)
    lines = {line: problem for line, _, problem in err.value.rows}
    # rows 2-7 are the good catalogue; 8.. the broken ones (missing photo, bad price, [duplicate title: fine
    # for training, several photos of one product], empty title, negative price, corrupt photo, comma code)
    assert sorted(lines) == [8, 9, 11, 12, 13, 14], lines
    assert "image not found" in lines[8] and "full_price" in lines[9] and "title" in lines[11]
    assert "full_price" in lines[12] and "readable" in lines[13] and "category3_code" in lines[14]
    assert isinstance(err.value, TrainingError) and "line 8" in str(err.value)
    out = tmp_path / "never"
    assert run("train", "products", "--family", "vlm", "--catalog", path, "--base", vlm_dir, "--out", out, "--steps", 1,
               "--no-progress") == 2
    assert "line 9" in capsys.readouterr().err and not out.exists()
    with pytest.raises(CatalogError):
        read_rows(tmp_path / "missing.csv")


# --- ONNX bundles of the same export (tests/test_vlm_onnx.py checks them token for token against transformers) ----

def test_export_writes_onnx_vlm_bundles_and_product_recognizer_runs_them(chain, capsys):
    """`edgesight export` (default formats) on the trained adapter: bundles of kind vlm, format onnx, whose
    fp32 answers on the probe photos equal the merged torch model's; ProductRecognizer / `edgesight products --model`
    pick the ONNX runtime from the bundle; the answer grammar's Lark twin (llguidance) makes its answer parse."""
    from edgesight.errors import BackendError
    from edgesight.tasks.products import ProductRecognizer, ProductResult
    from edgesight.tasks.vlm import VLMModel, VLMProductRecognizer

    for precision, path in chain.onnx.items():
        m = json.loads((path / "edgesight.json").read_text())
        assert (m["kind"], m["format"], m["precision"]) == ("vlm", "onnx", precision) and m["provenance"]["adapter"]
        assert m["fidelity"]["probes"] == 3 and 0 <= m["fidelity"]["token_agreement"] <= 1
    assert json.loads((chain.onnx["fp32"] / "edgesight.json").read_text())["fidelity"]["exact_match"] is True
    files = {p: json.loads((path / "edgesight.json").read_text())["files"] for p, path in chain.onnx.items()}
    # int8-vision: the vision graph quantized, the decoder the fp32 one byte for byte
    assert files["int8-vision"]["decoder.onnx"] == files["fp32"]["decoder.onnx"] != files["int8"]["decoder.onnx"]
    assert files["int8-vision"]["vision.onnx"] == files["int8"]["vision.onnx"] != files["fp32"]["vision.onnx"]
    report = json.loads((chain.work / "bundles" / "export-report.json").read_text())
    assert {r["format"]: r["status"] for r in report["formats"]} == {f: "ok" for f in (
        "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "onnx", "onnx-int8", "onnx-int8-vision")}
    pr = ProductRecognizer.from_pretrained(chain.onnx["fp32"], threads=1)
    assert isinstance(pr, VLMProductRecognizer) and pr.model.backend == "onnx" and pr.model.grammar_syntax == "lark"
    photo = chain.csv.parent / "images" / "0000.png"
    r = pr(photo)
    assert isinstance(r, ProductResult) and r.path == "vlm" and isinstance(r.raw, str)
    assert not r.unknown and r.raw.lstrip().startswith("Product: ") and r.title and isinstance(r.price, float), r
    capsys.readouterr()
    assert run("products", "--model", chain.onnx["int8"], "--threads", 1, "--json", "--prompt", "what is the price?",
               photo) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["prompt"] == "what is the price?"
    with pytest.raises(BackendError):
        VLMModel.from_pretrained(chain.onnx["fp32"], backend="gguf")
    assert VLMModel.from_pretrained(chain.bundles["q8_0"], threads=1).supports_grammar
    from edgesight import Captioner

    cap = Captioner.from_pretrained(chain.onnx["int8"], threads=1, num_samples=1, seed=2)
    a, b = cap(photo), cap(photo)
    assert a.caption == b.caption and a.samples == b.samples and len(a.samples) == 1


def test_serve_and_batch_answer_with_vlm_bundles(chain, tmp_path):
    """`edgesight serve --model products=VLM_BUNDLE` (a real uvicorn server) answers /v1/products with the
    generated answer, bad photos get a 400 with the reason and the server keeps serving; `edgesight batch`
    runs an ONNX vlm bundle over a folder, the broken file becoming its own error row."""
    import base64
    import shutil

    import httpx

    from benchmarks.serve_load import start_server, stop_server
    from edgesight.batch import read_output, run_batch
    from edgesight.tasks.products import ProductRecognizer

    photo = chain.csv.parent / "images" / "0000.png"
    expected = ProductRecognizer.from_pretrained(chain.bundles["q8_0"], threads=1)(photo)
    proc, url = start_server(["--model", f"products={chain.bundles['q8_0']}", "--threads", "1"],
                             env={"EDGESIGHT_HOME": str(tmp_path / "home")})
    try:
        r = httpx.post(url + "/v1/products", json={"image": base64.b64encode(photo.read_bytes()).decode()}, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["path"] == "vlm" and body["raw"] == expected.raw and body["title"] == expected.title
        bad = httpx.post(url + "/v1/products", json={"image": base64.b64encode(b"not an image").decode()}, timeout=60)
        assert bad.status_code == 400 and bad.json()["type"] == "ImageError" and bad.json()["error"], bad.text
        assert httpx.post(url + "/v1/products", json={"image": base64.b64encode(photo.read_bytes()).decode()},
                          timeout=120).json()["raw"] == expected.raw
    finally:
        stop_server(proc)

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        shutil.copy(chain.csv.parent / "images" / f"000{i}.png", folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    summary = run_batch("products", folder, tmp_path / "out.jsonl", model=chain.onnx["fp32"], threads=1, batch_size=3,
                        progress=False)
    rows = {r["id"]: r for r in read_output(tmp_path / "out.jsonl")}
    assert set(rows) == {"0.png", "1.png", "broken.jpg"} and summary.errors == 1
    assert rows["broken.jpg"]["error"]["type"] == "ImageError"
    onnx = ProductRecognizer.from_pretrained(chain.onnx["fp32"], threads=1)
    for i in range(2):
        assert rows[f"{i}.png"]["ok"] and rows[f"{i}.png"]["result"]["path"] == "vlm"
        assert rows[f"{i}.png"]["result"]["raw"] == onnx(folder / f"{i}.png").raw


def test_product_grammar_twins_accept_what_parse_answer_reads(chain):
    """PRODUCT_LARK (ONNX, llguidance) takes the answers PRODUCT_GRAMMAR (GGUF) allows and parse_answer reads:
    commas in a title, an optional leading space; it refuses what the GBNF refuses. The GBNF itself, converted by
    llguidance, lexes the title greedily and never lets it end: why the Lark twin exists."""
    from tokenizers import Tokenizer

    from edgesight.grammar import TokenGrammars
    from edgesight.tasks.vlm import PRODUCT_GRAMMAR, PRODUCT_LARK, parse_answer

    text = (chain.onnx["int8"] / "tokenizer.json").read_text(encoding="utf-8")
    eos = json.loads((chain.onnx["int8"] / "edgesight.json").read_text())["tokens"]["eos"]
    grammars, vocab = TokenGrammars(text), Tokenizer.from_str(text).get_vocab_size()

    def accepts(grammar, answer):
        g = grammars.compile(grammar, vocab, eos)
        m = g.start(1).matchers[0]
        return m.consume_tokens(g.tokenizer.tokenize_str(answer)) and m.is_accepting()

    good = ["Product: Trench coat, beige, Category: COAT_1, Full Price: 1290.5", " Product: x, Category: y, Full Price: 1"]
    bad = ["Product: Shoe, Category: SH_1, Full Price: 12.555", "Product: a\nb, Category: SH_1, Full Price: 1",
           "Product: Shoe, Category: SH,1, Full Price: 1", "Product: " + "x" * 121 + ", Category: a, Full Price: 1"]
    for answer in good:
        assert accepts(PRODUCT_LARK, answer) and parse_answer(answer), answer
    for answer in bad:
        assert not accepts(PRODUCT_LARK, answer), answer
    assert not accepts(PRODUCT_GRAMMAR, good[0])


def test_cli_export_takes_a_q8_0_mmproj(chain, tmp_path):
    """`edgesight export --mmproj q8_0` (the smaller vision projector) from the merged training output; the
    bundle answers; --mmproj on a model that is no VLM is refused before anything is written."""
    from edgesight.errors import ExportError
    from edgesight.export import export
    from edgesight.tasks.vlm import VLMModel

    assert run("export", "--task", "products", "--base", chain.merged, "--formats", "gguf-q8_0", "--mmproj", "q8_0",
               "--out", tmp_path / "b", "--threads", 1, "--no-progress") == 0
    manifest = json.loads((tmp_path / "b" / "gguf-q8_0" / "edgesight.json").read_text())
    assert manifest["vlm"]["mmproj_type"] == "q8_0"
    f16 = (chain.bundles["q8_0"] / "mmproj.gguf").stat().st_size
    assert (tmp_path / "b" / "gguf-q8_0" / "mmproj.gguf").stat().st_size < f16   # tiny: mostly f32 norms, ~11 % smaller
    assert VLMModel.from_pretrained(tmp_path / "b" / "gguf-q8_0", threads=1).generate(_image(1), "Describe.",
                                                                                       max_new_tokens=4).tokens >= 1
    with pytest.raises(ExportError, match="vlm"):
        export(task="describe", out=tmp_path / "k", mmproj="q8_0")


def test_cli_cascade_answers_the_unknown_photos_with_a_vlm_bundle(chain, tmp_path, capsys):
    """`edgesight products --catalog CSV --vlm VLM_BUNDLE photos...`: the catalogue answers what it lists, the VLM
    (the README's recommended onnx-int8-vision bundle, grammar-constrained) what it calls unknown; bad pairings are
    refused with a reason; a real server with EDGESIGHT_PRODUCTS_VLM answers the same photos the same way."""
    import numpy as np
    from PIL import Image

    from catalog_kit import make_catalog, photo_queries

    csv, listed, held = make_catalog(tmp_path, n=12, holdout=3)
    photos = []
    for name, prods in (("listed", listed[:3]), ("held", held)):
        for i, (img, _) in enumerate(photo_queries(prods)[:3]):
            path = tmp_path / f"{name}{i}.png"
            (img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))).save(path)
            photos.append((name, path))
    capsys.readouterr()
    assert run("products", "--catalog", csv, "--vlm", chain.onnx["int8-vision"], "--threads", 1, "--json",
               *[p for _, p in photos]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    paths = {}
    for (name, _), r in zip(photos, results):
        paths.setdefault(name, []).append(r["path"])
        if r["path"] == "vlm":
            assert r["retrieval"]["unknown"] and r["raw"].lstrip().startswith("Product: ") and not r["unknown"], r
        else:
            assert r["title"] == r["retrieval"]["title"] and r["raw"] is None
    assert "retrieval" in paths["listed"] and "vlm" in paths["held"], paths
    assert run("products", "--catalog", csv, "--vlm", tmp_path, photos[0][1]) == 2          # not a vlm bundle
    assert run("products", "--model", chain.onnx["int8"], "--vlm", chain.onnx["int8"], photos[0][1]) == 2
    assert "--vlm" in capsys.readouterr().err

    # the same cascade behind `edgesight serve` (EDGESIGHT_PRODUCTS_VLM, as EDGESIGHT_PRODUCTS_CATALOG)
    import base64

    import httpx

    from benchmarks.serve_load import start_server, stop_server
    from edgesight.defaults import default_bundle_dir

    proc, url = start_server(["--model", f"products={default_bundle_dir('products')}", "--threads", "1"],
                             env={"EDGESIGHT_HOME": str(tmp_path / "home"), "EDGESIGHT_PRODUCTS_CATALOG": str(csv),
                                  "EDGESIGHT_PRODUCTS_VLM": str(chain.onnx["int8-vision"])})
    try:
        for (name, path), r in zip(photos, results):
            got = httpx.post(url + "/v1/products", json={"image": base64.b64encode(path.read_bytes()).decode()},
                             timeout=120)
            assert got.status_code == 200 and got.json()["path"] == r["path"], got.text
            assert got.json()["title"] == r["title"]
    finally:
        stop_server(proc)
