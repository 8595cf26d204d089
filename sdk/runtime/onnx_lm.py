"""Language models over ONNX graphs in optimum's layout, run by the numpy generation loop
(edgesight.generation) on any session runtime (runtime/onnxruntime.py today). No torch.

    load_text_model(bundle, opener, prefix_cache=True) -> OnnxCausalLM | OnnxSeq2SeqLM
    # opener(path) -> a Session (runtime/__init__.py): the runtime decides threads and device

Text bundles (written by the export stage):
    kind "causal-lm": components "model" (model.onnx with KV-cache inputs/outputs, optimum layout:
        input_ids, attention_mask, [position_ids], past_key_values.N.key/value -> logits, present.N.key/value)
        and "tokenizer" (tokenizer.json).
    kind "seq2seq": components "encoder", then either "decoder" = decoder_model_merged.onnx (with
        use_cache_branch) or "decoder" + "decoder_with_past", and "tokenizer".
    manifest "tokens" (required):
        {"eos": [ids that end a sequence], "pad": id used for padding,
         "bos": id or null (informational: tokenizer.json's post-processor adds it),
         "decoder_start": id (seq2seq only: first decoder token)}
    manifest "context_length" (optional): the model's maximum sequence length (default 2048 / 512).
    manifest "max_input_tokens" (optional): prompts are truncated to this many tokens (special tokens
        included), as transformers' `tokenizer(text, max_length=n, truncation=True)` does.
    Tokenizing and decoding: edgesight.tokenizer (identical to transformers' decode).

Prefix KV cache (causal LM): the model keeps the KV cache of the last prompt it saw; the next call
reuses the longest common token prefix (a task's instruction prefix) and runs only the new tokens.
The cached prefix sits before the padding of each row ([prefix][pad][rest]); attention masks and
position ids make that layout compute the same values as [pad][prefix][rest].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import BackendError, BundleError, InputError
from ..generation import GenerationConfig, generate_ids
from ..tokenizer import TextTokenizer
from . import BaseTextModel, check_text


def load_text_model(bundle, opener, prefix_cache: bool = True, backend: str = "onnx"):
    if bundle.kind == "causal-lm":
        return OnnxCausalLM(bundle, opener, prefix_cache, backend=backend)
    if bundle.kind in ("seq2seq", "vision-encoder-decoder"):   # the latter: fed by an image encoder
        return OnnxSeq2SeqLM(bundle, opener, backend=backend)
    raise BackendError(f"{bundle.path}: ONNX text models are kinds 'causal-lm', 'seq2seq' and "
                       f"'vision-encoder-decoder', not {bundle.kind!r}")


class _TextModel(BaseTextModel):
    """Tokenizer, special tokens and the TextModel methods shared by both model kinds."""

    default_context = 2048
    supports_grammar = True   # GBNF or llguidance Lark, via llguidance over the bundle's tokenizer.json
    grammar_syntax = "lark"   # what a task's own grammar should be written in (edgesight.grammar: why)

    def __init__(self, bundle, backend: str = "onnx"):
        self.bundle, self.backend = bundle, backend
        self.tokenizer = TextTokenizer.from_file(bundle.file("tokenizer"))
        tokens = bundle.get("tokens")
        if not isinstance(tokens, dict) or not tokens.get("eos") or tokens.get("pad") is None:
            raise BundleError(f"{bundle.path}: manifest field 'tokens' must give 'eos' (list of ids) and 'pad' "
                              f"(got {tokens!r}); re-export the bundle")
        self.eos = [int(t) for t in tokens["eos"]]
        self.pad = int(tokens["pad"])
        self.tokens = tokens
        self._context = int(bundle.get("context_length") or self.default_context)
        if bundle.get("max_input_tokens"):   # longer inputs are cut, as the model's own tokenizer call did
            self.tokenizer.tokenizer.enable_truncation(int(bundle.get("max_input_tokens")))
        self._grammars = None   # edgesight.grammar.TokenGrammars, built on the first grammar

    def grammar(self, text: str | None, eos):
        """The generation loop's `grammar` argument for GBNF/Lark `text` (None: unconstrained)."""
        if not text:
            return None
        if not self.supports_grammar:
            raise BackendError(f"{self.bundle.path}: grammars constrain decoder-only models here (onnx causal-lm and "
                               "vlm bundles, gguf); drop `grammar` for this encoder-decoder model")
        if self._grammars is None:
            from pathlib import Path

            from ..grammar import TokenGrammars
            self._grammars = TokenGrammars(Path(self.bundle.file("tokenizer")).read_text(encoding="utf-8"))
        return lambda vocab_size: self._grammars.compile(text, vocab_size, list(eos))

    @property
    def context_length(self) -> int:
        return self._context

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(check_text(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def generate_ids(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[list[int]]]:
        """Token ids instead of text (tests compare these with transformers)."""
        self.check_prompts(prompts)
        ids = [self.encode(p) for p in prompts]
        for p, i in zip(prompts, ids):
            if not i:
                raise InputError(f"prompt {p!r} has no tokens; pass non-empty text")
            if self._prompt_budget(i) + config.max_new_tokens > self.context_length:
                raise InputError(f"prompt of {len(i)} tokens + max_new_tokens {config.max_new_tokens} exceeds "
                                 f"the model's context of {self.context_length} tokens; shorten the prompt")
        eos = config.eos_token_ids or self.eos
        return generate_ids(self, ids, config, eos_token_ids=eos, grammar=self.grammar(config.grammar, eos),
                            decoder_start_token_id=self.tokens.get("decoder_start") if self.is_seq2seq else None)

    def _prompt_budget(self, ids) -> int:
        return len(ids)


def _past_spec(session, prefix: str):
    """(names of the past inputs in order, (heads, head_dim), dtype) for inputs starting with `prefix`."""
    names = [name for name in session.inputs if name.startswith(prefix)]
    if not names:
        return [], (0, 0), np.float32
    shape, dtype = session.inputs[names[0]]
    return names, (int(shape[1]), int(shape[3])), dtype


class OnnxCausalLM(_TextModel):
    """Decoder-only model.onnx with KV cache; implements the generation loop's Decoder."""

    is_seq2seq = False

    def __init__(self, bundle, opener, prefix_cache=True, backend: str = "onnx"):
        super().__init__(bundle, backend)
        self.path = bundle.file("model")
        self.session = opener(self.path)
        self.past_names, (self.heads, self.head_dim), self.dtype = _past_spec(self.session, "past_key_values.")
        if not self.past_names:
            raise BundleError(f"{self.path}: model has no past_key_values inputs; export it with the "
                              "'text-generation-with-past' task")
        self.present_names = list(self.session.outputs)[1:]
        self.prefix_cache = prefix_cache
        self._cache: tuple[list[int], list[np.ndarray]] | None = None   # (prompt ids, its KV, 1 row)
        self.reused_tokens = 0     # prompt tokens the last prefill took from the cache (benchmarks, tests)

    def clear_cache(self) -> None:
        self._cache = None

    # -- Decoder protocol --
    def prefill(self, prompts: list[list[int]], image_features=None):
        n = len(prompts)
        cache = self._cache if self.prefix_cache else None   # one snapshot: other threads may replace it
        c = self.reused_tokens = _common_prefix(cache[0], prompts) if cache else 0
        rests = [p[c:] for p in prompts]
        width = max(map(len, rests))
        ids = np.full((n, width), self.pad, dtype=np.int64)
        new_mask = np.zeros((n, width), dtype=np.int64)
        for i, r in enumerate(rests):                  # left padding of the part after the prefix
            ids[i, width - len(r):] = r
            new_mask[i, width - len(r):] = 1
        if c:
            past = [np.repeat(kv[:, :, :c], n, axis=0) for kv in cache[1]]
        else:
            past = [np.zeros((n, self.heads, 0, self.head_dim), self.dtype) for _ in self.past_names]
        mask = np.concatenate([np.ones((n, c), np.int64), new_mask], axis=1)
        logits, state = self._forward(ids, mask, past, image_features)
        if self.prefix_cache:                          # keep row 0's KV without its padding columns
            keep = np.r_[0:c, c + width - len(rests[0]):c + width]
            self._cache = (prompts[0], [kv[:1, :, keep] for kv in state["past"]])
        return logits, state

    def step(self, tokens, state):
        mask = np.concatenate([state["mask"], np.ones((len(tokens), 1), np.int64)], axis=1)
        return self._forward(tokens.reshape(-1, 1).astype(np.int64), mask, state["past"])

    def select(self, state, rows):
        return {"mask": state["mask"][rows], "past": [kv[rows] for kv in state["past"]]}

    # -- internals --
    def _inputs(self, ids, image_features=None) -> dict:
        """The graph's token input (a VLM's decoder takes embeddings instead: runtime/onnx_vlm.py)."""
        return {"input_ids": ids}

    def _forward(self, ids, mask, past, image_features=None):
        pos = np.cumsum(mask, axis=1) - 1
        pos[mask == 0] = 1                             # as transformers: pad positions are masked anyway
        feeds = {**self._inputs(ids, image_features), "attention_mask": mask, "position_ids": pos[:, -ids.shape[1]:],
                 **dict(zip(self.past_names, past))}
        out = self.session.run(feeds)
        logits = np.asarray(out[0][:, -1, :], dtype=np.float32)
        return logits, {"mask": mask, "past": out[1:]}


class OnnxSeq2SeqLM(_TextModel):
    """Encoder + decoder (merged with use_cache_branch, or decoder + decoder_with_past)."""

    # no grammar: T5's SentencePiece (Metaspace) tokenizer is one llguidance 1.9 cannot read, and no task needs one
    supports_grammar, grammar_syntax = False, None
    is_seq2seq = True
    default_context = 512

    def __init__(self, bundle, opener, backend: str = "onnx"):
        super().__init__(bundle, backend)
        if self.tokens.get("decoder_start") is None:
            raise BundleError(f"{bundle.path}: seq2seq bundle lacks tokens.decoder_start; re-export the bundle")
        self.paths = {"encoder": bundle.file("encoder"), "decoder": bundle.file("decoder")}
        if bundle.has("decoder_with_past"):
            self.paths["decoder_with_past"] = bundle.file("decoder_with_past")
        self.sessions = {role: opener(p) for role, p in self.paths.items()}
        dec = self.sessions["decoder"]
        self.merged = "use_cache_branch" in dec.inputs
        spec_session = dec if self.merged else self.sessions.get("decoder_with_past")
        if spec_session is None:
            raise BundleError(f"{bundle.path}: decoder has no use_cache_branch and there is no "
                              "'decoder_with_past' component; export with 'text2text-generation-with-past'")
        self.past_names, (self.heads, self.head_dim), self.dtype = _past_spec(spec_session, "past_key_values.")

    def _prompt_budget(self, ids) -> int:
        return 1   # the prompt goes to the encoder; the decoder's context holds only new tokens

    def prefill(self, prompts):
        n, width = len(prompts), max(map(len, prompts))
        ids = np.full((n, width), self.pad, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for i, p in enumerate(prompts):                # right padding, as T5 tokenizers pad
            ids[i, :len(p)] = p
            mask[i, :len(p)] = 1
        hidden = self.sessions["encoder"].run({"input_ids": ids, "attention_mask": mask})[0]
        return self.from_encoder_output(hidden, mask).prefill([[int(self.tokens["decoder_start"])]] * n)

    def from_encoder_output(self, hidden: np.ndarray, mask: np.ndarray | None = None) -> "EncoderOutput":
        """A Decoder for the generation loop that starts from an encoder output computed elsewhere
        (e.g. an image encoder): `generate_ids(lm.from_encoder_output(h), [[start]], config, ...)`."""
        return EncoderOutput(self, hidden, mask)

    def step(self, tokens, state):
        return self._decode(tokens.reshape(-1, 1).astype(np.int64), state)

    def select(self, state, rows):
        past = None if state["past"] is None else [kv[rows] for kv in state["past"]]
        mask = None if state["mask"] is None else state["mask"][rows]
        return {"hidden": state["hidden"][rows], "mask": mask, "past": past}

    def _decode(self, ids, state):
        n = len(ids)
        feeds = {"input_ids": ids, "encoder_hidden_states": state["hidden"], "encoder_attention_mask": state["mask"]}
        first = state["past"] is None
        if self.merged:
            role = "decoder"
            feeds["use_cache_branch"] = np.array([not first])
            past = state["past"] or [np.zeros((n, self.heads, 0, self.head_dim), self.dtype) for _ in self.past_names]
        else:
            role = "decoder" if first else "decoder_with_past"
            past = state["past"] or []
        feeds.update(zip(self.past_names, past))
        session = self.sessions[role]
        out = session.run(feeds)
        names = list(session.outputs)
        presents = dict(zip(names[1:], out[1:]))
        # the cross-attention (".encoder.") half of the cache is fixed after the first step: merged
        # decoders output placeholders for it on the cache branch, decoder_with_past omits it
        old = state["past"] or [None] * len(self.past_names)
        new_past = [kv if (not first and ".encoder." in name) else presents.get("present" + name[len("past_key_values"):], kv)
                    for name, kv in zip(self.past_names, old)]
        logits = np.asarray(out[0][:, -1, :], dtype=np.float32)
        return logits, {"hidden": state["hidden"], "mask": state["mask"], "past": new_past}


class EncoderOutput:
    """Decoder protocol over a fixed encoder output: prefill(decoder_prompts) pairs row i of `hidden`
    with decoder prompt i (a single row is shared by all prompts). Decoder prompts have equal length."""

    def __init__(self, lm: OnnxSeq2SeqLM, hidden: np.ndarray, mask: np.ndarray | None = None):
        self.lm, self.hidden, self.mask = lm, hidden, mask
        self.step, self.select = lm.step, lm.select

    def prefill(self, prompts):
        ids = np.asarray(prompts, dtype=np.int64)
        rows = np.zeros(len(ids), dtype=np.int64) if len(self.hidden) == 1 else np.arange(len(ids))
        mask = None if self.mask is None else self.mask[rows]
        return self.lm._decode(ids, {"hidden": self.hidden[rows], "mask": mask, "past": None})


def _common_prefix(cached: list[int], prompts: list[list[int]]) -> int:
    """Tokens all prompts share with the cached prompt, leaving each prompt >= 1 token to run."""
    c = min(len(cached), min(len(p) for p in prompts) - 1)
    for p in prompts:
        i = 0
        while i < c and p[i] == cached[i]:
            i += 1
        c = i
    return c
