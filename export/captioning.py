"""Captioning export: BLIP with an exporter of our own (optimum-onnx has no BLIP), ViT+GPT2 through
optimum, and a CLIP tag scorer through optimum, into one validated `caption` bundle.

BLIP is split so that a request pays for the image once:
  encoder.onnx  pixel_values -> cross_key_i / cross_value_i for every decoder layer (the vision
                transformer plus each layer's cross-attention K/V projection, run once per image)
  decoder.onnx  input_ids, past_key_i / past_value_i (self-attention cache), cross K/V (batch 1 is
                broadcast over beams and samples) -> logits of the last position, present K/V
The decoder is written out explicitly from the BLIP modules' weights (post-LN BERT layers with
cross-attention), so the cache I/O is plain tensors; validation against
BlipForConditionalGeneration.generate() in the same run catches any drift.

CLIP is exported by optimum (zero-shot-image-classification) and cut into an image graph and a text
graph, and the tag vocabulary's text embeddings are computed once at export (tag_embeds.npy), so a
request encodes only the image (plus any word not in the vocabulary, cached by the SDK).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from edgesight.bundle import Bundle, BundleWriter
from edgesight.errors import ExportError
from edgesight.progress import bar

PRECISIONS = ("fp32", "int8", "int4")  # int4: weight-only MatMulNBits decoder, int8 encoders
OPSET = 17
# A neutral vocabulary of common caption words; the SDK adds caption words that are missing.
DEFAULT_TAG_VOCAB = (
    "man woman person people child boy girl dog cat bird horse animal car truck bus train bicycle "
    "motorcycle boat airplane street road city building house room kitchen table chair bed food "
    "pizza plate cup coffee water beach sea sky tree grass field mountain snow rocket flower "
    "phone computer book window door sign clock ball game sport player").split()


# ---------------------------------------------------------------- BLIP graphs (torch, export time only)
def _blip_modules():
    import torch

    class Encoder(torch.nn.Module):
        """pixel_values -> per-layer cross-attention K/V (B, heads, patches, head_dim)."""

        def __init__(self, blip):
            super().__init__()
            self.vision = blip.vision_model
            self.cross = torch.nn.ModuleList(layer.crossattention.self for layer in blip.text_decoder.bert.encoder.layer)

        def forward(self, pixel_values):
            h = self.vision(pixel_values=pixel_values)[0]
            out = []
            for att in self.cross:
                for proj in (att.key, att.value):
                    out.append(proj(h).view(h.shape[0], h.shape[1], att.num_attention_heads,
                                            att.attention_head_size).transpose(1, 2))
            return tuple(out)

    class Decoder(torch.nn.Module):
        """One decoding step of BLIP's text decoder with explicit self-attention cache tensors."""

        def __init__(self, blip):
            super().__init__()
            bert = blip.text_decoder.bert
            self.emb, self.layers, self.head = bert.embeddings, bert.encoder.layer, blip.text_decoder.cls

        @staticmethod
        def _heads(x, att):
            return x.view(x.shape[0], x.shape[1], att.num_attention_heads, att.attention_head_size).transpose(1, 2)

        @staticmethod
        def _attend(q, k, v, mask, att):
            scores = torch.matmul(q, k.transpose(-1, -2)) / (att.attention_head_size ** 0.5)
            if mask is not None:
                scores = scores + mask
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
            return ctx.reshape(ctx.shape[0], ctx.shape[1], att.all_head_size)

        def forward(self, input_ids, *caches):
            n = len(self.layers)
            past, cross = caches[:2 * n], caches[2 * n:]
            past_len, steps = past[0].shape[2], input_ids.shape[1]
            positions = torch.arange(steps, dtype=torch.long).unsqueeze(0) + past_len
            h = self.emb.LayerNorm(self.emb.word_embeddings(input_ids) + self.emb.position_embeddings(positions))
            # causal mask over [past | new]: query t sees keys up to past_len + t
            keys = torch.arange(steps, dtype=torch.long).unsqueeze(0) + past_len  # (1, T)
            allowed = torch.arange(past_len + steps, dtype=torch.long).unsqueeze(0) <= keys.transpose(0, 1)
            mask = (~allowed).to(h.dtype) * torch.finfo(h.dtype).min
            present = []
            for i, layer in enumerate(self.layers):
                sa, so = layer.attention.self, layer.attention.output
                k = torch.cat([past[2 * i], self._heads(sa.key(h), sa)], dim=2)
                v = torch.cat([past[2 * i + 1], self._heads(sa.value(h), sa)], dim=2)
                present += [k, v]
                a = so.LayerNorm(so.dense(self._attend(self._heads(sa.query(h), sa), k, v, mask, sa)) + h)
                ca, co = layer.crossattention.self, layer.crossattention.output
                c = co.LayerNorm(co.dense(self._attend(self._heads(ca.query(a), ca), cross[2 * i], cross[2 * i + 1], None, ca)) + a)
                h = layer.output.LayerNorm(layer.output.dense(layer.intermediate(c)) + c)
            logits = self.head(h[:, -1:, :])[:, 0, :]
            return (logits, *present)

    return Encoder, Decoder


