"""Descriptions end to end on tiny real models built in the test run: LoRA training (peft) on the
builder's data, export through the export stage, the Describer on onnxruntime (seq2seq, the seed's
beam search) and llama.cpp (causal, chat template), the guard/fallback, CLI and eval hooks.
The tiny models are random: these tests check the pipeline and the guard, not sentence quality."""
import json
from pathlib import Path

import pytest

from edgesight import Describer
from edgesight.errors import InputError
from edgesight.tasks.descriptions import PROMPT, SAMPLE_INPUTS, check_sentence, parse_input, template_sentence

INPUTS = SAMPLE_INPUTS + [
    {"detections": [{"label": "glass", "confidence": 0.9}] * 3 + [{"label": "dog", "confidence": 0.6}], "scene": None},
    {"detections": [{"label": "paper", "confidence": 0.99}], "scene": {"class": "rocky", "confidence": 0.5}},
]


def train(base, kind, out):
    """`edgesight train describe` on a tiny base: a handful of real LoRA steps."""
    from edgesight.training import cli
    import argparse
    parser = argparse.ArgumentParser()
    cli.add_cli_arguments(parser)
    args = parser.parse_args(["describe", "--base", str(base), "--kind", kind, "--out", str(out), "--steps", "3",
                              "--batch-size", "4", "--n-inputs", "40", "--rank", "4", "--alpha", "8", "--threads", "1",
                              "--no-progress", "--save-every", "0"])
    return cli.main(args)


@pytest.fixture(scope="module")
def t5_bundle(tiny_t5_dir, tmp_path_factory):
    from edgesight.export import export
    work = tmp_path_factory.mktemp("describe-t5")
    result = train(tiny_t5_dir, "seq2seq", work / "run")
    report = export(tiny_t5_dir, result["adapter"], task="describe", out=work / "bundles", formats=["onnx"], threads=1,
                    progress=False)
    return Path(report.formats[0].bundle), Path(result["adapter"])


@pytest.fixture(scope="module")
def llama_bundles(tiny_llama_dir, tmp_path_factory):
    from edgesight.export import export
    work = tmp_path_factory.mktemp("describe-llama")
    result = train(tiny_llama_dir, "causal", work / "run")
    report = export(tiny_llama_dir, result["adapter"], task="describe", out=work / "bundles",
                    formats=["gguf-q8_0", "gguf-lora"], threads=1, progress=False)
    return {r.format: Path(r.bundle) for r in report.formats}, Path(result["adapter"])


def assert_faithful(results, inputs, vocab):
    """Every returned text passes every rule; a fallback is exactly the template sentence."""
    assert len(results) == len(inputs)
    for x, r in zip(inputs, results):
        facts = parse_input(x)
        assert check_sentence(r.text, facts, vocab).passed, (r, facts)
        assert r.fallback == (not all(r.checks.values()))
        if r.fallback:
            assert r.text == template_sentence(facts, vocab) and r.problems


def test_seq2seq_onnx_runs_the_seed_beam_search_with_guard(t5_bundle):
    bundle, adapter = t5_bundle
    manifest = json.loads((bundle / "edgesight.json").read_text())
    assert manifest["kind"] == "seq2seq" and manifest["generation"]["num_beams"] == 4
    assert manifest["generation"]["no_repeat_ngram_size"] == 2 and manifest["prompt"]["prefix"] == ""
    ds = Describer.from_pretrained(bundle, threads=1)
    results = ds(INPUTS)
    assert_faithful(results, INPUTS, ds.vocab)
    assert any(r.fallback for r in results), "a random tiny T5 cannot write faithful sentences"
    raw = ds(INPUTS[0], guard=False)
    assert raw.fallback is False and raw.text == results[0].generated
    # batch and one-at-a-time agree (the loop ignores padding)
    assert [ds(x).generated for x in INPUTS] == [r.generated for r in results]


def test_seq2seq_beam_output_matches_the_seed_pytorch_path(t5_bundle, tiny_t5_dir):
    """The ONNX numpy beam search writes what transformers + PeftModel write for the same prompt."""
    from edgesight.evaluation.descriptions import seed_path
    bundle, adapter = t5_bundle
    ds = Describer.from_pretrained(bundle, threads=1)
    ours = [r.generated for r in ds(INPUTS, guard=False)]
    theirs = seed_path(tiny_t5_dir, adapter, kind="seq2seq", threads=1)(INPUTS)
    assert ours == theirs and sum(len(o) > 1 for o in ours) >= 3, ours


