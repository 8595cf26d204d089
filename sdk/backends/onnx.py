"""ONNX backend: onnxruntime sessions + the numpy generation loop (edgesight.generation). No torch.

    load_text_model(bundle, threads, arena=True, prefix_cache=True) -> OnnxCausalLM | OnnxSeq2SeqLM
    open_session(path, threads, arena=True) -> onnxruntime.InferenceSession   (also for image models)

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
    A `tokenizer_config.json` next to tokenizer.json with clean_up_tokenization_spaces=true makes
    decode() apply transformers' clean-up, so strings equal transformers' decode().

Prefix KV cache (causal LM): the model keeps the KV cache of the last prompt it saw; the next call
reuses the longest common token prefix (a task's instruction prefix) and runs only the new tokens.
The cached prefix sits before the padding of each row ([prefix][pad][rest]); attention masks and
position ids make that layout compute the same values as [pad][prefix][rest].
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BackendError, BundleError, InputError
from . import BaseTextModel
from ..generation import GenerationConfig, generate_ids
from ..tasks.base import default_threads


def open_session(path, threads: int | None = None, arena: bool = True):
    """An onnxruntime CPU session with an explicit thread pool (onnxruntime would size it from the
    host's cores, ignoring cgroup limits). arena=False returns memory to the OS between calls."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = default_threads(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = bool(arena)
    so.log_severity_level = 3
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: ONNX file not found; re-export the bundle")
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise BundleError(f"{path}: onnxruntime cannot load this model ({type(exc).__name__}: "
                          f"{str(exc).strip()[:300]}); re-export the bundle") from exc


def load_text_model(bundle, threads: int | None = None, arena: bool = True, prefix_cache: bool = True, **_):
    if bundle.kind == "causal-lm":
        return OnnxCausalLM(bundle, threads, arena, prefix_cache)
    if bundle.kind == "seq2seq":
        return OnnxSeq2SeqLM(bundle, threads, arena)
    raise BackendError(f"{bundle.path}: the onnx text backend runs kinds 'causal-lm' and 'seq2seq', "
                       f"not {bundle.kind!r}")


class _TextModel(BaseTextModel):
    """Tokenizer, special tokens and the TextModel methods shared by both model kinds."""

    backend = "onnx"
    default_context = 2048

    def __init__(self, bundle, threads, arena):
        from tokenizers import Tokenizer

        self.bundle, self.threads, self.arena = bundle, default_threads(threads), arena
        tok_path = bundle.file("tokenizer")
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:
            raise BundleError(f"{tok_path}: not a tokenizers JSON file ({exc}); re-export the bundle") from exc
        cfg_path = tok_path.with_name("tokenizer_config.json")
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        self.clean_up_spaces = bool(cfg.get("clean_up_tokenization_spaces", False))
        tokens = bundle.get("tokens")
        if not isinstance(tokens, dict) or not tokens.get("eos") or tokens.get("pad") is None:
            raise BundleError(f"{bundle.path}: manifest field 'tokens' must give 'eos' (list of ids) and 'pad' "
                              f"(got {tokens!r}); re-export the bundle")
        self.eos = [int(t) for t in tokens["eos"]]
        self.pad = int(tokens["pad"])
        self.tokens = tokens
        self._context = int(bundle.get("context_length") or self.default_context)

    @property
    def context_length(self) -> int:
        return self._context

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"prompt must be a string, got {type(text).__name__}")
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return _clean_up(text) if self.clean_up_spaces else text

    def generate_ids(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[list[int]]]:
        """Token ids instead of text (tests compare these with transformers)."""
        if config.grammar:
            raise BackendError("grammar-constrained generation needs the gguf backend; "
                               "use a GGUF bundle or drop `grammar`")
        self.check_prompts(prompts)
        ids = [self.encode(p) for p in prompts]
        for p, i in zip(prompts, ids):
            if not i:
                raise InputError(f"prompt {p!r} has no tokens; pass non-empty text")
            if self._prompt_budget(i) + config.max_new_tokens > self.context_length:
                raise InputError(f"prompt of {len(i)} tokens + max_new_tokens {config.max_new_tokens} exceeds "
                                 f"the model's context of {self.context_length} tokens; shorten the prompt")
        eos = config.eos_token_ids or self.eos
        return generate_ids(self, ids, config, eos_token_ids=eos,
                            decoder_start_token_id=self.tokens.get("decoder_start") if self.is_seq2seq else None)

    def _prompt_budget(self, ids) -> int:
        return len(ids)

    @staticmethod
    def _run(session, feeds: dict, path) -> list[np.ndarray]:
        wanted = getattr(session, "edgesight_inputs", None)
        if wanted is None:   # get_inputs() costs ~0.4 ms: once per session, not per token
            wanted = session.edgesight_inputs = {i.name for i in session.get_inputs()}
        try:
            return session.run(None, {k: v for k, v in feeds.items() if k in wanted})
        except Exception as exc:
            raise BackendError(f"{path}: onnxruntime run failed ({str(exc).strip()[:300]})") from exc


