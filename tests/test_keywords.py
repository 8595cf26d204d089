"""Keyword extraction: data builder, baseline, name normalisation, parser, vocabulary, and the
KeywordExtractor end to end on a tiny BERT token classifier trained, exported to ONNX and run by
onnxruntime in this test session."""
from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

from edgesight.errors import InputError
from edgesight.lexicon import LabelMap as Vocabulary
from edgesight.lexicon import answer_name, canonical, english_words
from edgesight.evaluation.keywords import baseline, read_jsonl
from edgesight.tasks.keywords import KeywordExtractor, from_json, parse_generated, score
from edgesight.training.data import keywords as kwdata

HANDWRITTEN = Path(__file__).parent / "data" / "keywords_handwritten.jsonl"


# ----------------------------------------------------------------------------- names

@pytest.mark.parametrize("raw, want", [
    ("cats", "Cat"), ("the Mice", "Mouse"), ("PEOPLE", "Person"), ("geese", "Goose"), ("knives", "Knife"),
    ("all the red buses", "Red bus"), ("sheep", "Sheep"), ("glasses", "Glasses"), ("wine glasses", "Wine glass"),
    ("strawberries", "Strawberry"), ("peaches", "Peach"), ("tvs", "TV"), ("scissors", "Scissors"),
    ("  ", ""), ("the", ""), ("coffee tables", "Coffee table"), ("potatoes", "Potato"),
])
def test_canonical_names(raw, want):
    assert canonical(raw) == want


@pytest.mark.parametrize("text, want", [
    ("Cat, Dog", ["Cat", "Dog"]), ("cats, dogs, cats", ["Cat", "Dog"]), ("None", []), ("none.", []),
    ('["cat", "dog"]', ["Cat", "Dog"]), ("- Cat\n- Dog", ["Cat", "Dog"]), ("Cat and Dog<|im_end|>junk", ["Cat", "Dog"]),
    ("", []), (None, []), (42, []), ("]]]][[[,,,;;", []), ("x" * 500, []), ("Cat, Dog, ", ["Cat", "Dog"]),
    ("Cat, Dog\nuser\nSegment the cars", ["Cat", "Dog"]), ("1. cats\n2. dogs", ["Cat", "Dog"]),
])
def test_parser_is_defensive(text, want):
    assert parse_generated(text) == want


# ----------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def data():
    return kwdata.build(1500, 300, seed=0)


def test_data_is_deterministic_and_split_by_template_and_category(data):
    again = kwdata.build(1500, 300, seed=0)
    assert again["train"] == data["train"] and again["val"] == data["val"]
    assert kwdata.build(50, 10, seed=1)["train"] != data["train"][:50]
    assert data["meta"]["templates"] >= 100
    assert not {r["template"] for r in data["train"]} & {r["template"] for r in data["val"]}
    train_names = {n for r in data["train"] for n in r["output"]}
    val_names = {n for r in data["val"] for n in r["output"]}
    # disjoint categories; a shared surface word (e.g. "Bag") may still belong to two categories
    assert len(train_names & val_names) < 0.05 * len(val_names)
    families = {r["family"] for r in data["train"]}
    assert {"simple", "question", "negation", "action", "detailed", "contextual", "alternative",
            "uncertainty", "free"} <= families


def test_excluded_objects_never_reach_the_target(data):
    rows = data["train"] + data["val"]
    only_excluded = [r for r in rows if "{K" not in r["template"]]
    assert only_excluded and all(r["output"] == [] for r in only_excluded)
    for r in rows:
        tagged = [answer_name(r["input"][s:e]).lower() for s, e in r["spans"]]
        assert len(tagged) >= len(r["output"])
        # every target comes from a tagged span, or a misspelt one (3% of training mentions)
        misspelt = any(w.lower() not in english_words() for s, e in r["spans"] for w in r["input"][s:e].split())
        for o in r["output"]:
            assert max(difflib.SequenceMatcher(None, o.lower(), t).ratio() for t in tagged) >= (
                1 if r in data["val"] else 0 if misspelt else 0.7)


def test_example_for_a_negation_template():
    import random
    ex = kwdata.make_example("Segment {K}, but not {X}.", ["Cat", "Dog", "Car"], random.Random(0))
    kept = [ex["input"][s:e] for s, e in ex["spans"]]
    assert ex["output"] == [answer_name(k) for k in kept] and 1 <= len(kept) <= 2
    excluded = ex["input"].split("but not")[1]
    assert not any(o.lower() in excluded.lower() for o in ex["output"])


