"""Every input limit in one place (docs/reliability.md lists them). Each is checked *before* the
expensive step it protects: prompt characters before tokenizing, image pixels from the header before
any decode, JSON depth and number sizes while parsing, batch length before any inference.

Each limit can be changed with the environment variable named beside it (a positive whole number).
"""
from __future__ import annotations

import json
import math
import os
import unicodedata

from .errors import InputError

# name: (environment variable, default)
_DEFAULTS = {
    "prompt_chars": ("EDGESIGHT_MAX_PROMPT_CHARS", 4096),         # one prompt, in characters, before tokenizing
    "batch": ("EDGESIGHT_MAX_BATCH", 64),                          # inputs in one HTTP request / CLI call
    "json_depth": ("EDGESIGHT_MAX_JSON_DEPTH", 32),                # nesting of any JSON document we parse
    "number_digits": ("EDGESIGHT_MAX_NUMBER_DIGITS", 32),          # digits of one JSON number
    "image_pixels": ("EDGESIGHT_MAX_IMAGE_PIXELS", 40_000_000),    # width x height, read from the header
    "items": ("EDGESIGHT_MAX_ITEMS", 10_000),                      # entries of one list inside an input (detections)
    "csv_field_bytes": ("EDGESIGHT_MAX_CSV_FIELD", 64 * 1024),      # one catalogue CSV cell
}


def limit(name: str) -> int:
    """The limit `name` (see _DEFAULTS): its environment variable if set to a positive integer, else the default."""
    var, default = _DEFAULTS[name]
    value = os.environ.get(var, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


def describe_limits() -> dict:
    """{name: value} of every limit in force (for /health and the docs)."""
    return {name: limit(name) for name in _DEFAULTS}


# Zero-width and other invisible format characters (U+200B, U+FEFF, soft hyphen, ...) split words
# for a tokenizer ("C\u200bats" -> "C a ts") while showing nothing to the user: they are removed.
_INVISIBLE = {c for c in map(chr, range(0x20, 0x3000)) if unicodedata.category(c) == "Cf"} | {"\ufeff"}
_STRIP = str.maketrans(dict.fromkeys(map(ord, _INVISIBLE)))


def check_prompt(text, where: str = "prompt") -> str:
    """A prompt: a str of valid Unicode within the character limit, invisible format characters removed."""
    if not isinstance(text, str):
        raise InputError(f"{where} must be a string, got {type(text).__name__}")
    n = limit("prompt_chars")
    if len(text) > n:
        raise InputError(f"{where} has {len(text)} characters, over the limit of {n}; split it into shorter "
                         "prompts (or raise EDGESIGHT_MAX_PROMPT_CHARS)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{where} is not valid Unicode text ({exc.reason} at position {exc.start})") from None
    return text.translate(_STRIP)


def check_batch(items, where: str = "inputs"):
    """A list of inputs no longer than the batch limit."""
    n = limit("batch")
    if isinstance(items, list) and len(items) > n:
        raise InputError(f"{where} has {len(items)} entries, over the limit of {n} per call; send smaller batches "
                         "(or raise EDGESIGHT_MAX_BATCH)")
    return items


def check_number(value, where: str, low: float | None = None, high: float | None = None) -> float:
    """A real number (not bool, not NaN or infinite, any size of int) within [low, high] -> float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number, got {type(value).__name__} {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise InputError(f"{where} is too large a number ({len(str(abs(value)))} digits)") from None
    if not math.isfinite(number):
        raise InputError(f"{where} must be a finite number, got {value}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise InputError(f"{where} must be from {low:g} to {high:g}, got {number:g}")
    return number


def parse_json(data, where: str = "input"):
    """JSON text or bytes -> value, or InputError. Strict UTF-8, standard JSON only (no NaN/Infinity),
    numbers of at most `number_digits` digits, nesting at most `json_depth` deep."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"{where} is not UTF-8 text (bad byte at position {exc.start}); send UTF-8 JSON") from None
    digits = limit("number_digits")

    def number(text: str, cast):
        if sum(c.isdigit() for c in text) > digits:
            raise InputError(f"{where} holds a number with more than {digits} digits ({text[:20]}…)")
        value = cast(text)
        if cast is float and not math.isfinite(value):
            raise InputError(f"{where} holds {text[:20]}, which overflows a float; send finite numbers")
        return value

    def constant(name: str):
        raise InputError(f"{where} holds {name}, which is not JSON; send finite numbers")

    try:
        value = json.loads(data, parse_int=lambda s: number(s, int), parse_float=lambda s: number(s, float),
                           parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{where} is nested deeper than {limit('json_depth')} levels") from None
    check_depth(value, where)
    return value


def check_depth(value, where: str = "input"):
    """Nesting of a parsed JSON-like value (lists and dicts) at most `json_depth` deep (iterative: no recursion)."""
    n = limit("json_depth")
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > n:
                raise InputError(f"{where} is nested deeper than {n} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return value


def check_pixels(width: int, height: int, what: str = "image", max_pixels: int | None = None) -> None:
    """An image's size, read from its header before decoding: not empty, at most `image_pixels` pixels."""
    n = max_pixels or limit("image_pixels")
    from .errors import ImageError

    if width < 1 or height < 1:
        raise ImageError(f"{what} is empty ({width}x{height} pixels)")
    if width * height > n:
        raise ImageError(f"{what} has {width}x{height} = {width * height / 1e6:.1f} MP, over the {n / 1e6:.0f} MP limit; "
                         "downscale it first or raise max_pixels / EDGESIGHT_MAX_IMAGE_PIXELS")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
