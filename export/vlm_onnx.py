"""ONNX export of a SmolVLM / Idefics3 model (issue 15): a bundle of kind "vlm", format "onnx", run by
edgesight.runtime.onnx_vlm (onnxruntime + the numpy generation loop; no torch at run time).

    vision.onnx   pixel_values (tiles, 3, S, S) -> image_features (tiles, image_seq_len, text hidden):
                  the vision tower with the patch positions it was pretrained with (export.vlm.load_vlm applies
                  exact_vision_positions; a full tile's positions are 0 .. n-1) + the pixel-shuffle connector
    embed.onnx    input_ids (batch, seq) -> inputs_embeds (batch, seq, hidden): the text model's embedding table
    decoder.onnx  inputs_embeds, attention_mask, position_ids, past_key_values.N.key/value -> logits of the last
                  position (batch, 1, vocab), present.N.key/value: optimum's KV-cache layout (runtime/onnx_lm.py)

The runtime splices the image features into the embeddings at the <image> tokens, as Idefics3's inputs_merger.
`export_vlm_onnx_bundle` validates what users run (the SDK on the bundle) against the merged torch model on
probe photos: greedy tokens of the whole image path (preprocessing, prompt, vision, decoder) must be identical
for fp32; int8 (dynamic, MatMulInteger in vision + decoder) and int8-vision (the vision graph only) record their
agreement.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from edgesight.errors import ExportError

from .vlm import check_vlm_dir, load_vlm

ONNX_PRECISIONS = ("fp32", "int8", "int8-vision")
# the graphs each precision quantizes (dynamic int8, MatMulInteger): "int8-vision" keeps the decoder fp32, so the
# text is generated at full precision while the image encoder (most of an answer's time) runs in int8
QUANTIZED = {"int8": ("vision", "model"), "int8-vision": ("vision",)}
OPSET = 17
GRAPHS = {"vision": "vision.onnx", "embed": "embed.onnx", "model": "decoder.onnx"}


def _modules(model):
    """The three graphs as torch modules over `model` (an Idefics3ForConditionalGeneration from load_vlm)."""
    import torch

    class Vision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision, self.connector = model.model.vision_model, model.model.connector

        def forward(self, pixel_values):
            emb = self.vision.embeddings
            x = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
            # a full tile: patch i sits at position i (exact_vision_positions; every tile is S x S)
            x = x + emb.position_embedding.weight[None, : x.shape[1]]
            x = self.vision.encoder(inputs_embeds=x).last_hidden_state
            return self.connector(self.vision.post_layernorm(x))

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = model.model.text_model.embed_tokens

        def forward(self, input_ids):
            return self.table(input_ids)

    class Past:
        """The KV cache the Llama layers update: the graph's past inputs, the new keys/values concatenated."""

        def __init__(self, kv):
            self.kv = kv

        def update(self, key, value, layer_idx, cache_kwargs=None):
            k = torch.cat([self.kv[layer_idx][0], key], dim=2)
            v = torch.cat([self.kv[layer_idx][1], value], dim=2)
            self.kv[layer_idx] = (k, v)
            return k, v

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm, self.head = model.model.text_model, model.lm_head

        def forward(self, inputs_embeds, attention_mask, position_ids, *past):
            n = inputs_embeds.shape[1]
            keys = torch.cumsum(torch.ones_like(attention_mask), dim=1) - 1          # cache index of every key
            queries = keys[:, -n:]                                                    # ... of the new tokens
            allowed = (keys[:, None, None, :] <= queries[:, None, :, None]) & attention_mask[:, None, None, :].bool()
            mask = torch.where(allowed, torch.zeros((), dtype=inputs_embeds.dtype),
                               torch.full((), torch.finfo(inputs_embeds.dtype).min, dtype=inputs_embeds.dtype))
            cache = Past([(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)])
            h = self.lm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                        past_key_values=cache, cache_position=position_ids[0], use_cache=True).last_hidden_state
            logits = self.head(h[:, -1:, :])
            return (logits, *[t for kv in cache.kv for t in kv])

    return Vision().eval(), Embed().eval(), Decoder().eval()


