"""The front door, on tiny models built in the test run: `edgesight train TASK ...` -> `edgesight export
--task TASK ...` -> `<Task>.from_pretrained(bundle)`, all through `edgesight.cli.main`.

The export reads what the task's bundles must carry from the task's `export_spec` hook: a describe
bundle gets the adapter's chat prompt and vocabulary and the task's decoding, a keywords bundle the
tagger's labels and probes, a products bundle the encoder with the trained LoRA merged in. The tiny
models are random, so these tests check what the chain guarantees (the prompt the runtime sends is
the prompt training used, the vocabulary the guard and fallback speak is the one trained on), not
sentence quality."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesight import cli

pytest.importorskip("peft")

# A detector vocabulary the default garbage vocabulary knows nothing about.
VOCAB = {"domain": "cutlery",
         "labels": {"spoon": ["silver spoon", "teaspoon"], "mug": ["coffee mug", "tea mug"]},
         "scenes": {"counter": ["on the kitchen counter", "on the worktop"]}}
KITCHEN = {"detections": [{"label": "spoon", "confidence": 0.93}, {"label": "spoon", "confidence": 0.81},
                          {"label": "mug", "confidence": 0.77}], "scene": {"class": "counter", "confidence": 0.96}}


def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


def manifest(bundle: Path) -> dict:
    return json.loads((Path(bundle) / "edgesight.json").read_text(encoding="utf-8"))


# --- describe ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def describe_chain(tiny_llama_dir, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    work = tmp_path_factory.mktemp("front-describe")
    vocab = work / "vocab.json"
    vocab.write_text(json.dumps(VOCAB), encoding="utf-8")
    assert run("train", "describe", "--vocab", vocab, "--base", tiny_llama_dir, "--out", work / "run", "--steps", 2,
               "--batch-size", 4, "--n-inputs", 24, "--rank", 4, "--alpha", 8, "--threads", 1, "--save-every", 0,
               "--no-progress") == 0
    adapter = work / "run" / "adapter"
    assert run("export", "--task", "describe", "--base", tiny_llama_dir, "--adapter", adapter, "--formats", "gguf-f16",
               "--out", work / "bundles", "--threads", 1, "--no-progress") == 0
    return work / "bundles" / "gguf-f16", adapter


def test_describe_bundle_carries_the_trained_prompt_vocabulary_and_stops(describe_chain, tiny_llama_dir):
    from transformers import AutoTokenizer

    from edgesight.tasks.descriptions import Vocabulary

    bundle, adapter = describe_chain
    m = manifest(bundle)
    recipe = json.loads((adapter / "recipe.json").read_text(encoding="utf-8"))
    prefix, suffix = recipe["prompt_example"][0].split("{input}")
    assert (m["task"], m["kind"]) == ("describe", "causal-lm")
    assert (m["prompt"]["prefix"], m["prompt"]["suffix"]) == (prefix, suffix) and prefix.endswith("user\n")
    assert m["prompt"]["vocab"] == Vocabulary.from_dict(VOCAB).to_dict()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    stops = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", ".") if t in tok.get_vocab()} | {tok.eos_token_id}
    assert m["generation"]["eos_token_ids"] == sorted(stops)
    assert m["generation"]["max_new_tokens"] == 40 and m["generation"]["num_beams"] == 1
    # the export validated on describe prompts in the trained chat format, not on raw JSON
    report = json.loads((bundle.parent / "export-report.json").read_text(encoding="utf-8"))
    assert len(report["reference"]["probes"]) == 2 and all(p.startswith(prefix) for p in report["reference"]["probes"])
    assert m["fidelity"]["probes"] == 2 and m["fidelity"]["prompt_ids_match"] is True   # llama.cpp tokenizes as torch


def test_describer_sends_the_training_prompt_and_speaks_the_trained_vocabulary(describe_chain, tiny_llama_dir):
    from transformers import AutoTokenizer

    from edgesight import Describer
    from edgesight.tasks.descriptions import Vocabulary, check_sentence, parse_input, render_facts, template_sentence
    from edgesight.training.data.descriptions import SYSTEM, train_format
    from edgesight.training.trainer import chat_parts

    bundle, _ = describe_chain
    ds = Describer.from_pretrained(bundle, threads=1)
    vocab = Vocabulary.from_dict(VOCAB)
    assert ds.vocab == vocab and ds.vocab != Vocabulary.from_dict(None)
    facts = parse_input(KITCHEN)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    trained_prompt = chat_parts(tok, train_format({"input": KITCHEN, "output": ""})[0], "", SYSTEM)[0]
    assert ds.prompt_template.replace("{input}", render_facts(facts)) == trained_prompt
    result = ds(KITCHEN)
    assert check_sentence(result.text, facts, vocab).passed, result
    if result.fallback:  # a random tiny model does not write a faithful sentence: the fallback speaks V
        assert result.text == template_sentence(facts, vocab)
        assert result.text == "There are 2 silver spoons and 1 coffee mug on the kitchen counter."
    assert any(p in result.text.lower() for phrases in VOCAB["labels"].values() for p in phrases + ["spoon", "mug"])


def test_describe_default_recipe_path_writes_the_same_bundle(describe_chain, tiny_llama_dir, tmp_path):
    """`build_default` goes through export_into(): same manifest fields and model files as the CLI export."""
    from edgesight.export import export_into

    bundle, adapter = describe_chain
    other = export_into(tmp_path / "describe", tiny_llama_dir, adapter, task="describe", format="gguf-f16", threads=1,
                        progress=False)
    a, b = manifest(bundle), manifest(other)
    volatile = {"created", "export"}
    assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
    assert a["export"]["bytes"] == b["export"]["bytes"]


# --- keywords (token classifier) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def keywords_chain(tmp_path_factory):
    from test_trainer import tiny_bert

    work = tmp_path_factory.mktemp("front-keywords")
    base = tiny_bert(work / "bert")
    assert run("train", "keywords", "--family", "extractive", "--base", base, "--out", work / "run", "--steps", 3,
               "--batch-size", 8, "--train-examples", 64, "--val-examples", 8, "--rank", 4, "--alpha", 8,
               "--max-length", 64, "--threads", 1, "--save-every", 0, "--no-progress") == 0
    adapter = work / "run" / "adapter"
    assert run("export", "--task", "keywords", "--base", base, "--adapter", adapter, "--formats", "onnx",
               "--out", work / "bundles", "--threads", 1, "--no-progress") == 0
    return work / "bundles" / "onnx", adapter, base


def test_keywords_tagger_bundle_from_the_cli_runs_and_matches_torch(keywords_chain):
    from edgesight import KeywordExtractor
    from edgesight.tasks.keywords import export_probes

    bundle, adapter, _ = keywords_chain
    m = manifest(bundle)
    recipe = json.loads((adapter / "recipe.json").read_text(encoding="utf-8"))
    assert (m["task"], m["kind"], m["precision"]) == ("keywords", "token-classifier", "fp32")
    assert m["labels"] == recipe["config"]["labels"]
    assert m["fidelity"]["prompts"] == len(export_probes()) and m["fidelity"]["token_tag_agreement"] >= 0.97
    kw = KeywordExtractor.from_pretrained(bundle, threads=1)
    out = kw(["Segment cats, dogs, but not humans", "", "find the umbrellas"])
    assert len(out) == 3 and out[1] == [] and all(isinstance(n, str) for names in out for n in names)


def test_keywords_bundle_ships_the_base_as_vocabulary_embedder(keywords_chain):
    """The base encoder travels as the "embedder" graph: names no string rule maps are matched by meaning,
    with the bundle's own graph (no torch at run time), equal to torch's mean-pooled embedding."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgesight import KeywordExtractor

    bundle, _, base = keywords_chain
    m = manifest(bundle)
    assert {"embedder", "embedder_tokenizer"} <= set(m["components"]) and m["fidelity"]["embedder_cosine_min"] > 0.999
    kw = KeywordExtractor.from_pretrained(bundle, threads=1)
    vec = kw._embed(["a striped feline", "a parked lorry"])
    tok, ref = AutoTokenizer.from_pretrained(base), AutoModel.from_pretrained(base).eval()
    with torch.no_grad():
        want = ref(**tok("a striped feline", return_tensors="pt")).last_hidden_state[0].mean(0).numpy()
    assert np.allclose(vec[0], want / np.linalg.norm(want), atol=1e-4) and np.allclose(np.linalg.norm(vec, axis=1), 1)
    from edgesight.lexicon import LabelMap

    assert kw.label_map(["Cat", "Truck"]).embed is kw._embed
    sims = kw._embed(["Cat", "Truck"]) @ kw._embed(["striped feline"])[0]
    nearest = LabelMap(["Cat", "Truck"], min_similarity=-1.0, embed=kw._embed)
    assert nearest("a striped feline") == ["Cat", "Truck"][int(np.argmax(sims))]
    assert LabelMap(["Cat", "Truck"], min_similarity=1.01, embed=kw._embed)("a striped feline") is None


