"""The bundle tokenizer (Hugging Face `tokenizers` JSON), shared by every runtime and task, so text
is tokenized and decoded identically whatever runs the model.

    tok = TextTokenizer.from_file(bundle.file("tokenizer"))
    tok.encode("a prompt")           # ids
    tok.decode(ids)                  # == transformers' decode(skip_special_tokens=True)

A `tokenizer_config.json` next to tokenizer.json with clean_up_tokenization_spaces=true makes
decode() apply transformers' clean-up, so strings equal transformers' decode().
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .errors import BundleError


def clean_up(text: str) -> str:
    """transformers' clean_up_tokenization (spaces before punctuation and in English contractions)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class TextTokenizer:
    def __init__(self, tokenizer, clean_up_spaces: bool = False):
        self.tokenizer, self.clean_up_spaces = tokenizer, clean_up_spaces

    @classmethod
    def from_file(cls, path, clean_up_spaces: bool | None = None) -> "TextTokenizer":
        """tokenizer.json; clean_up_spaces=None reads it from a tokenizer_config.json beside it."""
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise BundleError(f"{path}: not a tokenizers JSON file ({exc}); re-export the bundle") from exc
        if clean_up_spaces is None:
            cfg = path.with_name("tokenizer_config.json")
            try:
                clean_up_spaces = cfg.is_file() and bool(json.loads(cfg.read_text(encoding="utf-8")).get(
                    "clean_up_tokenization_spaces", False))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BundleError(f"{cfg}: not valid JSON ({exc}); re-export the bundle") from None
        return cls(tok, bool(clean_up_spaces))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return clean_up(text) if self.clean_up_spaces else text