def test_causal_gguf_merged_and_runtime_lora(llama_bundles):
    bundles, adapter = llama_bundles
    assert set(bundles) == {"gguf-q8_0", "gguf-lora"}
    for fmt, path in bundles.items():
        manifest = json.loads((path / "edgesight.json").read_text())
        prompt = manifest["prompt"]
        assert "<|im_start|>user\n" in prompt["prefix"] and prompt["suffix"].endswith("<|im_start|>assistant\n")
        assert manifest["generation"]["num_beams"] == 1 and manifest["generation"]["eos_token_ids"]
        ds = Describer.from_pretrained(path, threads=1)
        assert ds.prompt_template == prompt["prefix"] + PROMPT + prompt["suffix"]
        results = ds(INPUTS)
        assert_faithful(results, INPUTS, ds.vocab)
    lora = json.loads((bundles["gguf-lora"] / "edgesight.json").read_text())
    assert "lora" in lora["components"]


def test_options_and_bad_input_through_the_task(llama_bundles):
    ds = Describer.from_pretrained(llama_bundles[0]["gguf-q8_0"], threads=1, scene_threshold=0.4)
    r = ds(INPUTS[3])   # rocky at 0.5: mentioned with a 0.4 threshold
    assert check_sentence(r.text, parse_input(INPUTS[3], scene_threshold=0.4), ds.vocab).passed
    assert not r.fallback or "rock" in r.text or "stone" in r.text
    r = ds(INPUTS[2], min_confidence=0.7)   # the dog at 0.6 is dropped
    assert "dog" not in r.text
    with pytest.raises(InputError, match="confidence"):
        ds([INPUTS[0], {"detections": [{"label": "x", "confidence": 2}]}])
    with pytest.raises(InputError, match="min_confidence"):
        Describer.from_pretrained(llama_bundles[0]["gguf-q8_0"], min_confidence=float("nan"))


def test_cli_and_eval_hooks(llama_bundles, capsys, tmp_path):
    from edgesight import cli
    from edgesight.evaluation.descriptions import run_eval
    path = llama_bundles[0]["gguf-q8_0"]
    assert cli.main(["describe", "--model", str(path), "--threads", "1", "--json", json.dumps(INPUTS[0])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["text"] and "fallback" in out[0] and set(out[0]["checks"]) >= {"counts", "scene"}
    assert cli.main(["describe", "--model", str(path), "--threads", "1", '{"detections": 3}']) == 2
    assert "must be a list" in capsys.readouterr().err
    report = run_eval([str(path)], threads=1, n=12, latency_n=3)
    b = report["bundles"][0]
    assert report["inputs"] == 12 and b["n"] == 12 and b["pass_after_fallback"] == 1.0
    assert 0.0 <= b["pass_before_fallback"] <= 1.0 and b["fallback_rate"] == pytest.approx(1 - b["pass_before_fallback"])
    assert b["latency"]["n"] == 3 and b["latency"]["median_ms"] > 0
    quality_only = run_eval(str(path), threads=1, n=4, latency_n=0)
    assert quality_only["bundles"][0]["n"] == 4 and "latency" not in quality_only["bundles"][0]
    out = tmp_path / "eval.json"  # the CLI maps its options onto the same run_eval
    assert cli.main(["eval", "descriptions", "--model", str(path), "--threads", "1", "-n", "3", "--latency-n", "0",
                     "--json", str(out)]) == 0
    assert json.loads(out.read_text())["bundles"][0]["n"] == 3


@pytest.mark.defaults
def test_default_bundle_describes_the_samples_faithfully():
    from edgesight.defaults import default_bundle_dir
    if not (default_bundle_dir("describe") / "edgesight.json").is_file():
        pytest.skip("the default describe bundle is not built (edgesight build-defaults)")
    ds = Describer.from_pretrained(threads=1)
    results = ds(SAMPLE_INPUTS)
    assert_faithful(results, SAMPLE_INPUTS, ds.vocab)
    assert not any(r.fallback for r in results), [r.to_dict() for r in results]
    assert "2" in results[0].text and "1" in results[0].text
