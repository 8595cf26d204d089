"""Grammar-constrained decoding for the numpy generation loop (the ONNX runtimes), with llguidance.

    grammars = TokenGrammars(tokenizer_json_text)        # one per model (the tokenizer index is built once)
    generate_ids(decoder, prompts, config, eos_token_ids=eos,
                 grammar=lambda vocab_size: grammars.compile(text, vocab_size, eos))   # vocab: the logits' width

`text` is a llama.cpp GBNF grammar (what the gguf runtime takes; llguidance converts it) or a llguidance Lark
grammar (starts with `%llguidance {}` or has a `start:` rule). One semantic difference: llguidance lexes a rule
made only of characters as one greedy token (maximal munch), where llama.cpp matches character by character. A
free-text field followed by a separator the field may itself contain (a title before ", Category: ") therefore
needs Lark's `[lazy]` form for llguidance; tasks that need it keep a Lark twin of their GBNF (tasks/vlm.py).

Why llguidance: it compiles GBNF/Lark/JSON-schema grammars against a Hugging Face tokenizer.json and computes
the allowed-token bitmask in well under a millisecond per step; no torch, no transformers.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .errors import BackendError, InputError


def _llg():
    try:
        import llguidance
    except ImportError as exc:   # a core dependency; only a hand-pruned install lacks it
        raise BackendError("grammar-constrained generation on ONNX needs llguidance: pip install llguidance") from exc
    return llguidance


@lru_cache(maxsize=32)
def _to_lark(text: str) -> str:
    """GBNF or Lark text -> llguidance's grammar definition; InputError when it does not parse."""
    llg = _llg()
    try:
        return llg.grammar_from("gbnf", text)   # "gbnf" also passes Lark through (any_to_lark)
    except ValueError as exc:
        raise InputError(f"the grammar does not parse ({str(exc).splitlines()[0][:200]}); give llama.cpp GBNF "
                         "(a `root ::= ...` rule) or llguidance Lark") from exc


class TokenGrammars:
    """Grammars over one tokenizer: `compile(text, vocab_size, eos)` -> a CompiledGrammar (cached)."""

    def __init__(self, tokenizer_json: str):
        self.tokenizer_json = tokenizer_json
        self._tokenizers: dict[tuple, object] = {}
        self._compiled: dict[tuple, CompiledGrammar] = {}

    def compile(self, text: str, vocab_size: int, eos: list[int]) -> "CompiledGrammar":
        key = (text, vocab_size, tuple(eos))
        if key not in self._compiled:
            llg = _llg()
            tkey = (vocab_size, tuple(eos))
            if tkey not in self._tokenizers:   # ~0.2 s for a 49k vocabulary: once per model
                try:
                    self._tokenizers[tkey] = llg.LLTokenizer(self.tokenizer_json, n_vocab=vocab_size, eos_token=list(eos))
                except ValueError as exc:   # e.g. a Metaspace (T5) decoder
                    raise BackendError(f"llguidance cannot read this model's tokenizer.json ({exc}); grammars need a "
                                       "byte-level BPE or byte-fallback tokenizer (SmolLM, SmolVLM, Llama, Qwen)") from exc
            tokenizer, definition = self._tokenizers[tkey], _to_lark(text)
            error = llg.LLMatcher.validate_grammar(definition, tokenizer)
            if error:
                raise InputError(f"the grammar is not valid: {error.strip().splitlines()[0][:200]}")
            self._compiled[key] = CompiledGrammar(tokenizer, definition)
        return self._compiled[key]


class CompiledGrammar:
    """A grammar ready to constrain rows: `start(n)` gives the per-row matchers the loop advances."""

    def __init__(self, tokenizer, definition: str):
        self.tokenizer, self.definition = tokenizer, definition

    def start(self, rows: int) -> "GrammarRows":
        llg = _llg()
        return GrammarRows([llg.LLMatcher(self.tokenizer, self.definition, log_level=0) for _ in range(rows)],
                           self.tokenizer.vocab_size)


class GrammarRows:
    """One matcher per generated row: `mask` forbids what the grammar cannot take next, `advance` consumes."""

    def __init__(self, matchers, vocab_size: int):
        import llguidance.numpy as lnp

        self.matchers, self._lnp = matchers, lnp
        self.bitmask = lnp.allocate_token_bitmask(len(matchers), vocab_size)

    def mask(self, scores: np.ndarray, rows) -> np.ndarray:
        """scores (len(rows), vocab) with every token the grammar forbids set to -inf, in place."""
        for r in rows:
            self._lnp.fill_next_token_bitmask(self.matchers[r], self.bitmask, int(r))
        allowed = np.unpackbits(self.bitmask[np.asarray(rows)].view(np.uint8), axis=-1, bitorder="little")
        scores[allowed[:, :scores.shape[-1]] == 0] = -np.inf
        return scores

    def advance(self, rows, tokens) -> None:
        for r, tok in zip(rows, tokens):
            m = self.matchers[r]
            if not m.consume_token(int(tok)):
                raise BackendError(f"the grammar rejected token {int(tok)} it had allowed: {m.get_error()[:200]}")
