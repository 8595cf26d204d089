"""Generation settings shared by every backend, and the numpy generation loop of the ONNX backend.

The loop reproduces transformers 4.57 `generate()` token for token (up to the float noise of the
model itself): greedy, beam search (num_beams, length_penalty, no_repeat_ngram_size, early_stopping
True/False/"never", num_return_sequences), repetition_penalty, and seeded temperature/top-k/top-p
sampling. It is generic over a `Decoder` (prefill / step / select) and never imports torch.

Deliberate differences from transformers:
- sampling draws from a numpy Generator seeded with `seed` (and the return-sequence index), so a
  prompt gives the same samples whatever batch it is in; it does not replay torch's RNG;
- repetition_penalty and no_repeat_ngram_size look at the real prompt tokens, not at left padding,
  so a batch gives the same results as one prompt at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .errors import InputError
from .record import Record

NEG = np.float32(-1.0e9)   # transformers' "never pick this" score in beam search


@dataclass
class GenerationConfig(Record):
    max_new_tokens: int = 32
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0            # 0 = off
    top_p: float = 1.0        # 1.0 = off
    seed: int | None = None
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0
    eos_token_ids: list[int] = field(default_factory=list)  # empty = the model's own
    grammar: str | None = None  # GBNF (gguf and onnx; onnx also llguidance Lark: edgesight.grammar); not torch

    @classmethod
    def from_dict(cls, d: dict | None) -> "GenerationConfig":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def validate(self) -> "GenerationConfig":
        """Raise InputError for settings no backend can honour; return self."""
        def bad(msg):
            raise InputError(f"GenerationConfig: {msg}")
        if self.max_new_tokens < 0:
            bad(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.num_beams < 1:
            bad(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            bad(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            bad(f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            bad("greedy decoding returns one sequence; set do_sample=True or num_beams >= num_return_sequences")
        if self.do_sample and not self.temperature > 0:
            bad(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            bad(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.early_stopping not in (True, False, "never"):
            bad(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        return self


class Decoder(Protocol):
    """What the loop needs from a model. Rows are independent sequences; `state` is opaque
    (KV cache, attention mask, encoder output ...)."""

    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, Any]:
        """Run the prompts; return (float32 logits of the next token, shape (rows, vocab), state)."""

    def step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """Append one token per row (int64, shape (rows,)); return (next-token logits, new state)."""

    def select(self, state: Any, rows: np.ndarray) -> Any:
        """The state of rows `rows` (gather; repeats expand the batch, e.g. to beams)."""


def generate_ids(decoder: Decoder, prompts: Sequence[Sequence[int]], config: GenerationConfig, *,
                 eos_token_ids: Sequence[int], decoder_start_token_id: int | None = None,
                 grammar: Callable[[int], Any] | None = None) -> list[list[list[int]]]:
    """For each prompt, `num_return_sequences` lists of generated token ids (a final eos included).

    `decoder_start_token_id` marks an encoder-decoder model: the logits processors then see the
    decoder tokens (start token + generated), not the encoder prompt, as transformers does.
    `grammar(vocab_size)` -> a CompiledGrammar (edgesight.grammar): only tokens it allows are picked
    (greedy and sampling; the grammar's mask comes first, then the logits processors)."""
    config.validate()
    if grammar is not None and config.num_beams > 1:
        raise InputError("a grammar constrains greedy decoding and sampling, not beam search; set num_beams=1")
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        return []
    eos = np.asarray(sorted(set(int(e) for e in eos_token_ids)), dtype=np.int64)
    contexts = prompts if decoder_start_token_id is None else [[int(decoder_start_token_id)] for _ in prompts]
    if config.max_new_tokens == 0:
        return [[[] for _ in range(config.num_return_sequences)] for _ in prompts]
    if config.num_beams > 1:
        return _beam_search(decoder, prompts, contexts, config, eos)
    return _greedy_or_sample(decoder, prompts, contexts, config, eos, grammar)


# --- logits processors (transformers' order: repetition, n-gram ban, then sampling warpers) ---------

def _process(scores: np.ndarray, contexts: list[list[int]], config: GenerationConfig, min_keep: int) -> np.ndarray:
    if config.repetition_penalty != 1.0:
        p = np.float32(config.repetition_penalty)
        for i, ctx in enumerate(contexts):
            ids = np.unique(np.asarray(ctx, dtype=np.int64))
            s = scores[i, ids]
            scores[i, ids] = np.where(s < 0, s * p, s / p)
    n = config.no_repeat_ngram_size
    if n > 0:
        for i, ctx in enumerate(contexts):
            if len(ctx) + 1 < n:
                continue
            prefix = tuple(ctx[len(ctx) - n + 1:]) if n > 1 else ()
            banned = [ctx[j + n - 1] for j in range(len(ctx) - n + 1) if tuple(ctx[j:j + n - 1]) == prefix]
            scores[i, banned] = -np.inf
    if config.do_sample:
        if config.temperature != 1.0:
            scores = scores / np.float32(config.temperature)
        if config.top_k:
            k = min(max(config.top_k, min_keep), scores.shape[-1])
            kth = -np.partition(-scores, k - 1, axis=-1)[:, k - 1:k]
            scores = np.where(scores < kth, -np.inf, scores).astype(np.float32)
        if config.top_p < 1.0:
            order = np.argsort(scores, axis=-1, kind="stable")           # ascending, as transformers
            ranked = np.take_along_axis(scores, order, axis=-1)
            remove = np.cumsum(_softmax(ranked), axis=-1) <= (1 - config.top_p)
            remove[:, -min_keep:] = False
            mask = np.zeros_like(remove)
            np.put_along_axis(mask, order, remove, axis=-1)
            scores = np.where(mask, -np.inf, scores).astype(np.float32)
    return scores


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


def _is_eos(tokens: np.ndarray, eos: np.ndarray) -> np.ndarray:
    return (tokens[..., None] == eos).any(axis=-1)   # np.isin builds a lookup table per call: slow here


def _rngs(config: GenerationConfig, n: int) -> list[np.random.Generator]:
    # One generator per return sequence: a prompt's samples do not depend on its batch neighbours.
    if config.seed is None:
        return [np.random.default_rng() for _ in range(n)]
    return [np.random.default_rng([config.seed, j]) for j in range(n)]


def _draw(rng: np.random.Generator, scores: np.ndarray) -> int:
    p = _softmax(scores.astype(np.float64))
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(p) - 1))


