"""Generation settings shared by every backend, and the numpy generation loop of the ONNX backend.

The loop reproduces transformers' `generate()` token for token: greedy, beam search (num_beams,
length_penalty, no_repeat_ngram_size, early_stopping) and seeded top-k/top-p/temperature sampling.
"""
from __future__ import annotations

from dataclasses import dataclass, field, asdict


@dataclass
class GenerationConfig:
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
    grammar: str | None = None  # GBNF, GGUF backend only

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "GenerationConfig":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (d or {}).items() if k in known})
