"""The generative keywords family end to end on a tiny Llama: shared trainer (ChatML, answer-only
loss) -> export stage (GGUF via llama.cpp) -> KeywordExtractor on the gguf backend, with the
instruction prefix from the training recipe, defensive parsing of whatever the random model writes,
and a vocabulary grammar that only lets allowed labels out."""
from __future__ import annotations

import json

import pytest

from edgesight.tasks.keywords import KeywordExtractor
from edgesight.training.data import keywords as kwdata

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def kw_bundles(tmp_path_factory):
    from kit import tiny_llama

    from edgesight.export import export
    from edgesight.training.trainer import TrainConfig, train_lora
    work = tmp_path_factory.mktemp("kwgen")
    base = tiny_llama(work / "llama")
    data = kwdata.build(64, 8, seed=0)
    rep = train_lora(base, data["train"], kind="causal", out_dir=work / "run",
                     config=TrainConfig(steps=2, batch_size=4, rank=4, alpha=8, threads=1, save_every=0,
                                        system=kwdata.SYSTEM, max_length=96),
                     format_example=kwdata.format_generative, progress=False)
    export(base, rep.adapter_dir, task="keywords", out=work / "bundles", formats=["gguf-f32", "onnx"], threads=1,
           progress=False)
    return {fmt: work / "bundles" / fmt for fmt in ("gguf-f32", "onnx")}


@pytest.fixture(scope="module")
def gguf_bundle(kw_bundles):
    return kw_bundles["gguf-f32"]


def test_generative_bundle_carries_the_training_prompt(gguf_bundle):
    from transformers import AutoTokenizer

    from edgesight.training.trainer import chat_parts
    manifest = json.loads((gguf_bundle / "edgesight.json").read_text())
    assert manifest["kind"] == "causal-lm" and manifest["task"] == "keywords"
    prefix, suffix = manifest["prompt"]["prefix"], manifest["prompt"]["suffix"]
    assert prefix.endswith("<|im_start|>user\n") and kwdata.SYSTEM in prefix
    assert suffix == "<|im_end|>\n<|im_start|>assistant\n"
    assert manifest["prompt"]["system"] == kwdata.SYSTEM and manifest["generation"]["max_new_tokens"] == 24
    # what the extractor sends is what training encoded
    tok = AutoTokenizer.from_pretrained(gguf_bundle.parent.parent / "llama")   # the base it was trained on
    prompt = "Segment cats, dogs, but not humans"
    assert prefix + prompt + suffix == chat_parts(tok, prompt, "", kwdata.SYSTEM)[0]


def test_random_model_output_is_parsed_never_raised(gguf_bundle):
    kw = KeywordExtractor.from_pretrained(gguf_bundle, threads=1)
    out = kw(["Segment cats, dogs, but not humans", "", "find the umbrellas"])
    assert len(out) == 3 and out[1] == []
    assert all(isinstance(n, str) for names in out for n in names)


@pytest.mark.parametrize("fmt", ["gguf-f32", "onnx"])   # llama.cpp's GBNF / llguidance on the numpy loop
def test_vocabulary_becomes_a_grammar(kw_bundles, fmt):
    kw = KeywordExtractor.from_pretrained(kw_bundles[fmt], threads=1, vocabulary=["Cat", "Dog", "Umbrella"])
    for names in kw(["Segment cats, dogs, but not humans", "find the umbrellas", "hello"]):
        assert set(names) <= {"Cat", "Dog", "Umbrella"}
    assert 'item ::= "Cat" | "Dog" | "Umbrella"' in kw.vocabulary.grammar()


@pytest.mark.parametrize("fmt", ["gguf-f32", "onnx"])
def test_grammar_constrains_the_raw_generation(kw_bundles, fmt):
    from dataclasses import replace

    from edgesight.lexicon import LabelMap
    kw = KeywordExtractor.from_pretrained(kw_bundles[fmt], threads=1)
    labels = ["Cat", "Dog", "Umbrella"]
    gen = kw._model
    prompt = [gen.prefix + "Segment the cats" + gen.suffix]

    def in_language(raw):   # labels joined by ", " (the last one possibly cut by max_new_tokens) or "None"
        items = raw.split(", ")
        return raw == "None" or all(i in labels for i in items[:-1]) and any(lab.startswith(items[-1]) for lab in labels)
    assert not in_language(gen.model.generate(prompt, replace(gen.config, max_new_tokens=12))[0][0])
    raw = gen.model.generate(prompt, replace(gen.config, grammar=LabelMap(labels).grammar(), max_new_tokens=12))[0][0]
    assert in_language(raw), raw
