"""llama.cpp through llama-cpp-python's public API (decoder-only GGUF models), on the CPU or, with a
CUDA build of llama-cpp-python, with every layer offloaded to the GPU (n_gpu_layers=-1).

    model = load_text_model(bundle, threads=2, device="cpu")   # bundle format "gguf"
    model.generate(["<prompt>"], GenerationConfig())        # [["continuation"]]

Greedy decoding is top_k=1 / temp=0 / repeat_penalty=1; sampling is seeded. A GBNF grammar
(`GenerationConfig.grammar`) constrains the output. A "gguf-lora" bundle carries the base GGUF
plus a LoRA GGUF adapter applied at load time. Bundles made by the export stage carry the model's
tokenizer.json, which tokenizes and decodes here exactly as in the onnx and torch backends
(llama.cpp's own sentencepiece tokenizer puts a "▁" after every special token, where transformers
does not); without one, llama.cpp's tokenizer is used. The KV cache of the previous prompt is kept:
llama-cpp-python's `generate()` re-evaluates only the part after the longest common prefix, so
prompts that share an instruction prefix pay only for their own text.

Saved prefix state: a bundle may carry the llama.cpp context state after its instruction prefix
(component "prefix_state", raw bytes from `Llama.save_state()`'s `llama_state`, sha256-checked like
every bundle file, never unpickled; manifest "prefix_state" = {"tokens", "llama_cpp", "bytes"}).
Loading restores it with `Llama.load_state()`, so the first call after a restart evaluates only its
own text. A state written by another llama-cpp-python version, or one llama.cpp refuses, is skipped
(the prefix is then computed on the first call as without one); `prefix_state_note` says which.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .._optional import require
from ..errors import BackendError, BundleError, InputError
from ..generation import GenerationConfig
from ..tokenizer import TextTokenizer
from . import BaseTextModel, check_text


def devices() -> list[str]:
    llama_cpp = require("llama_cpp", "gguf")
    return ["cpu"] + (["cuda"] if llama_cpp.llama_supports_gpu_offload() else [])


class GGUFTextModel(BaseTextModel):
    backend = "gguf"
    supports_grammar = True

    def __init__(self, model_path, *, threads: int, lora_path=None, n_ctx: int = 2048,
                 eos_token_ids: Sequence[int] = (), tokenizer_file=None, device: str = "cpu"):
        llama_cpp = require("llama_cpp", "gguf")
        if not os.path.isfile(model_path):
            raise BackendError(f"{model_path}: GGUF file not found")
        # Explicit threads for both decode and prompt batches: llama.cpp otherwise sizes its pool from
        # host cores, which collapses on a shared 2-core machine.
        try:
            self.llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=threads,
                                       n_threads_batch=threads, lora_path=str(lora_path) if lora_path else None,
                                       n_gpu_layers=-1 if device.startswith("cuda") else 0,
                                       main_gpu=int(device.partition(":")[2] or 0), verbose=False)
        except (ValueError, RuntimeError) as exc:   # llama.cpp's "Failed to load model from file"
            raise BundleError(f"{model_path}: llama.cpp cannot load this GGUF ({exc}); the file is corrupt or "
                              "not a GGUF model — re-export the bundle") from exc
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)   # public C API over the public model pointer
        self._llama_cpp = llama_cpp
        self._eos = set(int(t) for t in eos_token_ids)
        self._grammars: dict[str, object] = {}
        self.tokenizer = TextTokenizer.from_file(tokenizer_file) if tokenizer_file is not None else None

    # -- protocol -------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self.llm.n_ctx()

    def encode(self, text: str) -> list[int]:
        """Ids from the bundle's tokenizer.json, else from llama.cpp (BOS per the GGUF metadata)."""
        check_text(text)
        if self.tokenizer is not None:
            return self.tokenizer.encode(text)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode(ids)
        # llama.cpp keeps a leading space that transformers' decode drops
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="ignore").strip()

    def generate_ids(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[list[int]]]:
        """Per prompt, `config.num_return_sequences` continuations as token ids (eos excluded)."""
        self.check_prompts(prompts)
        return [self._continuations(self.encode(p), config) for p in prompts]

    def _continuations(self, prompt_ids: list[int], config: GenerationConfig) -> list[list[int]]:
        self._check(config, len(prompt_ids))
        grammar = self._grammar(config.grammar)
        eos = set(config.eos_token_ids) or self._eos
        outs = []
        for i in range(max(1, config.num_return_sequences)):
            if config.do_sample:
                # seed None -> a fresh random seed per call; seed s -> s, s+1, ... per returned sequence
                self.llm.set_seed(int.from_bytes(os.urandom(4), "little") if config.seed is None else config.seed + i)
                kw = dict(temp=max(config.temperature, 1e-5), top_k=config.top_k, top_p=config.top_p)
            else:
                kw = dict(temp=0.0, top_k=1, top_p=1.0)
            ids = []
            for tok in self.llm.generate(prompt_ids, min_p=0.0, typical_p=1.0,
                                         repeat_penalty=config.repetition_penalty, grammar=grammar, **kw):
                if tok in eos or self._llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                    break
                ids.append(tok)
                if len(ids) >= config.max_new_tokens:
                    break
            outs.append(ids)
        return outs

    # -- saved prefix state -----------------------------------------------------------------------
    def save_prefix_state(self, prefix_ids: Sequence[int]) -> tuple[bytes, dict]:
        """(state bytes, manifest metadata) after evaluating `prefix_ids` from an empty context."""
        self.llm.reset()
        self.llm.eval(list(prefix_ids))
        state = self.llm.save_state()
        meta = {"tokens": [int(t) for t in prefix_ids], "llama_cpp": self._llama_cpp.__version__,
                "bytes": int(state.llama_state_size), "seed": int(state.seed)}
        return bytes(state.llama_state[:state.llama_state_size]), meta

    def load_prefix_state(self, blob: bytes, meta: dict) -> str:
        """Restore a saved prefix (see the module doc); returns what happened (kept as `prefix_state_note`)."""
        from llama_cpp.llama import LlamaState

        tokens = [int(t) for t in meta.get("tokens") or []]
        if meta.get("llama_cpp") != self._llama_cpp.__version__:
            return (f"skipped: saved by llama-cpp-python {meta.get('llama_cpp')}, this is "
                    f"{self._llama_cpp.__version__}; the prefix is computed on the first call")
        if not tokens or len(tokens) >= self.context_length or len(blob) != meta.get("bytes"):
            return "skipped: the saved state does not fit this context; the prefix is computed on the first call"
        ids = np.zeros(self.context_length, dtype=np.intc)
        ids[:len(tokens)] = tokens
        # scores: one zero row (broadcast by load_state); the logits of the prefix are never sampled
        state = LlamaState(input_ids=ids, scores=np.zeros((1, self.llm.n_vocab()), dtype=np.single),
                           n_tokens=len(tokens), llama_state=blob, llama_state_size=len(blob), seed=int(meta.get("seed", 0)))
        try:
            self.llm.load_state(state)
        except (RuntimeError, ValueError) as exc:
            self.llm.reset()
            return f"skipped: llama.cpp refused the saved state ({exc}); the prefix is computed on the first call"
        return f"restored: {len(tokens)} prefix tokens"

    def next_token_logits(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Logits of the token after `prompt_ids` (float32, vocab-sized; the export validation compares them)."""
        self.llm.reset()
        self.llm.eval(list(prompt_ids))
        ptr = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float32).copy()

    def _check(self, config: GenerationConfig, n_prompt: int) -> None:
        if n_prompt == 0:
            raise InputError("the prompt has no tokens; pass non-empty text")
        if config.num_beams > 1:
            raise BackendError("beam search is not available on the gguf backend (llama.cpp samples greedily "
                               "or stochastically); use num_beams=1 or run an onnx bundle")
        if config.no_repeat_ngram_size:
            raise BackendError("no_repeat_ngram_size is not available on the gguf backend; use "
                               "repetition_penalty instead or run an onnx bundle")
        if n_prompt + config.max_new_tokens > self.context_length:
            raise InputError(f"prompt of {n_prompt} tokens + {config.max_new_tokens} new tokens exceeds the "
                             f"context of {self.context_length}; shorten the input or lower max_new_tokens")

    def _grammar(self, text: str | None):
        if not text:
            return None
        if text not in self._grammars:
            self._grammars[text] = gbnf_grammar(self.vocab, text)
        return self._grammars[text]


def gbnf_grammar(vocab, text: str):
    """A LlamaGrammar for GBNF `text`, parsed against `vocab` first: LlamaGrammar.from_string does not parse,
    and a NULL sampler would crash the sampler chain (the process), so a bad grammar is an InputError here."""
    import llama_cpp as lc
    from llama_cpp import LlamaGrammar

    probe = lc.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
    if not probe:
        raise InputError("the GBNF grammar does not parse; check it against llama.cpp's "
                         "grammars/README.md (it needs a `root ::= ...` rule)")
    lc.llama_sampler_free(probe)
    return LlamaGrammar.from_string(text, verbose=False)


def load_text_model(bundle, *, threads: int, device: str = "cpu", lora_path=None, n_ctx: int | None = None,
                    prefix_state: bool = True, **_) -> GGUFTextModel:
    """Open a "gguf" bundle: component "model" (GGUF), optional "lora" (GGUF adapter; `lora_path`
    overrides it), eos ids from the manifest's "tokens", the saved prefix state unless
    `prefix_state=False` (or another adapter is given)."""
    own_lora = lora_path is None
    if lora_path is None and bundle.has("lora"):
        lora_path = bundle.file("lora")
    eos = (bundle.get("tokens") or {}).get("eos") or []   # {"eos": [ids], "pad", ...} (export/onnx.special_tokens)
    model = GGUFTextModel(bundle.file("model"), threads=threads, lora_path=lora_path, device=device,
                          n_ctx=n_ctx or int(bundle.get("context_length", 2048)),
                          eos_token_ids=[eos] if isinstance(eos, int) else eos,
                          tokenizer_file=bundle.file("tokenizer") if bundle.has("tokenizer") else None)
    model.prefix_state_note = "none in the bundle"
    if bundle.has("prefix_state"):
        if prefix_state and own_lora:   # the state was computed with the bundle's own weights
            model.prefix_state_note = model.load_prefix_state(bundle.file("prefix_state").read_bytes(),
                                                              bundle.get("prefix_state") or {})
        else:
            model.prefix_state_note = "not loaded (prefix_state=False or another adapter)"
    return model


def load_vlm(bundle, *, threads: int, device: str = "cpu", n_ctx: int = 2048, **_):
    """A vlm bundle (text GGUF + mmproj GGUF) through libmtmd: runtime/mtmd.py."""
    from .mtmd import MtmdVLM

    return MtmdVLM(bundle, threads=threads, device=device, n_ctx=n_ctx)