def test_handwritten_set_covers_the_hard_cases():
    rows = read_jsonl(HANDWRITTEN)
    assert len(rows) >= 60
    text = " ".join(r["input"].lower() for r in rows)
    for phrase in ("not bicycles", "nothing other than", "instead of", "neither", "not only", "automobiles",
                   "kids", "paris last summer", "mice", "bycicles"):
        assert phrase in text, phrase
    assert sum(r["output"] == [] for r in rows) >= 5


def test_baseline_handles_simple_negation_but_not_synonyms():
    assert baseline("Segment cats, dogs, but not humans") == ["Cat", "Dog"]
    assert baseline("Ignore elements that are not bicycles.") == ["Bicycle"]
    assert baseline("Detect all objects except chairs.") == []
    assert baseline("segment the automobiles") == []      # outside the vocabulary: a model's job
    rows = read_jsonl(HANDWRITTEN)
    s = score([baseline(r["input"]) for r in rows], [r["output"] for r in rows])
    assert 0.7 < s.f1 < 0.95 and s.exact < 0.85


def test_score_counts_alternatives_and_empty_sets():
    s = score([["Cat", "Dog"], [], ["Automobile"], ["Cat"]], [["Cat"], [], [["Car", "Automobile"]], []])
    assert (s.precision, s.recall, s.exact) == (0.5, 1.0, 0.5)


# ----------------------------------------------------------------------------- vocabulary

def test_vocabulary_maps_synonyms_slashes_and_misspellings():
    vocab = Vocabulary("objects365")
    assert vocab("automobiles") == "Car"
    assert vocab("tv") == "Monitor/TV" and vocab("Monitors") == "Monitor/TV"
    assert vocab("umbrela") == "Umbrella"
    assert vocab("kids") == "Person"
    small = Vocabulary(["Dog", "Cat", "Vehicle"])
    assert small("puppies") == "Dog" and small("cats") == "Cat"
    assert 'item ::= "Dog" | "Cat" | "Vehicle"' in small.grammar()


@pytest.mark.parametrize("bad", [[], "coco", [""], [1, 2], 5])
def test_bad_vocabulary_is_an_input_error(bad):
    with pytest.raises(InputError):
        Vocabulary(bad)


def test_tagged_spans_snap_typos_to_known_names_only():
    from edgesight.tasks.keywords import spans_to_names
    text = "bycicles, umbrela, elephnats, testing, zebra"
    spans = [(0, 8), (10, 17), (19, 28), (30, 37), (39, 44)]
    assert spans_to_names(text, spans) == ["Bicycle", "Umbrella", "Elephant", "Testing", "Zebra"]


def test_from_json():
    assert from_json({"prompt": "cats"}) == "cats"
    assert from_json({"prompts": ["a", "b"]}) == ["a", "b"]
    for bad in ({}, {"prompt": 3}, [1], {"prompts": ["a", 2]}):
        with pytest.raises(InputError):
            from_json(bad)


# ----------------------------------------------------------------------------- end to end

def test_extractor_runs_the_exported_tagger(tagger_bundle):
    kw = KeywordExtractor.from_pretrained(tagger_bundle, threads=1)
    manifest = json.loads((tagger_bundle / "edgesight.json").read_text())
    assert manifest["kind"] == "token-classifier" and manifest["precision"] == "int8"
    assert manifest["fidelity"]["token_tag_agreement"] >= 0.95
    one = kw("Segment the cats and the dogs, but not the cars")
    assert isinstance(one, list) and all(isinstance(n, str) and n[:1].isupper() for n in one)
    prompts = ["find the chairs", "Segment cats, dogs, but not humans", "  ", "ignore the cars"]
    batch = kw(prompts)
    assert batch == [kw(p) for p in prompts] and batch[2] == []
    assert kw([]) == []


def test_extractor_bad_input(tagger_bundle, monkeypatch):
    kw = KeywordExtractor.from_pretrained(tagger_bundle, threads=1)
    with pytest.raises(InputError, match="prompt string"):
        kw(42)
    with pytest.raises(InputError):
        kw(["ok", None])
    with pytest.raises(InputError, match="not valid Unicode"):
        kw("cats \ud800 dogs")
    with pytest.raises(InputError, match="over this model's limit"):
        kw("cats and dogs " * 250)   # under the character limit, over the token limit

    def boom(*a, **k):
        raise AssertionError("the model must not run for an empty prompt")
    monkeypatch.setattr(kw._model, "extract", boom)
    assert kw("") == [] and kw("   \n") == []


