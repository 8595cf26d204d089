"""The seeds' own models, brought as they are (issue 19), through the front door on tiny models built
in the test run: `edgesight export ...` -> `<Task>.from_pretrained(bundle)`.

- seed 000: a Mistral-architecture base (zephyr-7b-beta's layout) + a peft LoRA, exported for keywords
  with `--prompt seed-000` (the seed's Zephyr chat format, system instruction, greedy 128 tokens and
  its parsing): the bundles give the seed's `segment_objects_with_prompting` answer, token for token
  with transformers + PeftModel on fp32 (ONNX) and f16 (GGUF merged, GGUF base + LoRA); the GGUF
  bundles carry the llama.cpp state after the system instruction.
- seed 001: a fully fine-tuned T5 directory with its llm_config.json, exported for describe without
  an adapter: ONNX beam search equals transformers' generate() with the seed's settings.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesight import cli

pytest.importorskip("peft")

SEED_000 = json.loads((Path(__file__).resolve().parents[1] / "sdk" / "data" / "prompt_keywords_seed-000.json")
                      .read_text(encoding="utf-8"))
PROMPTS = ["Segment cats, dogs, and birds but ignore cars and chairs.",
           "Segment all animals visible in the image like horses and elephants but ignore the background",
           "Segment everything related to food but ignore drinks and containers."]


def run(*argv) -> int:
    return cli.main([str(a) for a in argv])


def manifest(bundle) -> dict:
    return json.loads((Path(bundle) / "edgesight.json").read_text(encoding="utf-8"))


# --- seed 000 -------------------------------------------------------------------------------------

def seed_000(prompt, base_model_name, lora_path, max_new_tokens=128):
    """segment_objects_with_prompting from seed 000, line for line (system text from the preset, which
    test_preset_is_the_seeds_text checks against the seed), returning the generated ids as well."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    system_instruction = SEED_000["system"]
    full_prompt = f"<|system|>\n{system_instruction}\n<|user|>\n{prompt}\n<|assistant|>\n"
    device = torch.device("cpu")
    base_model = AutoModelForCausalLM.from_pretrained(base_model_name, dtype=torch.float32, device_map={"": device})
    tokenizer = AutoTokenizer.from_pretrained(base_model_name)
    model = PeftModel.from_pretrained(base_model, lora_path)
    model.to(device)
    model.eval()
    inputs = tokenizer(full_prompt, return_tensors="pt").to(device)
    with torch.no_grad():
        outputs = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                                 do_sample=False, num_return_sequences=1)
    result = tokenizer.decode(outputs[0], skip_special_tokens=True)
    assistant_response = result.split("<|assistant|>")[-1].strip()
    lines = [line.strip() for line in assistant_response.splitlines() if line.strip()]
    if lines:
        object_line = lines[0]
        object_candidates = [obj.strip().capitalize() for obj in object_line.split(',') if obj.strip()]
        cleaned_objects = list(set(object_candidates))
    else:
        cleaned_objects = []
    new = outputs[0, inputs["input_ids"].shape[1]:].tolist()
    return cleaned_objects, [t for t in new if t != tokenizer.eos_token_id]


