"""Descriptions without a model: the input contract, the faithfulness guard, the template fallback
and the data builder (pure Python, fast). Model paths are in test_descriptions_models.py."""
import json
import math

import pytest

from edgesight.errors import InputError, TrainingError
from edgesight.tasks.descriptions import (Facts, Vocabulary, check_sentence, first_sentence, from_json, parse_input,
                                          pluralize, read_inputs, render_facts, template_sentence)
from edgesight.training.data.descriptions import (build_examples, heldout_inputs, load_inputs, read_jsonl,
                                                  synthetic_inputs, train_format, write_jsonl)

VOCAB = Vocabulary.from_dict(None)
GRASS = {"class": "grass", "confidence": 0.95}


def det(label, conf=0.9, **kw):
    return {"label": label, "confidence": conf, **kw}


# ----------------------------------------------------------------------------- input contract

@pytest.mark.parametrize("payload, says", [
    ([], "must be an object"),
    ({"scene": GRASS}, 'lacks "detections"'),
    ({"detections": {"label": "x"}}, "must be a list"),
    ({"detections": ["plastic"]}, "detections[0] must be an object"),
    ({"detections": [{"confidence": 0.9}]}, 'detections[0] lacks "label"'),
    ({"detections": [{"label": "plastic"}]}, 'lacks "confidence"'),
    ({"detections": [det("")]}, "non-empty string"),
    ({"detections": [det(3)]}, "non-empty string"),
    ({"detections": [det("plastic", 1.5)]}, "in [0, 1], got 1.5"),
    ({"detections": [det("plastic", -0.1)]}, "in [0, 1]"),
    ({"detections": [det("plastic", float("nan"))]}, "in [0, 1], got nan"),
    ({"detections": [det("plastic", "0.9")]}, "must be a number"),
    ({"detections": [det("plastic", True)]}, "must be a number"),
    ({"detections": [det("plastic", bbox=[1, 2, 3])]}, "bbox must be 4 finite numbers"),
    ({"detections": [det("plastic", bbox=[1, 2, 3, math.inf])]}, "bbox must be 4 finite numbers"),
    ({"detections": [], "scene": "grass"}, '"scene" must be an object'),
    ({"detections": [], "scene": {"class": "grass"}}, 'scene lacks "confidence"'),
    ({"detections": [], "scene": {"confidence": 0.9}}, 'scene lacks "class"'),
    ({"detections": [], "scene": {"class": "grass", "confidence": 95}}, "scene.confidence must be in [0, 1]"),
    ("{not json", "not valid JSON"),
])
def test_bad_input_gets_a_typed_error_that_says_what_is_wrong(payload, says):
    with pytest.raises(InputError) as err:
        parse_input(payload)
    assert says in str(err.value)


def test_thresholds_filter_detections_and_scene():
    payload = {"detections": [det("Plastic", 0.92), det("plastic", 0.55), det("metal", 0.3), det("glass", 0.7, bbox=[0, 0, 5, 5])],
               "scene": {"class": "grass", "confidence": 0.79}}
    assert parse_input(payload) == Facts({"plastic": 2, "glass": 1}, None)
    assert parse_input(payload, min_confidence=0.6, scene_threshold=0.7) == Facts({"plastic": 1, "glass": 1}, "grass")
    assert parse_input(json.dumps(payload), min_confidence=0.0).counts == {"plastic": 2, "metal": 1, "glass": 1}
    assert parse_input({"detections": [], "scene": {"class": "unknown", "confidence": 1.0}}).scene is None
    assert parse_input({"detections": [], "scene": None}) == Facts({}, None)
    assert render_facts(Facts({"plastic": 2, "metal": 1}, "grass")) == "2 plastic, 1 metal; scene: grass"
    assert render_facts(Facts({}, None)) == "none; scene: none"


def test_pluralize_handles_heads_irregulars_and_already_plural_names():
    cases = {"plastic bottle": "plastic bottles", "piece of broken glass": "pieces of broken glass", "glass": "glasses",
             "bus": "buses", "box": "boxes", "cherry": "cherries", "toy": "toys", "person": "people",
             "knife": "knives", "sneakers": "sneakers", "traffic light": "traffic lights"}
    assert {k: pluralize(k) for k in cases} == cases


# ----------------------------------------------------------------------------- the guard

FACTS = Facts({"plastic": 2, "metal": 1}, "grass")