def export_graphs(model_dir, out_dir) -> dict:
    """vision.onnx, embed.onnx, decoder.onnx (fp32) of the model in `model_dir`, written into `out_dir`.
    Returns {role: path}."""
    import warnings

    import torch

    cfg = check_vlm_dir(model_dir)
    model = load_vlm(model_dir, attn_implementation="eager").eval()
    tc, vc = model.config.text_config, model.config.vision_config
    layers, kv_heads = tc.num_hidden_layers, tc.num_key_value_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    vision, embed, decoder = _modules(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {role: out_dir / name for role, name in GRAPHS.items()}
    past_names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    b, n, p = 2, 3, 4   # dummy batch, new tokens, past tokens: none of them 1, so no size is baked in
    common = dict(opset_version=OPSET, do_constant_folding=True, dynamo=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tracer warnings on Python ints from shapes (checked by validation)
        pix = torch.randn(2, 3, vc.image_size, vc.image_size)
        torch.onnx.export(vision, (pix,), str(paths["vision"]), input_names=["pixel_values"],
                          output_names=["image_features"],
                          dynamic_axes={"pixel_values": {0: "tiles"}, "image_features": {0: "tiles"}}, **common)
        torch.onnx.export(embed, (torch.zeros(b, n, dtype=torch.long),), str(paths["embed"]), input_names=["input_ids"],
                          output_names=["inputs_embeds"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "inputs_embeds": {0: "batch", 1: "seq"}},
                          **common)
        past = [torch.randn(b, kv_heads, p, head_dim) for _ in past_names]
        mask = torch.ones(b, p + n, dtype=torch.long)
        pos = torch.arange(p, p + n)[None].repeat(b, 1)
        axes = {"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
                "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"},
                **{k: {0: "batch", 2: "past"} for k in past_names}, **{k: {0: "batch", 2: "total"} for k in present_names}}
        torch.onnx.export(decoder, (torch.randn(b, n, tc.hidden_size), mask, pos, *past), str(paths["model"]),
                          input_names=["inputs_embeds", "attention_mask", "position_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes, **common)
    del cfg
    return paths


def quantize_graphs(src: dict, out_dir, roles=QUANTIZED["int8"]) -> dict:
    """An int8 variant: dynamic int8 (MatMulInteger) of the graphs in `roles`, the others copied; the embedding
    table always stays fp32 (a lookup)."""
    from .onnx import quantize_int8

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = {role: out_dir / Path(p).name for role, p in src.items()}
    for role, path in src.items():
        if role in roles:
            quantize_int8(path, dst[role])
        else:
            shutil.copy(path, dst[role])
    return dst


def bundle_fields(model_dir) -> dict:
    """The manifest fields the ONNX runtime needs: tokens, context, and "vlm" (preprocessing, prompt template,
    image token and count per tile), all read from the HF directory (config, processor config, chat template)."""
    from edgesight.idefics3 import IMAGE_TOKEN, Idefics3Preprocessing
    from transformers import AutoTokenizer

    from .onnx import special_tokens
    from .vlm import pair_id, write_preprocessor_config

    model_dir = Path(model_dir)
    cfg = check_vlm_dir(model_dir)
    vc = cfg.get("vision_config", {})
    image_size = int(vc.get("image_size", 512))
    prep_path = model_dir / "preprocessor_config.json"
    if prep_path.is_file():
        prep = json.loads(prep_path.read_text(encoding="utf-8"))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            prep = json.loads(write_preprocessor_config(tmp, image_size).read_text())
    tok = AutoTokenizer.from_pretrained(model_dir)
    marker = "\x00PROMPT\x00"
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": marker}]}]
    template = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    if template.count(marker) != 1 or template.count(IMAGE_TOKEN) != 1:
        raise ExportError(f"{model_dir}: the chat template does not render one image and one prompt; cannot export")
    seq = (image_size // int(vc.get("patch_size", 16))) ** 2 // int(cfg.get("scale_factor", 2)) ** 2
    text_cfg = cfg.get("text_config", {})
    tokens = special_tokens(model_dir)
    if tok.eos_token_id is not None and tok.eos_token_id not in tokens["eos"]:
        tokens["eos"].append(tok.eos_token_id)
    return {"tokens": tokens,
            "context_length": int(min(text_cfg.get("max_position_embeddings") or 2048, 8192)),
            "vlm": {"architecture": cfg["architectures"][0], "pair": pair_id(model_dir), "image_size": image_size,
                    "image_token_id": int(tok.convert_tokens_to_ids(IMAGE_TOKEN)), "image_seq_len": seq,
                    "prompt_template": template.replace(marker, "{prompt}"),
                    "preprocessing": Idefics3Preprocessing.from_dict(prep).to_dict()}}


def torch_image_greedy(model, processor, tok, image, prompt: str, n: int) -> list[int]:
    """transformers' greedy answer tokens (fp32, load_vlm) to `prompt` about `image`, the prompt rendered by the
    chat template and expanded by the Idefics3 processor (special tokens as the tokenizer adds them)."""
    import torch

    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    head = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[head], images=[[image]], add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def image_fidelity(ref: list[list[int]], got: list[list[int]]) -> dict:
    """Greedy answers of a bundle against the merged torch model, one per probe photo."""
    prefix = [next((i for i, (a, b) in enumerate(zip(r, g)) if a != b), min(len(r), len(g))) for r, g in zip(ref, got)]
    same = sum(a == b for r, g in zip(ref, got) for a, b in zip(r, g))
    return {"probe": "image + seed question, greedy, vs transformers fp32 (load_vlm)", "probes": len(ref),
            "exact_match": all(r == g for r, g in zip(ref, got)),
            "answers_identical": round(sum(r == g for r, g in zip(ref, got)) / max(len(ref), 1), 4),
            "mean_agreed_prefix": round(sum(prefix) / max(len(prefix), 1), 2),
            "token_agreement": round(same / max(sum(map(len, ref)), 1), 4)}


def export_vlm_onnx_bundles(model_dir, out: dict, *, task: str = "products", images=None, prompt: str | None = None,
                            probe_tokens: int = 12, max_new_tokens: int = 48, threads: int = 1,
                            provenance: dict | None = None, exact: tuple = ("fp32",)) -> dict:
    """Bundles of kind "vlm", format "onnx": `out` maps a precision ("fp32" | "int8") to its bundle directory.
    Each bundle is loaded by the SDK (edgesight.runtime.open_vlm) and its greedy answers on `images` (default:
    the export's sample photos) compared with the merged torch model; a precision in `exact` that differs gets no
    bundle: ExportError after the other precisions are made (`.made`: those, `.failed`: {precision: message}).
    Returns {precision: Bundle}."""
    from edgesight.bundle import Bundle, BundleWriter
    from edgesight.runtime import open_vlm
    from edgesight.tasks.vlm import SEED_PROMPT

    from .captioning import sample_images
    from .vlm import load_processor

    bad = [p for p in out if p not in ONNX_PRECISIONS]
    if bad:
        raise ExportError(f"VLM ONNX precision(s) {', '.join(bad)} not one of {', '.join(ONNX_PRECISIONS)}")
    model_dir = Path(model_dir)
    prompt = prompt or SEED_PROMPT
    fields = bundle_fields(model_dir)
    fields["generation"] = {"max_new_tokens": max_new_tokens}
    fields["provenance"] = provenance or {"source": str(model_dir)}
    from PIL import Image

    images = [Image.fromarray(a) if not isinstance(a, Image.Image) else a for a in (images or sample_images())]
    model = load_vlm(model_dir).eval()
    processor, tok = load_processor(model_dir)
    ref = [torch_image_greedy(model, processor, tok, im, prompt, probe_tokens) for im in images]
    del model
    made, failed = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgesight-vlm-onnx-") as tmp:
        start = time.perf_counter()
        graphs = {"fp32": export_graphs(model_dir, Path(tmp) / "fp32")}
        seconds = {"fp32": round(time.perf_counter() - start, 2)}
        for precision in (p for p in out if p in QUANTIZED):
            start = time.perf_counter()
            graphs[precision] = quantize_graphs(graphs["fp32"], Path(tmp) / precision, QUANTIZED[precision])
            seconds[precision] = round(time.perf_counter() - start, 2)
        for precision, dest in out.items():
            w = BundleWriter(dest, task=task, format="onnx", precision=precision, kind="vlm", **json.loads(json.dumps(fields)))
            try:
                for role, path in graphs[precision].items():
                    w.add_file(path, Path(path).name, role=role)
                w.add_file(model_dir / "tokenizer.json", "tokenizer.json", role="tokenizer")
                vlm = open_vlm(Bundle(w.dir, w.manifest), threads=threads)
                got = [vlm.generate_ids(im, prompt, max_new_tokens=probe_tokens) for im in images]
                del vlm
            except BaseException:
                w.abort()
                raise
            fid = image_fidelity(ref, got) | {"export_seconds": seconds[precision]}
            if precision in exact and not fid["exact_match"]:
                w.abort()
                failed[precision] = (f"greedy answers differ from the merged torch model on {len(images)} probe photos "
                                     f"(agreed prefix {fid['mean_agreed_prefix']}/{probe_tokens})")
                continue
            w.manifest["fidelity"] = fid
            made[precision] = w.commit()
    if failed:
        err = ExportError("; ".join(f"onnx {p} VLM: {m}" for p, m in failed.items()))
        err.made, err.failed = made, failed
        raise err
    return made