def _export_blip_graphs(blip, out_dir: Path, image_size: int) -> dict:
    import torch

    Encoder, Decoder = _blip_modules()
    tcfg = blip.config.text_config
    n, heads = tcfg.num_hidden_layers, tcfg.num_attention_heads
    head_dim = tcfg.hidden_size // heads
    cross_names = [f"cross_{kv}_{i}" for i in range(n) for kv in ("key", "value")]
    past_names = [f"past_{kv}_{i}" for i in range(n) for kv in ("key", "value")]
    present_names = [f"present_{kv}_{i}" for i in range(n) for kv in ("key", "value")]
    pixels = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        enc = Encoder(blip).eval()
        cross = enc(pixels)
        torch.onnx.export(enc, (pixels,), str(out_dir / "encoder.onnx"), input_names=["pixel_values"],
                          output_names=cross_names, opset_version=OPSET, dynamo=False,
                          dynamic_axes={"pixel_values": {0: "batch"}, **{c: {0: "batch"} for c in cross_names}})
        ids = torch.tensor([[tcfg.bos_token_id, 5], [tcfg.bos_token_id, 6]])
        past = [torch.zeros(2, heads, 3, head_dim) for _ in past_names]
        axes = {"input_ids": {0: "batch", 1: "steps"}, "logits": {0: "batch"},
                **{p: {0: "batch", 2: "past"} for p in past_names},
                **{p: {0: "batch", 2: "total"} for p in present_names},
                **{c: {0: "image_batch"} for c in cross_names}}
        torch.onnx.export(Decoder(blip).eval(), (ids, *past, *cross), str(out_dir / "decoder.onnx"),
                          input_names=["input_ids", *past_names, *cross_names], output_names=["logits", *present_names],
                          opset_version=OPSET, dynamo=False, dynamic_axes=axes)
    return {"num_layers": n, "num_heads": heads, "head_dim": head_dim, "bos_token_id": tcfg.bos_token_id,
            "eos_token_id": tcfg.sep_token_id, "pad_token_id": tcfg.pad_token_id, "vocab_size": tcfg.vocab_size}


# ---------------------------------------------------------------- quantization
def quantize(src: Path, dst: Path, scheme: str) -> Path:
    """int8: dynamic int8 (encoders, single-pass graphs); int4: weight-only MatMulNBits (decoders:
    TOOLCHAIN.md found dynamic int8 slower for 1-row decoding; with beams + samples batched per token
    both are measured in docs/captioning.md). The shared quantizers of edgesight.export.onnx do the work."""
    from edgesight.export.onnx import quantize_int4, quantize_int8

    if scheme not in ("int8", "int4"):
        raise ExportError(f"unknown quantization scheme {scheme!r}; use int8 or int4")
    (quantize_int8 if scheme == "int8" else quantize_int4)(src, dst)
    return dst


