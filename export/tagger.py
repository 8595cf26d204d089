"""Token-classifier export (the extractive keywords family): encoder base + token-classification LoRA
(with its trained head) -> merged -> ONNX fp32 / int8, tag agreement with torch checked in the same run.

    export_tagger(base_dir, adapter_dir, out, precision="int8", probes=[...])
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from edgesight.errors import ExportError
from edgesight.progress import bar

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

    from edgesight.runtime import open_graph
    sess = open_graph(onnx_file, threads=threads)
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    out = []
    for p in prompts:
        ids = np.array([tok.encode(p).ids], np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        out.append(sess.run(feed)[0][0].argmax(-1).tolist())
    return out


def export_embedder(base_dir, work: Path, precision: str, threads: int, probes: list[str]) -> tuple[Path, dict]:
    """The base sentence encoder (e.g. all-MiniLM-L6-v2) as the bundle's "embedder" graph: vocabularies map
    free names onto labels by meaning with it (edgesight.lexicon.LabelMap). Checked against torch's
    mean-pooled embeddings on `probes`."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgesight.runtime import open_graph

    from .onnx import export_onnx, quantize_int8
    export_onnx(base_dir, work / "embedder", "feature-extraction")
    model = work / "embedder" / "model.onnx"
    if precision == "int8":
        quantize_int8(model, work / "embedder-int8.onnx", per_channel=True)
        model = work / "embedder-int8.onnx"
    tok, ref_model = AutoTokenizer.from_pretrained(base_dir), AutoModel.from_pretrained(base_dir).eval()
    sess = open_graph(model, threads=threads)
    cos = []
    for text in probes:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            ref = ref_model(**enc).last_hidden_state[0].mean(0).numpy()
        feeds = {k: v.numpy() for k, v in enc.items()}
        got = sess.run(feeds)[0][0].mean(0)
        cos.append(float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got)))
    return model, {"embedder_cosine_min": round(min(cos), 5), "embedder_precision": precision}


def export_tagger(base_dir, adapter_dir, out, *, precision: str = "int8", threads: int = 1,
                  progress: bool | None = None, max_length: int = 256, probes: list[str] | None = None,
                  embedder=None):
    """Merge, export to ONNX (fp32, optionally int8), check tag agreement with torch, write a bundle.
    `embedder`: a sentence-encoder HF directory shipped as the "embedder" graph (see export_embedder)."""
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
        prompts = list(probes or CHECK_PROMPTS)
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
            if embedder is not None:
                emb, emb_fid = export_embedder(embedder, work, precision, threads, prompts)
                w.add_file(emb, "embedder.onnx", role="embedder")
                w.add_file(Path(embedder) / "tokenizer.json", "embedder_tokenizer.json", role="embedder_tokenizer")
                w.manifest["fidelity"].update(emb_fid)
            w.manifest["export_seconds"] = round(time.perf_counter() - start, 1)
        steps.update()
        steps.close()
    return Path(out)
