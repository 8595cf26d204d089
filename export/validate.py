"""Validation: the merged torch model is the reference; every export runs through the SDK backend
users will run (onnx, gguf) on the same probe prompts, greedy, N new tokens.

Recorded per format: exact-match rate (whole continuation identical), mean agreed prefix length,
whether the backend tokenized the prompts identically, and for fp32/f16 formats the max |logit
difference| of the first generated step. Exports that must be exact (fp32 ONNX, f16/f32 GGUF) and
are not raise ExportError.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgesight.errors import ExportError
from edgesight.generation import GenerationConfig

# Small default probes per task (the registry names the tasks); callers pass their own task prompts.
DEFAULT_PROBES = {
    "keywords": ["Segment cats, dogs, but not humans", "Find every bicycle and car on the street",
                 "Highlight the bottles and cups on the table"],
    "describe": ['{"detections": [{"label": "plastic", "confidence": 0.92}], "scene": {"class": "grass", "confidence": 0.95}}',
                 '{"detections": [{"label": "dog", "confidence": 0.81}], "scene": {"class": "beach", "confidence": 0.77}}'],
}
GENERIC_PROBES = ["A photo of a cat next to a chair.", "Keywords: car, person, bottle.", "Find every cup in the picture."]


def default_probes(task: str) -> list[str]:
    return list(DEFAULT_PROBES.get(task, GENERIC_PROBES))


@dataclass
class Reference:
    """Greedy continuations and first-step logits of the reference model, per probe prompt."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    outputs: list[list[int]]
    margins: list[list[float]]    # per generated token: the reference's top-1 minus top-2 logit
    logits: list[np.ndarray] = field(repr=False)
    max_new_tokens: int
    eos: set[int] = field(default_factory=set)


@dataclass
class Fidelity:
    format: str
    exact_match: float            # share of probes whose whole greedy continuation equals the reference's
    near_ties: int                # probes that diverged only where the reference's top-2 logits were within tie_tol
    mean_agreed_prefix: float     # mean number of leading tokens equal to the reference's
    mean_reference_length: float
    prompt_ids_match: bool        # the backend's tokenizer gave the reference's prompt ids
    max_logit_diff: float | None  # first step, for fp32 / f16 formats
    probes: int
    new_tokens: int
    outputs: list[str] = field(default_factory=list)  # the export's decoded continuations

    def to_dict(self) -> dict:
        return asdict(self)


def reference(model, prompts: list[str], max_new_tokens: int, eos=()) -> Reference:
    """Run the reference model (edgesight.runtime.torch.TorchTextModel) on the probes."""
    ids = [model.encode(p) for p in prompts]
    outs, margins = zip(*(model.greedy_margins(p, max_new_tokens) for p in prompts))
    return Reference(prompts, ids, list(outs), list(margins), [first_logits(model, i) for i in ids],
                     max_new_tokens, set(eos))


def first_logits(model, prompt_ids) -> np.ndarray:
    """Logits of the first generated token: the torch and gguf backends have next_token_logits, the
    onnx backend's generation loop exposes its first step as prefill()."""
    if hasattr(model, "next_token_logits"):
        return model.next_token_logits(prompt_ids)
    if hasattr(model, "clear_cache"):
        model.clear_cache()   # a cached prefix must not hide the full forward pass
    return np.asarray(model.prefill([list(prompt_ids)])[0][0], dtype=np.float32)


def agreed_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def until_eos(ids, eos: set[int]) -> list[int]:
    """Backends differ in whether the final eos is returned; compare what comes before it."""
    ids = list(ids)
    return next((ids[:i] for i, t in enumerate(ids) if t in eos), ids)


def compare(ref: Reference, model, fmt: str, *, logits: bool, tie_tol: float = 0.0) -> Fidelity:
    """Greedy-decode every probe on `model` (an SDK TextModel) and compare with the reference."""
    config = GenerationConfig(max_new_tokens=ref.max_new_tokens)
    outs, prefixes, same_prompt, diffs, ties = [], [], True, [], 0
    for prompt, ref_prompt, ref_out, margins, ref_logits in zip(ref.prompts, ref.prompt_ids, ref.outputs,
                                                                ref.margins, ref.logits):
        ids = model.encode(prompt)
        same_prompt &= list(ids) == list(ref_prompt)
        out = until_eos(model.generate_ids([prompt], config)[0][0], ref.eos)
        outs.append(out)
        k = agreed_prefix(out, ref_out)
        prefixes.append(k)
        ties += out != ref_out and k < len(margins) and margins[k] <= tie_tol
        if logits:
            diffs.append(float(np.max(np.abs(first_logits(model, ids) - ref_logits))))
    exact = [o == r for o, r in zip(outs, ref.outputs)]
    return Fidelity(fmt, round(sum(exact) / len(exact), 4), int(ties), round(float(np.mean(prefixes)), 2),
                    round(float(np.mean([len(r) for r in ref.outputs])), 2), bool(same_prompt),
                    round(max(diffs), 5) if diffs else None, len(ref.prompts), ref.max_new_tokens,
                    [model.decode(o) for o in outs])


def require_exact(fid: Fidelity) -> None:
    """Every probe must decode to the reference's tokens, except where the reference itself was within
    a numerical tie (its top-2 logits closer than the format's tie tolerance) at the first difference."""
    matched = round(fid.exact_match * fid.probes) + fid.near_ties
    if matched < fid.probes or not fid.prompt_ids_match:
        why = ("its tokenizer gives other prompt ids than the reference's" if not fid.prompt_ids_match
               else f"only {fid.exact_match:.0%} of the probes decode to the reference's tokens "
                    f"({fid.near_ties} more diverged at a near-tie; mean agreed prefix "
                    f"{fid.mean_agreed_prefix}/{fid.mean_reference_length})")
        raise ExportError(f"the {fid.format} export does not match the torch reference: {why}; max |logit diff| "
                          f"{fid.max_logit_diff}. No {fid.format} bundle was written. Report this with the model "
                          "and the probes; the quantized formats may still be usable")


def table(rows: list[dict]) -> str:
    """A fixed-width text table of the export report rows."""
    cols = [("format", "format"), ("precision", "precision"), ("MB", "mb"), ("export s", "seconds"),
            ("exact", "exact_match"), ("ties", "near_ties"), ("prefix", "mean_agreed_prefix"), ("max|dlogit|", "max_logit_diff"),
            ("agreement", "agreement"), ("status", "status")]
    cols = [c for c in cols if c[1] in ("format", "status") or any(r.get(c[1]) is not None for r in rows)]
    cells = [[h for h, _ in cols]] + [["" if r.get(k) is None else str(r.get(k)) for _, k in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