@pytest.mark.parametrize("sentence", [
    "There are 2 plastic bottles and 1 metal can on the grass.",
    "Two discarded plastic bottles and a single rusty aluminum can are visible on the lawn.",
    "I can see 2 pieces of plastic waste and one metal item in a grassy area.",
    "The image shows 1 plastic bottle, 1 plastic item and 1 metal can on green grass.",
    "Two plastic items and 1 piece of metal lie on the grass.",
])
def test_guard_accepts_faithful_sentences(sentence):
    report = check_sentence(sentence, FACTS, VOCAB)
    assert report.passed, report.problems


@pytest.mark.parametrize("sentence, rule, says", [
    ("There are 3 plastic bottles and 1 metal can on the grass.", "counts", "says 3, the detector found 2"),
    ("There are 2 plastic bottles on the grass.", "labels", "'metal' (x1) is not mentioned"),
    ("There are plastic bottles and 1 metal can on the grass.", "counts", "without a count"),
    ("There are 2 plastic bottle and 1 metal can on the grass.", "agreement", "should be plural"),
    ("There is 2 plastic bottles and 1 metal can on the grass.", "agreement", "'is' with 3 object(s)"),
    ("There are 2 plastic bottles, 1 metal can and 4 glass items on the grass.", "invented", "(glass) was not detected"),
    ("There are 2 plastic bottles and 1 metal can and 5 shoes on the grass.", "invented", "number '5'"),
    ("There are 2 plastic bottles and 1 metal can.", "scene", "'grass' is not mentioned"),
    ("There are 2 plastic bottles and 1 metal can on the beach.", "scene", "'sandy' is mentioned"),
    ("", "labels", "empty"),
])
def test_guard_names_the_rule_a_sentence_breaks(sentence, rule, says):
    report = check_sentence(sentence, FACTS, VOCAB)
    assert not report.passed and not report.checks[rule]
    assert any(says in p for p in report.problems), report.problems


def test_guard_on_empty_detections_and_unconfident_scenes():
    none_grass, none = Facts({}, "grass"), Facts({}, None)
    assert check_sentence("No garbage detected on the grass.", none_grass, VOCAB).passed
    assert not check_sentence("No garbage detected on the grass.", none, VOCAB).checks["scene"]
    assert not check_sentence("There is 1 plastic bottle.", none, VOCAB).passed
    assert not check_sentence("The image is empty.", none, VOCAB).checks["labels"]


def test_guard_reads_number_words_up_to_dozens():
    for words, n in [("twenty one", 21), ("twenty-one", 21), ("two dozen", 24), ("a dozen", 12), ("forty", 40), ("a", 1)]:
        noun = "plastic bottle" if n == 1 else "plastic bottles"
        assert check_sentence(f"There {'is' if n == 1 else 'are'} {words} {noun}.", Facts({"plastic": n}, None), VOCAB).passed, words
    assert not check_sentence("There are twenty two plastic bottles.", Facts({"plastic": 21}, None), VOCAB).passed


def test_unknown_labels_and_scenes_use_their_names():
    facts = Facts({"traffic light": 3, "person": 1}, "kitchen")
    sentence = template_sentence(facts, VOCAB)
    assert sentence == "There are 3 traffic lights and 1 person in a kitchen scene."
    assert check_sentence(sentence, facts, VOCAB).passed
    assert not check_sentence("There are 3 traffic lights and 2 people in a kitchen scene.", facts, VOCAB).passed
    assert check_sentence("I see 3 traffic light items and 1 person in a kitchen scene.", facts, VOCAB).passed
    assert not check_sentence("I see 3 traffic light item and 1 person in a kitchen scene.", facts, VOCAB).passed


def test_template_fallback_always_passes_the_guard():
    """The fallback must be rule-correct on every input: it is what users get when the model lies."""
    vocab = Vocabulary.from_dict({"labels": {"car": ["parked car"], "bus": []}, "scenes": {"street": ["on the street"]}})
    for v in (VOCAB, vocab):
        for payload in synthetic_inputs(400, v, seed=3):
            facts = parse_input(payload)
            report = check_sentence(template_sentence(facts, v), facts, v)
            assert report.passed, (facts, template_sentence(facts, v), report.problems)


def test_first_sentence_cuts_run_on_generation():
    assert first_sentence(" There is 1 can. I can see more.\nfoo") == "There is 1 can."
    assert first_sentence("There are 2.5 cans") == "There are 2.5 cans."
    assert first_sentence("  ") == ""


# ----------------------------------------------------------------------------- data builder