@pytest.fixture(scope="module")
def seed_000_chain(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from kit import tiny_lora, tiny_mistral

    work = tmp_path_factory.mktemp("seed-000")
    base = tiny_mistral(work / "zephyr", extra_text=SEED_000["system"].splitlines())
    prefix, suffix = SEED_000["template"].replace("{system}", SEED_000["system"]).split("{input}")
    lora = tiny_lora(base, work / "lora", prefix=prefix, suffix=suffix)
    assert run("export", "--base", base, "--adapter", lora, "--task", "keywords", "--prompt", "seed-000",
               "--formats", "onnx,onnx-int4,gguf-f16,gguf-q4_k_m,gguf-lora", "--out", work / "bundles", "--threads", 1,
               "--no-progress") == 0
    reference = {p: seed_000(p, base, lora) for p in PROMPTS}
    return work / "bundles", reference


def test_preset_is_the_seeds_text():
    """The shipped preset is seed 000's system instruction and chat format, character for character."""
    import ast
    import re
    import textwrap

    seed = next((Path(__file__).resolve().parents[2] / "shared" / "seeds").glob("000_*.txt"), None)
    if seed is None:
        pytest.skip("the seeds are not on this machine")
    src = seed.read_text(encoding="utf-8")
    block = re.search(r"system_instruction = \((.*?)\n\s*\)\n", src, re.S).group(1)
    assert ast.literal_eval("(" + textwrap.dedent(block) + "\n)") == SEED_000["system"]
    fmt = re.search(r'full_prompt = f"(.*?)"\n', src).group(1).encode().decode("unicode_escape")
    assert fmt.replace("{system_instruction}", "{system}").replace("{prompt}", "{input}") == SEED_000["template"]
    assert (SEED_000["generation"], SEED_000["parser"]) == ({"max_new_tokens": 128}, "seed-000")


@pytest.mark.parametrize("fmt", ["onnx", "gguf-f16", "gguf-lora"])
def test_seed_000_bundle_answers_as_the_seed_token_for_token(seed_000_chain, fmt):
    from edgesight import KeywordExtractor
    from edgesight.generation import GenerationConfig

    bundles, reference = seed_000_chain
    m = manifest(bundles / fmt)
    system = SEED_000["system"]
    assert m["parser"] == "seed-000" and m["generation"]["max_new_tokens"] == 128 and m["generation"]["num_beams"] == 1
    assert (m["prompt"]["prefix"], m["prompt"]["suffix"]) == (f"<|system|>\n{system}\n<|user|>\n", "\n<|assistant|>\n")
    kw = KeywordExtractor.from_pretrained(bundles / fmt, threads=1)
    model = kw._model.model
    for prompt, (seed_names, seed_ids) in reference.items():
        ids = model.generate_ids([kw._model.prefix + prompt + kw._model.suffix],
                                 GenerationConfig(max_new_tokens=128))[0][0]
        assert [t for t in ids if t not in model_eos(m)] == seed_ids, (fmt, prompt)
        names = kw(prompt)
        assert set(names) == set(seed_names) and len(names) == len(seed_names), (fmt, prompt, names, seed_names)
    # the comparison covered real answers (several tokens, lists), not an immediate eos
    assert sum(len(ids) for _, ids in reference.values()) > 8 and any(len(n) > 1 for n, _ in reference.values())


def model_eos(m) -> set[int]:
    eos = m["tokens"]["eos"]
    return {eos} if isinstance(eos, int) else set(eos)


@pytest.mark.parametrize("fmt", ["onnx-int4", "gguf-q4_k_m"])
def test_seed_000_quantized_bundles_from_the_issues_command_run(seed_000_chain, fmt):
    """The issue's formats (gguf-q4_k_m, onnx-int4) export for Mistral and answer through the seed's parser;
    quantized answers need not equal fp32's, their agreement is in the manifest."""
    from edgesight import KeywordExtractor

    bundles, reference = seed_000_chain
    m = manifest(bundles / fmt)
    assert m["parser"] == "seed-000" and m["fidelity"]["probes"] == 3 and m["fidelity"]["prompt_ids_match"]
    kw = KeywordExtractor.from_pretrained(bundles / fmt, threads=1)
    answers = kw(PROMPTS)
    assert all(isinstance(a, list) and all(n == n.strip().capitalize() for n in a) for a in answers)


def test_seed_000_parser_is_the_seeds():
    from edgesight.tasks.keywords import parse_seed_000

    assert parse_seed_000("dog, Cars ,dog\nPerson, tree") == ["Dog", "Cars"]
    assert parse_seed_000("\n\n  coffee table, COFFEE TABLE, \n") == ["Coffee table"]
    assert parse_seed_000("Cat<|assistant|>\nhorse, bird") == ["Horse", "Bird"]
    assert parse_seed_000("") == [] and parse_seed_000("   \n ") == [] and parse_seed_000(None) == []


def test_seed_000_gguf_bundles_restore_the_system_instruction_state(seed_000_chain):
    from edgesight import KeywordExtractor
    from edgesight.bundle import Bundle
    from edgesight.runtime import open_text_model

    bundles, reference = seed_000_chain
    for fmt in ("gguf-f16", "gguf-lora"):
        m = manifest(bundles / fmt)
        state = m["prefix_state"]
        assert m["components"]["prefix_state"] == "prefix_state.data" and "prefix_state.data" in m["files"]
        kw = KeywordExtractor.from_pretrained(bundles / fmt, threads=1)
        llm = kw._model.model
        assert llm.prefix_state_note == f"restored: {len(state['tokens'])} prefix tokens"
        assert len(state["tokens"]) > 400 and llm.llm.n_tokens == len(state["tokens"])
        assert llm.encode(kw._model.prefix)[:len(state["tokens"])] == state["tokens"]
        prompt = PROMPTS[0]
        assert set(kw(prompt)) == set(reference[prompt][0])
        # without the state (computed on the first call) the answer is the same
        fresh = open_text_model(Bundle.load(bundles / fmt), threads=1, prefix_state=False)
        assert fresh.prefix_state_note.startswith("not loaded") and fresh.llm.n_tokens == 0
    # a state from another llama-cpp-python version is skipped, not trusted
    b = Bundle.load(bundles / "gguf-f16")
    b.manifest["prefix_state"] = dict(b.manifest["prefix_state"], llama_cpp="0.0.1")
    other = open_text_model(b, threads=1)
    assert other.prefix_state_note.startswith("skipped: saved by llama-cpp-python 0.0.1") and other.llm.n_tokens == 0


def test_seed_000_tampered_state_is_refused(seed_000_chain, tmp_path):
    import shutil

    from edgesight import KeywordExtractor
    from edgesight.errors import IntegrityError

    bundles, _ = seed_000_chain
    copy = tmp_path / "b"
    shutil.copytree(bundles / "gguf-f16", copy)
    blob = bytearray((copy / "prefix_state.data").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "prefix_state.data").write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="prefix_state.data"):
        KeywordExtractor.from_pretrained(copy, threads=1)