def test_export_refuses_formats_the_model_kind_cannot_take(keywords_chain, tmp_path, capsys):
    _, adapter, base = keywords_chain
    assert run("export", "--task", "keywords", "--base", base, "--adapter", adapter, "--formats", "gguf-f16",
               "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "token-classifier" in err and "onnx, onnx-int8" in err
    assert not (tmp_path / "out" / "gguf-f16").exists()


# --- products (image encoder + LoRA) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def products_chain(tmp_path_factory):
    work = tmp_path_factory.mktemp("front-products")
    assert run("train", "products", "--synthetic", 6, "--steps", 2, "--batch-size", 6, "--precision", "fp32",
               "--last-blocks", 2, "--threads", 1, "--out", work / "run", "--no-progress") == 0
    assert run("export", "--task", "products", "--adapter", work / "run" / "adapter", "--formats", "onnx",
               "--out", work / "bundles", "--threads", 1, "--no-progress") == 0
    return work / "bundles" / "onnx", work / "run", work


def test_products_bundle_from_the_cli_recognises_the_catalogue(products_chain):
    from edgesight import ProductRecognizer
    from edgesight.bundle import Bundle, sha256_file
    from edgesight.encoder import ImageEncoder
    from edgesight.images import load_image
    from edgesight.training.data.products import catalog_products, write_catalog

    bundle, run_dir, work = products_chain
    m = manifest(bundle)
    assert (m["task"], m["kind"], m["name"]) == ("products", "image-encoder", "efficientnet-lite0+lora")
    assert m["provenance"]["adapter_sha256"] == sha256_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert m["preprocessing"]["size"] == 224 and m["outputs"]["embedding"] == 1280
    # the adapter carries the training preprocessing, and the export uses it
    recipe = json.loads((run_dir / "adapter" / "recipe.json").read_text(encoding="utf-8"))
    assert m["preprocessing"] == recipe["preprocessing"] == manifest(run_dir / "bundle")["preprocessing"]
    # the export merges the adapter as training did: same embeddings as the bundle training wrote (both fp32)
    products = catalog_products(6, seed=0)   # what --synthetic 6 trained on (same generator, --seed 0)
    csv_path = write_catalog(work / "catalog", products)
    photos = [load_image(csv_path.parent / f"images/{i:04d}.png") for i in range(len(products))]
    ours = ImageEncoder.from_bundle(Bundle.load(bundle)).embed(photos)
    trained = ImageEncoder.from_bundle(Bundle.load(run_dir / "bundle")).embed(photos)
    assert float((ours * trained).sum(1).min()) > 0.999
    pr = ProductRecognizer.from_pretrained(bundle, catalog=csv_path, threads=1)
    assert [r.title for r in pr(photos)] == [p.title for p in products]


def test_products_export_refuses_text_formats(products_chain, tmp_path, capsys):
    _, run_dir, _ = products_chain
    assert run("export", "--task", "products", "--adapter", run_dir / "adapter", "--formats", "gguf-q8_0",
               "--out", tmp_path / "out") == 2
    assert "image-encoder" in capsys.readouterr().err


def test_export_spec_hooks_are_plain_json_readers(tmp_path):
    """The run-time hooks read the adapter's JSON only: no torch, and nothing for a plain adapter."""
    from edgesight.tasks import descriptions, keywords, products

    assert keywords.export_spec(tmp_path, "causal-lm") == {}
    assert keywords.export_spec(tmp_path, "token-classifier")["probes"]
    spec = descriptions.export_spec(None, "seq2seq")
    assert spec["prompt"]["prefix"] == "" and spec["generation"]["num_beams"] == 4 and "stop_tokens" not in spec["generation"]
    assert products.export_spec(None, None)["kind"] == "image-encoder"
    assert len(spec["probes"]) == 2 and spec["max_new_tokens"] == 16