# ---------------------------------------------------------------- CLIP (optimum) split into image / text graphs
def _export_clip(clip_dir: Path, work: Path, vocab: list[str]) -> dict:
    import onnx
    from onnx.utils import Extractor
    from optimum.exporters.onnx import main_export
    from transformers import CLIPModel

    full = work / "clip_full"
    main_export(model_name_or_path=str(clip_dir), output=str(full), task="zero-shot-image-classification",
                opset=OPSET, do_validation=False, no_post_process=True)
    ex = Extractor(onnx.load(str(full / "model.onnx")))
    onnx.save(ex.extract_model(["pixel_values"], ["image_embeds"]), str(work / "clip_image.onnx"))
    onnx.save(ex.extract_model(["input_ids", "attention_mask"], ["text_embeds"]), str(work / "clip_text.onnx"))
    logit_scale = float(CLIPModel.from_pretrained(str(clip_dir)).logit_scale.exp().item())
    from edgesight.runtime import open_graph
    from edgesight.tasks.captioning import clip_text_embeddings

    embeds = clip_text_embeddings(open_graph(work / "clip_text.onnx", threads=1), _tokenizer(full), vocab)
    np.save(work / "tag_embeds.npy", embeds.astype(np.float32), allow_pickle=False)
    return {"logit_scale": logit_scale, "dir": full}


def _tokenizer(hf_dir: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(hf_dir / "tokenizer.json"))


def _processor_settings(proc) -> dict:
    size = proc.size
    return {"size": size, "crop_size": getattr(proc, "crop_size", None), "do_center_crop": bool(getattr(proc, "do_center_crop", False)),
            "resample": int(proc.resample), "rescale_factor": float(proc.rescale_factor),
            "mean": list(map(float, proc.image_mean)), "std": list(map(float, proc.image_std))}


SCHEMES = {"fp32": (None, None), "int8": ("int8", "int8"), "int4": ("int8", "int4")}  # (encoder, decoder)
GENERATION = {"beam": {"num_beams": 3}, "sample": {"do_sample": True, "top_p": 0.9, "top_k": 0, "num_return_sequences": 5, "seed": 0}}


def _add_graphs(w: BundleWriter, tmp: Path, files: dict, precision: str) -> None:
    """Quantize per role (encoders dynamic int8, decoders int8 or int4 weight-only) and add to the bundle."""
    enc_scheme, dec_scheme = SCHEMES[precision]
    for role, name in files.items():
        src, scheme = tmp / name, enc_scheme if role in ("encoder", "clip_image") else dec_scheme
        if scheme:
            src = quantize(src, tmp / f"{role}.{scheme}.onnx", scheme)
        w.add_file(src, f"{role}.onnx", role=role)


def _add_clip(w: BundleWriter, clip_dir, tmp: Path, vocab: list[str], precision: str) -> None:
    from transformers import CLIPProcessor

    clip = _export_clip(Path(clip_dir), tmp, vocab)
    for name in ("clip_image", "clip_text"):
        src = tmp / f"{name}.onnx"
        if precision != "fp32" and name == "clip_image":   # one pass per request: dynamic int8 pays off
            src = quantize(src, tmp / f"{name}.int8.onnx", "int8")
        w.add_file(src, f"{name}.onnx", role=name)
    w.add_file(clip["dir"] / "tokenizer.json", "clip_tokenizer.json", role="clip_tokenizer")
    w.add_file(tmp / "tag_embeds.npy", "tag_embeds.npy", role="tag_embeds")
    w.add_json(vocab, "tag_vocab.json", role="tag_vocab")
    w.manifest["clip"] = {"logit_scale": clip["logit_scale"],
                          "preprocessing": _processor_settings(CLIPProcessor.from_pretrained(str(clip_dir)).image_processor)}