def _past_spec(session, prefix: str):
    """(names of the past inputs in order, (heads, head_dim), dtype) for inputs starting with `prefix`."""
    names = [i.name for i in session.get_inputs() if i.name.startswith(prefix)]
    if not names:
        return [], (0, 0), np.float32
    first = next(i for i in session.get_inputs() if i.name == names[0])
    heads, dim = first.shape[1], first.shape[3]
    dtype = np.float16 if "float16" in first.type else np.float32
    return names, (int(heads), int(dim)), dtype


class OnnxCausalLM(_TextModel):
    """Decoder-only model.onnx with KV cache; implements the generation loop's Decoder."""

    is_seq2seq = False

    def __init__(self, bundle, threads=None, arena=True, prefix_cache=True):
        super().__init__(bundle, threads, arena)
        self.path = bundle.file("model")
        self.session = open_session(self.path, self.threads, arena)
        self.past_names, (self.heads, self.head_dim), self.dtype = _past_spec(self.session, "past_key_values.")
        if not self.past_names:
            raise BundleError(f"{self.path}: model has no past_key_values inputs; export it with the "
                              "'text-generation-with-past' task")
        self.present_names = [o.name for o in self.session.get_outputs()][1:]
        self.prefix_cache = prefix_cache
        self._cache: tuple[list[int], list[np.ndarray]] | None = None   # (prompt ids, its KV, 1 row)
        self.reused_tokens = 0     # prompt tokens the last prefill took from the cache (benchmarks, tests)

    def clear_cache(self) -> None:
        self._cache = None

    # -- Decoder protocol --
    def prefill(self, prompts: list[list[int]]):
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
        logits, state = self._forward(ids, mask, past)
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
    def _forward(self, ids, mask, past):
        pos = np.cumsum(mask, axis=1) - 1
        pos[mask == 0] = 1                             # as transformers: pad positions are masked anyway
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos[:, -ids.shape[1]:],
                 **dict(zip(self.past_names, past))}
        out = self._run(self.session, feeds, self.path)
        logits = np.asarray(out[0][:, -1, :], dtype=np.float32)
        return logits, {"mask": mask, "past": out[1:]}


class OnnxSeq2SeqLM(_TextModel):
    """Encoder + decoder (merged with use_cache_branch, or decoder + decoder_with_past)."""

    is_seq2seq = True
    default_context = 512

    def __init__(self, bundle, threads=None, arena=True):
        super().__init__(bundle, threads, arena)
        if self.tokens.get("decoder_start") is None:
            raise BundleError(f"{bundle.path}: seq2seq bundle lacks tokens.decoder_start; re-export the bundle")
        self.paths = {"encoder": bundle.file("encoder"), "decoder": bundle.file("decoder")}
        if bundle.has("decoder_with_past"):
            self.paths["decoder_with_past"] = bundle.file("decoder_with_past")
        self.sessions = {role: open_session(p, self.threads, arena) for role, p in self.paths.items()}
        dec = self.sessions["decoder"]
        self.merged = any(i.name == "use_cache_branch" for i in dec.get_inputs())
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
        hidden = self._run(self.sessions["encoder"], {"input_ids": ids, "attention_mask": mask},
                           self.paths["encoder"])[0]
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
        out = self._run(session, feeds, self.paths[role])
        names = [o.name for o in session.get_outputs()]
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


def _clean_up(text: str) -> str:
    """transformers' clean_up_tokenization (spaces before punctuation and in English contractions)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text
