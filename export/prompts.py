"""A model's own way of being talked to, for models trained outside edgesight (the seeds' models):
its prompt format, system text, decoding and how its answer is read, written into the bundles.

Three sources, in this order:
- `--prompt NAME`: a preset the task ships, sdk/data/prompt_<task>_<NAME>.json
  (`--prompt seed-000` for keywords: seed 000's Zephyr chat format, system instruction, greedy
  decoding of up to 128 tokens and its answer parsing);
- `--prompt FILE.json` (or a dict from Python) with a "template": the same keys as a preset;
- the base directory's `llm_config.json` (seed 001's convention: "prompt_template",
  "max_input_length", "max_output_length", "num_beams"), read when no --prompt is given.

A prompt object: {"template": "...{system}...{input}...", "system": "...", "input": "text" | "json",
"generation": {GenerationConfig fields}, "parser": name, "max_input_tokens": n}. `{system}` is
filled in at export; `{input}` is where each call's input goes (a string as it is, a JSON input
serialised with json.dumps, as seed 001 did). The manifest then carries prompt.template /
prompt.prefix / prompt.suffix / prompt.system / prompt.input, "generation", "parser" (which of the
task's parsers reads the answer: data, never code) and "max_input_tokens" (inputs longer than this
are truncated, as the seed's tokenizer call did).
"""
from __future__ import annotations

import json
from pathlib import Path

from edgesight.errors import ExportError

KEYS = {"about", "template", "system", "input", "generation", "parser", "max_input_tokens"}


def preset_path(task: str, name: str) -> Path:
    from edgesight.defaults import DATA_DIR

    return DATA_DIR / f"prompt_{task}_{name}.json"


def presets(task: str) -> list[str]:
    from edgesight.defaults import DATA_DIR

    prefix = f"prompt_{task}_"
    return sorted(p.stem[len(prefix):] for p in DATA_DIR.glob(prefix + "*.json"))


def from_llm_config(base, kind: str) -> dict | None:
    """Seed 001's llm_config.json beside the weights, as a prompt object (None when there is none).
    max_output_length is transformers' max_length: for seq2seq it counts the decoder start token."""
    path = Path(base) / "llm_config.json" if base is not None and Path(base).is_dir() else None
    if path is None or not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc}); fix it or pass --prompt") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("prompt_template"), str):
        raise ExportError(f"{path}: expected an object with a \"prompt_template\" string; fix it or pass --prompt")
    generation = {}
    if cfg.get("num_beams") is not None:
        generation["num_beams"] = int(cfg["num_beams"])
    if cfg.get("max_output_length") is not None:
        generation["max_new_tokens"] = int(cfg["max_output_length"]) - (1 if kind == "seq2seq" else 0)
    found = {"template": cfg["prompt_template"], "input": "json", "generation": generation, "parser": "whole"}
    if cfg.get("max_input_length") is not None:
        found["max_input_tokens"] = int(cfg["max_input_length"])
    return found


def resolve(task: str, prompt, base, kind: str):
    """--prompt / llm_config.json -> a prompt object (dict with a "template"), or `prompt` unchanged
    when it is a plain prompt (a text, or a dict without "template": stored as it is)."""
    if prompt is None:
        return from_llm_config(base, kind)
    if isinstance(prompt, str) and "{" not in prompt and preset_path(task, prompt).is_file():
        return json.loads(preset_path(task, prompt).read_text(encoding="utf-8"))
    if isinstance(prompt, str) and prompt.startswith("seed-"):
        raise ExportError(f"no prompt preset {prompt!r} for task {task}; presets: {', '.join(presets(task)) or 'none'}")
    return prompt


def apply(spec: dict, task: str, prompt, base, kind: str, sample_inputs) -> dict:
    """The task's export spec with a prompt object's settings laid over it: prompt, generation,
    parser, max_input_tokens, and probes in the model's own format (the task's sample inputs)."""
    found = resolve(task, prompt, base, kind)
    if not isinstance(found, dict) or "template" not in found:
        if found is not None:
            spec = dict(spec, prompt=found)
        return spec
    unknown = set(found) - KEYS
    if unknown:
        raise ExportError(f"prompt object: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KEYS))}")
    system = found.get("system")
    text = found["template"]
    if "{system}" in text:
        if not isinstance(system, str):
            raise ExportError("the prompt template has a {system} hole but no \"system\" text")
        text = text.replace("{system}", system)
    if text.count("{input}") != 1:
        raise ExportError(f"the prompt template needs exactly one {{input}} hole, found {text.count('{input}')}")
    prefix, suffix = text.split("{input}")
    as_json = found.get("input", "text") == "json"
    spec = dict(spec)
    spec["prompt"] = {**(spec.get("prompt") or {}), "template": text, "prefix": prefix, "suffix": suffix,
                      "system": system, "input": "json" if as_json else "text"}
    spec["generation"] = {**(spec.get("generation") or {}), **(found.get("generation") or {})}
    for key in ("parser", "max_input_tokens"):
        if found.get(key) is not None:
            spec[key] = found[key]
    render = lambda x: json.dumps(x) if as_json or not isinstance(x, str) else x
    spec["probes"] = [prefix + render(x) + suffix for x in sample_inputs]
    return spec