# --- greedy and multinomial sampling ---------------------------------------------------------------

def _greedy_or_sample(decoder, prompts, contexts, config, eos, grammar=None) -> list[list[list[int]]]:
    k = config.num_return_sequences
    logits, state = decoder.prefill(prompts)
    rows = np.repeat(np.arange(len(prompts)), k)
    constraint = grammar(logits.shape[-1]).start(len(rows)) if grammar is not None else None
    if k > 1:
        state, logits = decoder.select(state, rows), logits[rows]
    rngs = [r for _ in prompts for r in _rngs(config, k)]
    ctx = [list(contexts[r]) for r in rows]
    out: list[list[int]] = [[] for _ in rows]
    live = np.arange(len(rows))                       # rows (of `out`) still generating, in state order
    for t in range(config.max_new_tokens):
        scores = np.array(logits, dtype=np.float32)
        if constraint is not None:
            constraint.mask(scores, live)
        scores = _process(scores, [ctx[r] for r in live], config, 1)
        if config.do_sample:
            tokens = np.array([_draw(rngs[r], s) for r, s in zip(live, scores)], dtype=np.int64)
        else:
            tokens = scores.argmax(axis=-1).astype(np.int64)
        for r, tok in zip(live, tokens.tolist()):
            out[r].append(tok)
            ctx[r].append(tok)
        going = ~_is_eos(tokens, eos)
        if constraint is not None and going.any():
            constraint.advance(live[going], tokens[going])
        if t + 1 == config.max_new_tokens or not going.any():
            break
        if not going.all():                           # finished rows leave the batch
            state, live, tokens = decoder.select(state, np.flatnonzero(going)), live[going], tokens[going]
        logits, state = decoder.step(tokens, state)
    return [out[i * k:(i + 1) * k] for i in range(len(prompts))]


# --- beam search (transformers' vectorised _beam_search, in numpy) ---------------------------------

