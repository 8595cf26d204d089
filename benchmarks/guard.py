"""The CI guard: ratios measured in one run and quality metrics against committed bounds.

    python -m benchmarks guard --baseline benchmarks/baseline.json --results out.json

baseline.json:
    {"ratios":  {KEY: {"max": 1.05, "why": "..."}},          # or "min"; "optional": true = warn if not measured
     "quality": {CASE_ID: {METRIC: {"min": 0.9}}}}

A ratio fails only when its whole 95% interval is past the bound (a real regression); a median
past the bound with an interval that still reaches it is reported as noise and does not fail.
Quality is deterministic and fails on any miss. Absolute times are never checked.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgesight.errors import InputError


@dataclass
class Check:
    status: str   # pass | fail | noisy | missing
    kind: str     # ratio | quality
    key: str
    measured: str
    bound: str
    why: str = ""


@dataclass
class GuardResult:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def report(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in ("fail", "noisy", "missing", "pass")}
        head = "guard: " + ("FAILED" if not self.ok else "ok") + " — " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        order = {"fail": 0, "noisy": 1, "missing": 2, "pass": 3}
        rows = [(c.status.upper(), c.kind, c.key, c.measured, c.bound, c.why)
                for c in sorted(self.checks, key=lambda c: order[c.status])]
        widths = [max(len(r[i]) for r in rows) for i in range(5)] if rows else []
        body = ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(5)) + f"  {r[5]}" for r in rows]
        return "\n".join([head, *body])


def _load(path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist; "
                         + ("run `python -m benchmarks run --quick --json FILE` first" if what == "results" else "pass --baseline benchmarks/baseline.json")) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path} is not valid JSON ({exc})") from None


def check(results: dict, baseline: dict) -> GuardResult:
    out = GuardResult()
    ratios = {r["key"]: r for r in results.get("ratios", [])}
    for key, rule in baseline.get("ratios", {}).items():
        if not {"max", "min"} & set(rule):
            raise InputError(f"baseline ratio {key!r} has neither 'max' nor 'min'; add one")
        bound = " and ".join(f"{'<=' if k == 'max' else '>='} {rule[k]:g}" for k in ("max", "min") if k in rule)
        why = rule.get("why", "")
        r = ratios.get(key)
        if r is None or r["status"] != "ok":
            reason = r["reason"] if r else "not in this run"
            out.checks.append(Check("missing" if rule.get("optional") else "fail", "ratio", key, f"not measured ({reason})", bound, why))
            continue
        lo, hi = r["ci95"]
        measured = f"{r['ratio']:.3f} (CI {lo:.3f}–{hi:.3f})"
        past = ("max" in rule and r["ratio"] > rule["max"]) or ("min" in rule and r["ratio"] < rule["min"])
        surely = ("max" in rule and lo > rule["max"]) or ("min" in rule and hi < rule["min"])
        status = "fail" if surely else "noisy" if past else "pass"
        out.checks.append(Check(status, "ratio", key, measured, bound, why))
    cases = {c["id"]: c for c in results.get("cases", [])}
    for cid, metrics in baseline.get("quality", {}).items():
        for metric, rule in metrics.items():
            bound = f">= {rule['min']:g}"
            value = (cases.get(cid, {}).get("quality") or {}).get(metric)
            if value is None:
                reason = (cases.get(cid) or {}).get("reason") or "not in this run"
                out.checks.append(Check("missing" if rule.get("optional") else "fail", "quality", f"{cid} {metric}",
                                        f"not measured ({reason})", bound, rule.get("why", "")))
            else:
                out.checks.append(Check("pass" if value >= rule["min"] else "fail", "quality", f"{cid} {metric}",
                                        f"{value:.3f}", bound, rule.get("why", "")))
    return out


def guard(results_path, baseline_path) -> GuardResult:
    return check(_load(results_path, "results"), _load(baseline_path, "baseline"))
