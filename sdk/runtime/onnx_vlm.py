"""A vision-language bundle in ONNX (kind "vlm", format "onnx"; export/vlm_onnx.py writes it), on any session
runtime, with the numpy generation loop. No torch, no transformers.

    vlm = OnnxVLM(bundle, opener)              # opener(path) -> Session (runtime/onnxruntime.py: load_vlm)
    vlm.generate(image, "What is shown in this image?")          # Generation(text, tokens, finish_reason)
    vlm.generate_ids(image, prompt, max_new_tokens=12)           # the answer's token ids (export validation)

Components: "vision" (pixel_values (tiles, 3, S, S) -> image_features (tiles, image_seq_len, hidden)), "embed"
(input_ids -> inputs_embeds), "model" (the decoder with KV cache, fed inputs_embeds: runtime/onnx_lm.py's
OnnxCausalLM runs it), "tokenizer". Manifest "vlm": preprocessing (edgesight.idefics3), prompt_template (the chat
template rendered around "<image>" and "{prompt}"), image_token_id, image_seq_len.

One call: the image is preprocessed and encoded, the prompt rendered and its "<image>" expanded to the tile
layout's tokens (as Idefics3Processor), the embeddings of those tokens replaced by the image features (as
Idefics3's inputs_merger), then greedy or seeded sampling, optionally under a grammar (GBNF or llguidance Lark:
edgesight.grammar). No prefix KV cache: the image tokens of two prompts have the same ids but not the same features.
"""
from __future__ import annotations

import numpy as np

from ..errors import BundleError, InputError
from ..generation import GenerationConfig, generate_ids
from ..idefics3 import Idefics3Preprocessing, expand_image
from ..images import load_image
from . import Generation, check_text
from .onnx_lm import OnnxCausalLM


class OnnxVLM(OnnxCausalLM):
    def __init__(self, bundle, opener, backend: str = "onnx"):
        if bundle.kind != "vlm":
            raise BundleError(f"{bundle.path}: bundle kind {bundle.kind!r} is not 'vlm'")
        super().__init__(bundle, opener, prefix_cache=False, backend=backend)
        if "inputs_embeds" not in self.session.inputs:
            raise BundleError(f"{self.path}: the VLM decoder takes no inputs_embeds; re-export the bundle")
        vlm = bundle.get("vlm") or {}
        try:
            self.image_token_id = int(vlm["image_token_id"])
            self.image_seq_len = int(vlm["image_seq_len"])
            self.template = str(vlm["prompt_template"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{bundle.path}: manifest 'vlm' lacks {exc}; re-export the bundle") from exc
        if self.template.count("{prompt}") != 1:
            raise BundleError(f"{bundle.path}: vlm.prompt_template must hold one '{{prompt}}'; re-export the bundle")
        self.preprocessing = Idefics3Preprocessing.from_dict(vlm.get("preprocessing"))
        self.vision = opener(bundle.file("vision"))
        self.embed = opener(bundle.file("embed"))
        self.max_new_tokens = int((bundle.get("generation") or {}).get("max_new_tokens", 48))

    # -- the image path --
    def encode_image(self, image) -> tuple[np.ndarray, int, int]:
        """(image features (tiles * image_seq_len, hidden), rows, cols) of any image edgesight accepts."""
        pixels, rows, cols = self.preprocessing(load_image(image))
        features = self.vision.run({"pixel_values": pixels})[0]
        return features.reshape(-1, features.shape[-1]), rows, cols

    def prompt_ids(self, prompt: str, rows: int, cols: int) -> list[int]:
        """The user turn (image + prompt) rendered by the chat template, image tokens expanded, as token ids."""
        head, _, tail = self.template.partition("{prompt}")
        return self.tokenizer.encode(expand_image(head, rows, cols, self.image_seq_len) + check_text(prompt) + tail)

    def _inputs(self, ids, image_features=None) -> dict:
        embeds = self.embed.run({"input_ids": ids})[0]
        if image_features is not None:
            at = np.nonzero(ids == self.image_token_id)
            if len(at[0]) != len(image_features):
                raise InputError(f"the prompt holds {len(at[0])} image tokens for {len(image_features)} image features; "
                                 "a prompt must not contain '<image>' itself")
            embeds[at] = image_features.astype(embeds.dtype, copy=False)
        return {"inputs_embeds": embeds}

    def generate_ids(self, image, prompt: str, *, max_new_tokens: int | None = None, temperature: float = 0.0,
                     top_p: float = 1.0, top_k: int = 0, seed: int | None = None, grammar: str | None = None) -> list[int]:
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, not {type(prompt).__name__}")
        features, rows, cols = self.encode_image(image)
        ids = self.prompt_ids(prompt, rows, cols)
        n = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if len(ids) + n > self.context_length:
            raise InputError(f"prompt of {len(ids)} tokens (image included) + max_new_tokens {n} exceeds the model's "
                             f"context of {self.context_length} tokens; shorten the prompt or use a smaller image setting")
        config = GenerationConfig(max_new_tokens=n, do_sample=temperature > 0, temperature=temperature or 1.0,
                                  top_p=top_p, top_k=top_k, seed=seed if seed is not None else 0)
        return generate_ids(_WithImage(self, features), [ids], config, eos_token_ids=self.eos,
                            grammar=self.grammar(grammar, self.eos))[0][0]

    def generate(self, image, prompt: str, **kw) -> Generation:
        ids = self.generate_ids(image, prompt, **kw)
        stop = bool(ids) and ids[-1] in self.eos
        return Generation(self.decode(ids), len(ids), "stop" if stop else "length")


class _WithImage:
    """The generation loop's Decoder for one image: the prefill splices the image features in."""

    def __init__(self, lm: OnnxVLM, features: np.ndarray):
        self.lm, self.features = lm, features
        self.step, self.select = lm.step, lm.select

    def prefill(self, prompts):
        if len(prompts) != 1:
            raise InputError("one prompt per image")
        return self.lm.prefill(prompts, image_features=self.features)
