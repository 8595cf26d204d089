"""torch: the transformers reference (causal LMs and seq2seq), optionally with a peft adapter.

Used for parity checks (the export validation's reference), for the seeds' path in benchmarks and
on GPUs (`device="cuda"`). Weights are read with use_safetensors=True only.

    model = load_text_model(bundle, threads=2)               # bundle format "torch": an HF dir inside
    model = TorchTextModel("merged/", threads=1)              # or any HF directory directly
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .._optional import require
from ..errors import BackendError, InputError
from ..generation import GenerationConfig
from . import BaseTextModel, check_text


def devices() -> list[str]:
    torch = require("torch", "export")
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class TorchTextModel(BaseTextModel):
    backend = "torch"

    def __init__(self, model_dir, *, threads: int, adapter_dir=None, device: str = "cpu",
                 max_input_tokens: int | None = None):
        torch = require("torch", "export")
        transformers = require("transformers", "export")
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise BackendError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
        torch.set_num_threads(threads)   # also the CPU side of a CUDA run (tokenizing, sampling glue)
        config = transformers.AutoConfig.from_pretrained(model_dir)
        self.kind = "seq2seq" if config.is_encoder_decoder else "causal-lm"
        cls = transformers.AutoModelForSeq2SeqLM if self.kind == "seq2seq" else transformers.AutoModelForCausalLM
        model = cls.from_pretrained(model_dir, use_safetensors=True, dtype=torch.float32)
        if adapter_dir is not None:
            peft = require("peft", "export")
            model = peft.PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
        self.model = model.to(device).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.device, self._torch = device, torch
        self.max_input_tokens = max_input_tokens   # truncation, as the bundle's "max_input_tokens" says

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 512)

    def encode(self, text: str) -> list[int]:
        limit = self.max_input_tokens
        return self.tokenizer(check_text(text), truncation=bool(limit), max_length=limit)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate_ids(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[list[int]]]:
        """Per prompt, `config.num_return_sequences` continuations as token ids (decoder start, eos, pad removed).
        Prompts run one at a time: no padding, so outputs do not depend on the batch."""
        self.check_prompts(prompts)
        return [self._continuations(self.encode(p), config) for p in prompts]

    def _continuations(self, prompt_ids: list[int], config: GenerationConfig) -> list[list[int]]:
        return self._generate(prompt_ids, config)[0]

    def greedy_margins(self, prompt: str, max_new_tokens: int) -> tuple[list[int], list[float]]:
        """The greedy continuation and, per generated token, the top-1 minus top-2 logit: the export
        validation treats a divergence where this gap is tiny as a numerical tie, not an error."""
        seqs, scores = self._generate(self.encode(prompt), GenerationConfig(max_new_tokens=max_new_tokens), scores=True)
        margins = [float(v[0, 0] - v[0, 1]) for v in (s.topk(2, dim=-1).values for s in scores)]
        return seqs[0], margins[:len(seqs[0])]

    def _generate(self, prompt_ids: list[int], config: GenerationConfig, scores: bool = False):
        torch = self._torch
        if config.grammar:
            raise BackendError("GBNF grammars run on the gguf backend only; drop `grammar` or use a gguf bundle")
        if self.kind == "causal-lm" and len(prompt_ids) + config.max_new_tokens > self.context_length:
            raise InputError(f"prompt of {len(prompt_ids)} tokens + {config.max_new_tokens} new tokens exceeds "
                             f"the context of {self.context_length}; shorten the input")
        if config.seed is not None:
            torch.manual_seed(config.seed)
        gen = self.model.generation_config
        eos = list(config.eos_token_ids) or _as_list(gen.eos_token_id)
        pad = gen.pad_token_id if gen.pad_token_id is not None else (eos[0] if eos else 0)
        kwargs = dict(max_new_tokens=config.max_new_tokens, num_beams=config.num_beams, do_sample=config.do_sample,
                      num_return_sequences=config.num_return_sequences, no_repeat_ngram_size=config.no_repeat_ngram_size,
                      length_penalty=config.length_penalty, early_stopping=config.early_stopping,
                      repetition_penalty=config.repetition_penalty, eos_token_id=eos or None, pad_token_id=pad,
                      output_scores=scores, return_dict_in_generate=True)
        if config.do_sample:
            kwargs.update(temperature=config.temperature, top_k=config.top_k or None, top_p=config.top_p)
        else:  # no sampling knobs: transformers warns about them otherwise
            kwargs.update(temperature=None, top_k=None, top_p=None)
        ids = torch.tensor([list(prompt_ids)], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        start = 1 if self.kind == "seq2seq" else len(prompt_ids)  # seq2seq outputs begin with decoder_start
        drop = set(eos) | {pad}
        return [_until(row[start:].tolist(), drop) for row in out.sequences], out.scores

    def next_token_logits(self, prompt_ids: Sequence[int]) -> np.ndarray:
        torch = self._torch
        ids = torch.tensor([list(prompt_ids)], device=self.device)
        kwargs = {}
        if self.kind == "seq2seq":
            start = self.model.generation_config.decoder_start_token_id
            kwargs["decoder_input_ids"] = torch.tensor([[start]], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, **kwargs).logits[0, -1]
        return logits.float().cpu().numpy()


def _as_list(value) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def _until(ids: list[int], stop: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stop:
            return ids[:i]
    return ids


def load_text_model(bundle, *, threads: int, device: str = "cpu", adapter_dir=None, **_) -> TorchTextModel:
    """Open a "torch" bundle: component "model" is an HF directory, optional "adapter" a peft directory."""
    if adapter_dir is None and bundle.has("adapter"):
        adapter_dir = bundle.file("adapter")
    return TorchTextModel(bundle.file("model"), threads=threads, adapter_dir=adapter_dir, device=device,
                          max_input_tokens=bundle.get("max_input_tokens"))