def _export(kind: str, model_dir, out, write_graphs, reference, *, clip_dir, precision, tag_vocab, validation_images,
            max_new_tokens, threads, progress, strict) -> Bundle:
    """The flow both exporters share: graphs -> quantize -> CLIP -> validate against `reference(img, beams)`."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} unknown; choose one of {', '.join(PRECISIONS)}")
    t0 = time.perf_counter()
    vocab = list(dict.fromkeys(tag_vocab or DEFAULT_TAG_VOCAB))
    with tempfile.TemporaryDirectory(prefix=f"es-{kind}-") as tmp, \
            BundleWriter(out, task="caption", format="onnx", precision=precision, kind=kind) as w:
        tmp = Path(tmp)
        pbar = bar(total=4, desc=f"export {kind} {precision}", progress=progress)
        _add_graphs(w, tmp, write_graphs(w, tmp), precision)
        pbar.update(2)
        w.manifest["generation"] = {k: v | {"max_new_tokens": max_new_tokens} for k, v in GENERATION.items()}
        if clip_dir is not None:
            _add_clip(w, clip_dir, tmp, vocab, precision)
        pbar.update()
        # Validate in the same run: the bundle as the SDK will load it vs transformers' generate().
        w.manifest["fidelity"] = validate(Bundle(w.dir, w.manifest | {"files": {}}), reference, validation_images,
                                          max_new_tokens, threads, strict=precision == "fp32" if strict is None else strict)
        pbar.update()
        pbar.close()
        w.manifest["export_seconds"] = round(time.perf_counter() - t0, 1)
    return Bundle.load(out)


def export_blip(model_dir, out, *, clip_dir=None, precision: str = "fp32", tag_vocab=None,
                validation_images=None, max_new_tokens: int = 20, threads: int = 1, progress=None,
                prompt: str = "", strict: bool | None = None) -> Bundle:
    """BLIP (HF directory) [+ CLIP directory] -> a validated caption bundle at `out`.

    precision: fp32 | int8 (all graphs dynamic int8) | int4 (decoder weight-only int4, encoders int8).
    fp32 must reproduce PyTorch's greedy and beam-3 captions exactly (else ExportError); quantized
    variants record their agreement in the manifest's `fidelity` (strict=False: record only, e.g. for
    random-weight benchmarks whose near-flat logits make argmax ties).
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model_dir = Path(model_dir)
    blip = BlipForConditionalGeneration.from_pretrained(str(model_dir)).eval()
    proc = BlipProcessor.from_pretrained(str(model_dir))

    def write_graphs(w, tmp):
        meta = _export_blip_graphs(blip, tmp, blip.config.vision_config.image_size)
        proc.tokenizer.backend_tokenizer.save(str(w.dir / "tokenizer.json"))
        w.set_role("tokenizer", "tokenizer.json")
        prompt_ids = proc.tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
        w.manifest.update(blip=meta | {"prompt": prompt, "prompt_ids": prompt_ids},
                          preprocessing=_processor_settings(proc.image_processor),
                          provenance={"base": str(model_dir), "exporter": "edgesight.export.captioning (own BLIP graphs)",
                                      "params": sum(p.numel() for p in blip.parameters())})
        return {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}

    return _export("blip", model_dir, out, write_graphs, _hf_reference(blip, proc), clip_dir=clip_dir, precision=precision,
                   tag_vocab=tag_vocab, validation_images=validation_images, max_new_tokens=max_new_tokens,
                   threads=threads, progress=progress, strict=strict)


def export_vit_gpt2(model_dir, out, *, clip_dir=None, precision: str = "fp32", tag_vocab=None,
                    validation_images=None, max_new_tokens: int = 20, threads: int = 1, progress=None,
                    strict: bool | None = None) -> Bundle:
    """VisionEncoderDecoderModel (e.g. ViT+GPT2) via optimum's image-to-text-with-past -> caption bundle;
    same precisions and validation as export_blip. The SDK runs it on the ONNX backend's seq2seq decoder."""
    from optimum.exporters.onnx import main_export
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    model_dir = Path(model_dir)
    model = VisionEncoderDecoderModel.from_pretrained(str(model_dir)).eval()
    image_proc, tok = AutoImageProcessor.from_pretrained(str(model_dir)), AutoTokenizer.from_pretrained(str(model_dir))

    def write_graphs(w, tmp):
        main_export(model_name_or_path=str(model_dir), output=str(tmp), task="image-to-text-with-past", opset=OPSET,
                    do_validation=False)
        files = {"encoder": "encoder_model.onnx"}
        files |= ({"decoder": "decoder_model_merged.onnx"} if (tmp / "decoder_model_merged.onnx").is_file()
                  else {"decoder": "decoder_model.onnx", "decoder_with_past": "decoder_with_past_model.onnx"})
        w.add_file(tmp / "tokenizer.json", role="tokenizer")
        w.add_file(tmp / "tokenizer_config.json")
        gen = model.generation_config
        w.manifest.update(tokens={"eos": [int(gen.eos_token_id)], "pad": int(gen.pad_token_id if gen.pad_token_id is not None else gen.eos_token_id),
                                  "decoder_start": int(gen.decoder_start_token_id)},
                          preprocessing=_processor_settings(image_proc),
                          provenance={"base": str(model_dir), "exporter": "optimum image-to-text-with-past"})
        return files

    def reference_text(ids):
        return tok.decode(ids, skip_special_tokens=True)

    return _export("vision-encoder-decoder", model_dir, out, write_graphs, _hf_reference(model, image_proc, reference_text),
                   clip_dir=clip_dir, precision=precision, tag_vocab=tag_vocab, validation_images=validation_images,
                   max_new_tokens=max_new_tokens, threads=threads, progress=progress, strict=strict)