def test_builder_is_deterministic_varied_and_faithful(tmp_path):
    inputs = synthetic_inputs(300, VOCAB, seed=1)
    assert inputs == synthetic_inputs(300, VOCAB, seed=1) and inputs != synthetic_inputs(300, VOCAB, seed=2)
    rows = build_examples(inputs, VOCAB, variations=3, seed=0)
    assert rows == build_examples(inputs, VOCAB, variations=3, seed=0)
    counts = [n for r in rows for n in parse_input(r["input"]).counts.values()]
    assert max(counts) >= 13, "counts up to dozens"
    per_input = {}
    for r in rows:
        per_input.setdefault(json.dumps(r["input"], sort_keys=True), set()).add(r["output"])
        facts = parse_input(r["input"])
        assert check_sentence(r["output"], facts, VOCAB).passed, r
    assert max(len(s) for s in per_input.values()) == 3
    assert any(parse_input(r["input"]).scene is None and parse_input(r["input"], scene_threshold=0.0).scene not in (None, "unknown")
               for r in rows), "scenes below the threshold are sampled (and not described)"
    write_jsonl(rows, tmp_path / "d.jsonl")
    assert read_jsonl(tmp_path / "d.jsonl") == rows
    prompt, answer = train_format(rows[0])
    assert prompt.startswith("Describe: ") and render_facts(parse_input(rows[0]["input"])) in prompt and answer == rows[0]["output"]


def test_builder_takes_any_detector_vocabulary_and_files_on_disk(tmp_path):
    (tmp_path / "classes.txt").write_text("Traffic_Light\nCar\nBus\n")
    vocab = Vocabulary.load(tmp_path / "classes.txt")
    assert set(vocab.labels) == {"traffic light", "car", "bus"} and vocab.domain == "objects"
    outputs = tmp_path / "detector"
    outputs.mkdir()
    for i in range(3):
        (outputs / f"img{i}.json").write_text(json.dumps({"detections": [det("Bus")] * (i + 1), "scene": None}))
    inputs = load_inputs(outputs)
    assert [parse_input(x).counts for x in inputs] == [{"bus": 1}, {"bus": 2}, {"bus": 3}]
    rows = build_examples(inputs, vocab, variations=2, seed=0)
    assert len(rows) == 6 and all(check_sentence(r["output"], parse_input(r["input"]), vocab).passed for r in rows)
    assert {"1 bus", "2 buses", "3 buses"} <= {w for r in rows for w in ("1 bus", "2 buses", "3 buses") if w in r["output"]}
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no .json"):
        load_inputs(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        Vocabulary.load(tmp_path / "missing.json")


def test_heldout_set_is_disjoint_from_training_seeds():
    held = heldout_inputs(100)
    train = synthetic_inputs(2000, VOCAB, seed=0)
    keys = {json.dumps(x, sort_keys=True) for x in train}
    assert sum(json.dumps(x, sort_keys=True) in keys for x in held) < 10


def test_cli_and_http_input_shapes(tmp_path):
    one = {"detections": [det("plastic")], "scene": GRASS}
    assert from_json(one) == one and from_json({"inputs": [one, one]}) == [one, one]
    with pytest.raises(InputError):
        from_json({"inputs": one})
    (tmp_path / "x.jsonl").write_text(json.dumps({"input": one, "output": "s"}) + "\n" + json.dumps(one) + "\n")
    assert read_inputs(str(tmp_path / "x.jsonl")) == [one, one]
    assert read_inputs(json.dumps([one])) == [one]
    with pytest.raises(InputError, match="neither a file nor valid JSON"):
        read_inputs("{oops")


def test_package_adapter_ships_fp16_without_local_paths(tmp_path):
    import numpy as np
    from safetensors.numpy import load_file, save_file
    from edgesight.training.descriptions import package_adapter
    src = tmp_path / "run"
    src.mkdir()
    w = {"base_model.model.layers.0.q_proj.lora_A.weight": np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)}
    save_file(w, str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text(json.dumps({"r": 4, "base_model_name_or_path": "/home/me/base"}))
    (src / "recipe.json").write_text(json.dumps({"steps": 3, "chat_template": True}))
    dst = package_adapter(src, tmp_path / "describe-x")
    got = load_file(str(dst / "adapter_model.safetensors"))
    key = next(iter(w))
    assert got[key].dtype == np.float16 and np.allclose(got[key], w[key], atol=1e-3)
    assert "/home/me" not in (dst / "adapter_config.json").read_text()
    assert json.loads((dst / "recipe.json").read_text())["steps"] == 3
    assert Vocabulary.from_dict(json.loads((dst / "vocab.json").read_text())) == VOCAB