def test_extractor_vocabulary_maps_onto_allowed_labels(tagger_bundle):
    kw = KeywordExtractor.from_pretrained(tagger_bundle, threads=1, vocabulary=["Vehicle", "Animal"])
    for names in kw(["cats and dogs", "the cars", "hello"]):
        assert set(names) <= {"Vehicle", "Animal"}
    # a per-call vocabulary is built (and its labels embedded) once, then reused; a bad one stays typed
    assert kw.label_map(["Dog", "Car"]) is kw.label_map(("Dog", "Car")) is not kw.label_map(["Dog"])
    o365 = kw.label_map("objects365")
    assert isinstance(kw("the cars", vocabulary="objects365"), list) and kw.label_map("objects365") is o365
    with pytest.raises(InputError):
        kw("the cars", vocabulary=[{"not": "a label"}])


def test_cli_and_eval(tagger_bundle, capsys, tmp_path):
    from edgesight.cli import main
    assert main(["keywords", "--model", str(tagger_bundle), "--json", "Segment the cats"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)
    out = tmp_path / "eval.json"
    assert main(["eval", "keywords", "--model", str(tagger_bundle), "--data", str(HANDWRITTEN),
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    entry = report["sets"]["keywords_handwritten.jsonl"]
    assert entry["model"]["n"] >= 60 and 0 <= entry["model"]["f1"] <= 1
    assert entry["baseline"]["f1"] > 0.7


@pytest.fixture
def default_kw():
    from edgesight.defaults import default_bundle_dir
    if not (default_bundle_dir("keywords") / "edgesight.json").is_file():
        pytest.skip("default bundles not built (run `edgesight build-defaults`)")
    return KeywordExtractor.from_pretrained(threads=1)


@pytest.mark.defaults
def test_default_bundle_beats_the_baseline(default_kw):
    rows = read_jsonl(HANDWRITTEN)
    gold = [r["output"] for r in rows]
    model = score(default_kw([r["input"] for r in rows]), gold)
    base = score([baseline(r["input"]) for r in rows], gold)
    assert model.f1 > base.f1 and model.exact >= base.exact + 0.1
    assert default_kw("Segment cats, dogs, but not humans") == ["Cat", "Dog"]


@pytest.mark.defaults
def test_default_bundle_on_the_frozen_set(default_kw):
    """Issue 13's figures (docs/keywords.md) hold for the default: overall, per family, and the demo."""
    from edgesight.evaluation.keywords import FROZEN, per_family
    from edgesight.tasks.keywords import SAMPLE_INPUTS
    rows = read_jsonl(FROZEN)
    preds = default_kw([r["input"] for r in rows])
    overall = score(preds, [r["output"] for r in rows])
    assert overall.f1 >= 0.97 and overall.exact >= 0.94
    families = per_family(rows, preds)
    assert min(v["exact"] for f, v in families.items() if f != "chatty") >= 0.85 and families["chatty"]["exact"] >= 0.65
    assert default_kw(SAMPLE_INPUTS) == [["Cat", "Dog"], ["Car", "Bicycle"], ["Umbrella"]]


def test_full_fine_tune_saves_the_encoder_whole_and_exports(tmp_path):
    """`train keywords --full`: every encoder layer trained and saved whole (modules_to_save), exported."""
    from safetensors import safe_open
    from test_trainer import tiny_bert

    from edgesight.export.tagger import export_tagger
    from edgesight.training.trainer import TrainConfig, train_lora
    base = tiny_bert(tmp_path / "bert")
    data = kwdata.build(80, 10, seed=0)
    rep = train_lora(base, data["train"], kind="token-classification", out_dir=tmp_path / "run",
                     config=TrainConfig(steps=4, batch_size=8, lr=1e-3, labels=kwdata.LABELS, save_every=0, threads=1,
                                        max_length=64, target_modules=["word_embeddings"], modules_to_save=["encoder"]),
                     format_example=kwdata.format_extractive, progress=False)
    with safe_open(str(Path(rep.adapter_dir) / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("encoder.layer.0.attention.self.query.weight" in k for k in keys)   # the whole layer, not a LoRA
    bundle = export_tagger(base, rep.adapter_dir, tmp_path / "bundle", precision="fp32", threads=1, progress=False)
    assert isinstance(KeywordExtractor.from_pretrained(bundle, threads=1)("find the cats"), list)