def test_unknown_prompt_preset_is_an_export_error(tmp_path, capsys):
    assert run("export", "--base", tmp_path, "--task", "keywords", "--prompt", "seed-999", "--formats", "onnx",
               "--out", tmp_path / "out", "--no-progress") == 2
    assert "seed-000" in capsys.readouterr().err


# --- seed 001 -------------------------------------------------------------------------------------

PROMPT_TEMPLATE = """Describe the garbage detected based on this CV output:
{input}
Description:"""
CV_OUTPUTS = [
    {"detections": [{"label": "plastic", "confidence": 0.92}, {"label": "metal", "confidence": 0.75}],
     "scene": {"class": "grass", "confidence": 0.95}},
    {"detections": [], "scene": {"class": "sandy", "confidence": 0.91}},
    # over max_input_length (256 tokens): the seed's tokenizer call truncates it, so must the bundle
    {"detections": [{"label": lab, "confidence": 0.9} for lab in ["plastic", "glass", "metal", "paper"] * 12],
     "scene": {"class": "rocky", "confidence": 0.85}},
]


def seed_001(cv_output, model, tokenizer):
    """generate_description_llm from seed 001, line for line; also returns the generated ids."""
    import torch

    prompt = PROMPT_TEMPLATE.format(input=json.dumps(cv_output))
    inputs = tokenizer(prompt, return_tensors="pt", max_length=256, truncation=True)
    with torch.no_grad():
        outputs = model.generate(**inputs, max_length=128, num_beams=4, early_stopping=True, no_repeat_ngram_size=2)
    return tokenizer.decode(outputs[0], skip_special_tokens=True), outputs[0].tolist(), inputs["input_ids"].shape[1]


@pytest.fixture(scope="module")
def seed_001_chain(tiny_t5_dir, tmp_path_factory):
    import shutil

    from transformers import T5ForConditionalGeneration, T5Tokenizer

    work = tmp_path_factory.mktemp("seed-001")
    t5 = work / "description_llm"
    shutil.copytree(tiny_t5_dir, t5)
    config = {"model_path": str(t5), "model_type": "t5", "prompt_template": PROMPT_TEMPLATE,
              "max_input_length": 256, "max_output_length": 128, "num_beams": 4}   # the seed's llm_config.json
    (t5 / "llm_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    assert run("export", "--base", t5, "--task", "describe", "--formats", "onnx,onnx-int8", "--out", work / "bundles",
               "--threads", 1, "--no-progress") == 0
    model, tokenizer = T5ForConditionalGeneration.from_pretrained(t5).eval(), T5Tokenizer.from_pretrained(t5)
    return work / "bundles", [seed_001(x, model, tokenizer) for x in CV_OUTPUTS]