def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, best first (ties: lower index first)."""
    if k < x.shape[-1]:
        part = np.argpartition(-x, k - 1, axis=-1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(x.shape[-1]), x.shape)
    vals = np.take_along_axis(x, part, axis=-1)
    order = np.lexsort((part, -vals), axis=-1)
    return np.take_along_axis(part, order, axis=-1)


def _beam_search(decoder, prompts, contexts, config, eos) -> list[list[list[int]]]:
    B, K, T = len(prompts), config.num_beams, config.max_new_tokens
    lp, early = config.length_penalty, config.early_stopping
    keep = max(2, 1 + len(eos)) * K                   # enough candidates that K stay open after eos hits
    min_keep = len(eos) + 1
    rngs = [_rngs(config, 1)[0] for _ in range(B)]   # beam sampling: one generator per prompt

    logits, state = decoder.prefill(prompts)
    flat = np.repeat(np.arange(B), K)
    state, logits = decoder.select(state, flat), logits[flat]

    run_gen = np.zeros((B, K, T), dtype=np.int64)
    run_scores = np.zeros((B, K), dtype=np.float32)
    run_scores[:, 1:] = NEG                           # only beam 0 is live at first: no duplicate beams
    fin_gen = np.zeros((B, K, T), dtype=np.int64)
    fin_len = np.zeros((B, K), dtype=np.int64)
    fin_scores = np.full((B, K), NEG, dtype=np.float32)
    is_fin = np.zeros((B, K), dtype=bool)
    improvable = np.ones(B, dtype=bool)
    top_mask = np.arange(keep) < K
    bidx = np.arange(B)[:, None]

    t = 0
    while True:
        ctx = ([contexts[b] + run_gen[b, j, :t].tolist() for b in range(B) for j in range(K)]
               if config.repetition_penalty != 1.0 or config.no_repeat_ngram_size else [])
        logp = _process(_log_softmax(np.asarray(logits, dtype=np.float32)), ctx, config, min_keep)
        V = logp.shape[-1]
        acc = (logp.reshape(B, K, V) + run_scores[:, :, None]).reshape(B, K * V)
        if config.do_sample:
            probs = _softmax(acc.astype(np.float64))
            idx = np.stack([rngs[b].choice(K * V, size=keep, replace=False, p=probs[b]) for b in range(B)])
        else:
            idx = _topk(acc, keep)
        cand_scores = np.take_along_axis(acc, idx, axis=-1)
        src, tok = idx // V, idx % V
        cand_gen = run_gen[bidx, src]
        cand_gen[:, :, t] = tok
        hits = _is_eos(tok, eos) | (t + 1 >= T)

        # the best K candidates that did not stop keep running
        open_scores = cand_scores + hits.astype(np.float32) * NEG
        sel = _topk(open_scores, K)
        run_gen = cand_gen[bidx, sel]
        run_scores = np.take_along_axis(open_scores, sel, axis=-1)
        reorder = (bidx * K + np.take_along_axis(src, sel, axis=-1)).reshape(-1)

        # stopped candidates among the top K become finished hypotheses if they beat the worst kept one
        just = hits & top_mask[None, :]
        scored = cand_scores / np.float32((t + 1) ** lp)
        scored = scored + (is_fin.all(axis=1, keepdims=True) & (early is True)).astype(np.float32) * NEG
        scored = scored + (~improvable[:, None]).astype(np.float32) * NEG
        scored = scored + (~just).astype(np.float32) * NEG
        merged = np.concatenate([fin_scores, scored], axis=1)
        pick = _topk(merged, K)
        fin_gen = np.concatenate([fin_gen, cand_gen], axis=1)[bidx, pick]
        fin_len = np.concatenate([fin_len, np.full((B, keep), t + 1)], axis=1)[bidx, pick]
        fin_scores = np.take_along_axis(merged, pick, axis=-1)
        is_fin = np.concatenate([is_fin, just], axis=1)[bidx, pick]

        t += 1
        best_len = T if (early == "never" and lp > 0) else t
        best_running = run_scores[:, 0] / np.float32(best_len ** lp)
        worst_fin = np.where(is_fin, fin_scores.min(axis=1, keepdims=True), NEG)
        improvable &= (best_running[:, None] > worst_fin).any(axis=1)
        open_beams = not (is_fin.all() and early is True)
        if not (improvable.any() and open_beams and not hits.all()):
            break
        state = decoder.select(state, reorder)
        logits, state = decoder.step(run_gen[:, :, t - 1].reshape(-1), state)

    n = config.num_return_sequences
    return [[fin_gen[b, j, :fin_len[b, j]].tolist() for j in range(n)] for b in range(B)]