def requantize(src, out, precision: str, *, validation_images=None, threads: int = 1, progress=None) -> Bundle:
    """Derive an int8/int4 caption bundle from an fp32 one without tracing the model again (fp32 is
    validated against PyTorch at export); fidelity here = agreement with the fp32 bundle."""
    from edgesight.tasks.captioning import Captioner

    src = Bundle.load(src)
    if src.precision != "fp32" or src.task != "caption" or precision not in PRECISIONS[1:]:
        raise ExportError(f"requantize takes an fp32 caption bundle and int8/int4 (got {src.precision} {src.task}, {precision})")
    graphs = {r: rel for r, rel in src.manifest["components"].items() if r in ("encoder", "decoder", "decoder_with_past", "clip_image")}
    reference = Captioner(src, threads=threads)
    with tempfile.TemporaryDirectory(prefix="es-requant-") as tmp, \
            BundleWriter(out, task="caption", format="onnx", precision=precision, kind=src.kind) as w:
        tmp = Path(tmp)
        for role, rel in graphs.items():
            (tmp / rel).symlink_to(src.path / rel)
        _add_graphs(w, tmp, graphs, precision)
        for rel in src.manifest["files"]:
            if rel not in graphs.values():
                w.add_file(src.path / rel, rel)
        for role, rel in src.manifest["components"].items():
            if role not in graphs:
                w.set_role(role, rel)
        keep = {k: v for k, v in src.manifest.items() if k not in ("files", "components", "precision", "fidelity", "created", "kind", "task", "format", "schema")}
        w.manifest.update(keep, derived_from=str(src.path))
        w.manifest["fidelity"] = validate(Bundle(w.dir, w.manifest | {"files": {}}),
                                          lambda img, beams, n: reference.generate_captions(img, num_beams=beams, max_new_tokens=n)[0],
                                          validation_images, src.get("generation", {}).get("beam", {}).get("max_new_tokens", 20),
                                          threads, strict=False) | {"reference": "fp32 bundle"}
    return Bundle.load(out)


def sample_images() -> list:
    """Real photos shipped with scikit-image (CC0), used for validation."""
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee()]


def _hf_reference(model, proc, decode=None):
    """reference(img, beams) -> transformers' generate() caption, decoded as its processor does."""
    import torch

    decode = decode or (lambda ids: proc.decode(ids, skip_special_tokens=True))

    def reference(img, beams: int, max_new_tokens: int) -> str:
        with torch.no_grad():
            ids = model.generate(pixel_values=proc(images=img, return_tensors="pt").pixel_values, num_beams=beams,
                                 max_new_tokens=max_new_tokens, do_sample=False, min_length=0)
        return decode(ids[0])
    return reference


def validate(bundle: Bundle, reference, images, max_new_tokens: int, threads: int, strict: bool) -> dict:
    """Compare the bundle's greedy and beam-3 captions with the PyTorch reference on real photos."""
    from edgesight.tasks.captioning import Captioner

    images = images if images is not None else sample_images()
    cap = Captioner(bundle, threads=threads)
    report = {"images": len(images), "max_new_tokens": max_new_tokens}
    for mode, beams in (("greedy", 1), ("beam3", 3)):
        pairs = [[reference(img, beams, max_new_tokens), cap.generate_captions(img, num_beams=beams, max_new_tokens=max_new_tokens)[0]]
                 for img in images]
        same = sum(ref == got for ref, got in pairs)
        report[f"{mode}_agreement"] = same / len(images)
        if strict and same != len(images):
            raise ExportError(f"ONNX {mode} captions differ from PyTorch's: {pairs}; the export is wrong")
    return report