def test_seed_001_bundle_carries_the_seeds_prompt_and_decoding(seed_001_chain):
    bundles, _ = seed_001_chain
    m = manifest(bundles / "onnx")
    assert (m["kind"], m["provenance"]["adapter"]) == ("seq2seq", None)
    assert m["prompt"]["template"] == PROMPT_TEMPLATE and m["prompt"]["input"] == "json"
    g = m["generation"]
    assert (g["num_beams"], g["no_repeat_ngram_size"], g["early_stopping"], g["max_new_tokens"]) == (4, 2, True, 127)
    assert (m["max_input_tokens"], m["parser"]) == (256, "whole")


def test_seed_001_onnx_beam_search_equals_transformers(seed_001_chain):
    from edgesight import Describer

    bundles, reference = seed_001_chain
    assert reference[2][2] == 256   # the long input was truncated by the seed's own call
    ds = Describer.from_pretrained(bundles / "onnx", threads=1, guard=False)
    eos = set(manifest(bundles / "onnx")["tokens"]["eos"])
    for cv, (text, ids, _) in zip(CV_OUTPUTS, reference):
        prompt = PROMPT_TEMPLATE.replace("{input}", json.dumps(cv))
        ours = ds.model.generate_ids([prompt], ds.generation)[0][0]
        assert [t for t in ours if t not in eos] == [t for t in ids[1:] if t not in eos | {0}]
        assert ds(cv).text == text.strip()


def test_seed_001_guard_applies_as_for_the_default(seed_001_chain):
    from edgesight import Describer
    from edgesight.tasks.descriptions import Vocabulary, check_sentence, template_sentence

    bundles, reference = seed_001_chain
    for fmt in ("onnx", "onnx-int8"):
        ds = Describer.from_pretrained(bundles / fmt, threads=1)
        for cv in CV_OUTPUTS:
            d = ds(cv)
            facts = ds.facts(cv)
            report = check_sentence(d.generated, facts, Vocabulary.from_dict(None))
            assert d.fallback == (not report.passed)
            assert d.text == (template_sentence(facts, ds.vocab) if d.fallback else d.generated)
    assert ds(CV_OUTPUTS[1]).fallback   # a random model's sentence fails the rules: the template answers


# --- prompt objects (no model) --------------------------------------------------------------------

def test_prompt_objects_are_checked_and_expanded(tmp_path):
    from edgesight.errors import ExportError
    from edgesight.export.prompts import apply, from_llm_config

    spec = apply({"generation": {"max_new_tokens": 24}}, "keywords",
                 {"template": "<s>{system}|{input}|", "system": "S", "generation": {"num_beams": 2}}, None,
                 "causal-lm", ["a", {"b": 1}])
    assert spec["prompt"] == {"template": "<s>S|{input}|", "prefix": "<s>S|", "suffix": "|", "system": "S",
                             "input": "text"}
    assert spec["generation"] == {"max_new_tokens": 24, "num_beams": 2}
    assert spec["probes"] == ["<s>S|a|", '<s>S|{"b": 1}|']
    for bad, why in [({"template": "no hole"}, "exactly one"), ({"template": "{system}{input}"}, "no \"system\""),
                     ({"template": "{input}", "colour": 1}, "unknown key")]:
        with pytest.raises(ExportError, match=why):
            apply({}, "keywords", bad, None, "causal-lm", [])
    assert apply({"x": 1}, "keywords", {"prefix": "p", "suffix": "s"}, None, "causal-lm", []) == \
        {"x": 1, "prompt": {"prefix": "p", "suffix": "s"}}   # a plain prompt is stored as it was
    (tmp_path / "llm_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ExportError, match="llm_config.json"):
        from_llm_config(tmp_path, "seq2seq")
    (tmp_path / "llm_config.json").write_text(json.dumps({"prompt_template": "T {input}", "max_output_length": 64}))
    assert from_llm_config(tmp_path, "seq2seq")["generation"] == {"max_new_tokens": 63}
    assert from_llm_config(tmp_path, "causal-lm")["generation"] == {"max_new_tokens": 64}
