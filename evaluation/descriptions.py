"""Descriptions evaluation (`edgesight eval describe`): rule pass rates before and after the fallback
on held-out detector outputs, latency, and optionally the seed's PyTorch path on the same inputs.

    run_eval([b1, b2], threads=2, n=200, latency_n=16, with_seed_path=True)
"""
from __future__ import annotations

import json
from pathlib import Path

from ..cli import add_runtime_arguments
from ..errors import InputError
from ..tasks.descriptions import (PROMPT, Describer, Description, Vocabulary, check_sentence, default_generation,
                                  first_sentence, parse_input, render_facts)

BENCH_OPTIONS = {"n": 40, "latency_n": 1}  # what the benchmark suite runs (a minute or so)


def score_descriptions(inputs: list, results: list[Description], vocab: Vocabulary, **thresholds) -> dict:
    """Rule pass rates of the model's sentences (before fallback), the fallback rate, and the rate
    of final texts that pass every rule (must be 1.0: the fallback never lies)."""
    n = len(results)
    rules = {rule: round(sum(r.checks[rule] for r in results) / n, 4) for rule in results[0].checks}
    final = [check_sentence(r.text, parse_input(x, **thresholds), vocab).passed for x, r in zip(inputs, results)]
    return {"n": n, "pass_before_fallback": round(sum(all(r.checks.values()) for r in results) / n, 4),
            "rules": rules, "fallback_rate": round(sum(r.fallback for r in results) / n, 4),
            "pass_after_fallback": round(sum(final) / n, 4),
            "failures": [{"input": render_facts(parse_input(x, **thresholds)), "generated": r.generated, "problems": r.problems}
                         for x, r in zip(inputs, results) if r.fallback][:12]}


def _timed(paths: dict, inputs) -> tuple[dict, dict]:
    """Time single descriptions round-robin over every path (so load changes on a shared machine hit
    all paths alike): {name: outputs}, {name: {n, median_ms, p90_ms}}."""
    import statistics
    import time
    outs: dict = {name: [] for name in paths}
    ms: dict = {name: [] for name in paths}
    for fn in paths.values():
        fn(inputs[:1])                               # warm-up: load, prefix cache
    for x in inputs:
        for name, fn in paths.items():
            t0 = time.perf_counter()
            outs[name] += fn([x])
            ms[name].append((time.perf_counter() - t0) * 1000)
    stats = {}
    for name, v in ms.items():
        v.sort()
        stats[name] = {"n": len(v), "median_ms": round(statistics.median(v), 1), "p90_ms": round(v[int(0.9 * (len(v) - 1))], 1)}
    return outs, stats


def run_eval(bundle=None, *, threads: int | None = None, backend: str | None = None, device: str | None = "cpu",
             inputs=None, n: int = 200, latency_n: int = 40, with_seed_path: bool = False,
             base=None, adapter=None) -> dict:
    """Scores of one bundle (None: the default) or a list of bundles on `n` held-out inputs (`inputs`:
    a .jsonl/.json file or directory of detector outputs; default: the synthetic held-out set), and
    single-input latency on the first `latency_n` (0: quality only). `with_seed_path` also runs the
    seed's path (transformers fp32 + PeftModel on `base` and `adapter`, default: the first bundle's
    provenance) on those inputs, for the speed-up in the same run."""
    from ..training.data.descriptions import heldout_inputs, load_inputs
    bundles = list(bundle) if isinstance(bundle, (list, tuple)) else [bundle]
    rows = (load_inputs(inputs) if inputs else heldout_inputs(n))[:n]
    timed = rows[:latency_n]
    report: dict = {"inputs": len(rows), "source": str(inputs) if inputs else "synthetic held-out (seed 10007)",
                    "bundles": []}
    tasks = {str(path): Describer.from_pretrained(path, backend=backend, threads=threads, device=device) for path in bundles}
    for task in tasks.values():
        report["bundles"].append({"model": task.info(), **score_descriptions(rows, task(rows), task.vocab)})
    paths = dict(tasks)
    task = next(iter(tasks.values()))
    if with_seed_path:
        prov = task.bundle.get("provenance") or {}
        base = base or prov.get("base")
        if base is None:
            from ..export.weights import smollm2_gguf
            base = str(smollm2_gguf())
        adapter = adapter or prov.get("adapter") or _shipped_adapter()
        paths["seed_path"] = seed_path(base, adapter, kind="seq2seq" if task.bundle.kind == "seq2seq" else "causal",
                                       threads=task.threads)
        report["seed_path"] = {"base": str(base), "adapter": str(adapter)}
    if not timed:
        return report
    outs, latency = _timed(paths, timed)
    for entry, name in zip(report["bundles"], tasks):
        entry["latency"] = latency[name]
    if with_seed_path:
        ref = [task.finish(parse_input(x), s) for x, s in zip(timed, outs["seed_path"])]
        report["seed_path"].update(score_descriptions(timed, ref, task.vocab), latency=latency["seed_path"])
        report["speedup_vs_seed_path"] = {name: round(latency["seed_path"]["median_ms"] / latency[name]["median_ms"], 2)
                                          for name in tasks}
    return report


def _shipped_adapter() -> str:
    from ..defaults import ADAPTERS_DIR
    found = sorted(ADAPTERS_DIR.glob("describe-*"))
    if not found:
        raise InputError("no shipped describe adapter; pass --adapter for --seed-path")
    return str(found[0])


def add_eval_arguments(p) -> None:
    p.add_argument("--model", nargs="+", default=[None], help="bundle directories (default: the embedded default)")
    add_runtime_arguments(p)
    p.add_argument("--inputs", default=None, help="held-out detector outputs (.jsonl / .json / directory); "
                                                  "default: the synthetic held-out set (a seed training never uses)")
    p.add_argument("-n", "--n", type=int, default=200, help="held-out inputs to evaluate")
    p.add_argument("--latency-n", type=int, default=40, help="inputs timed one at a time (median, p90)")
    p.add_argument("--seed-path", action="store_true",
                   help="also run the seed's path (transformers fp32 + PeftModel, same base and adapter) "
                        "on the --latency-n inputs, for the speed-up in the same run")
    p.add_argument("--base", default=None, help="base model for --seed-path (default: the SmolLM2 GGUF)")
    p.add_argument("--adapter", default=None, help="adapter for --seed-path (default: the bundle's shipped adapter)")


def from_args(args) -> dict:
    return run_eval(args.model, threads=args.threads, backend=args.backend, device=args.device, inputs=args.inputs,
                    n=args.n, latency_n=args.latency_n, with_seed_path=args.seed_path, base=args.base,
                    adapter=args.adapter)


# ----------------------------------------------------------------------------- the seed's PyTorch path

def seed_path(base, adapter, *, kind: str = "causal", threads: int = 1):
    """The prototype's way to run the model, for latency/quality comparisons in the same run:
    transformers fp32 + PeftModel (same base and adapter), `generate()` per input (beam search as the
    seed for seq2seq, greedy for causal). Returns describe(payloads) -> sentences."""
    import torch
    from peft import PeftModel

    from ..training.trainer import chat_parts, load_base
    torch.set_num_threads(threads)
    auto, where, kw, tok = load_base(base, kind)
    model = PeftModel.from_pretrained(auto.from_pretrained(where, **kw, torch_dtype=torch.float32), str(adapter)).eval()
    recipe_path = Path(adapter) / "recipe.json"
    recipe = json.loads(recipe_path.read_text(encoding="utf-8")) if recipe_path.is_file() else {}
    chat = kind == "causal" and recipe.get("chat_template", bool(getattr(tok, "chat_template", None)))
    gen = default_generation("seq2seq" if kind == "seq2seq" else "causal-lm")
    eos = tok.convert_tokens_to_ids("<|im_end|>") if chat and "<|im_end|>" in tok.get_vocab() else tok.eos_token_id

    def describe(payloads) -> list[str]:
        out = []
        for payload in payloads:
            text = PROMPT.replace("{input}", render_facts(parse_input(payload)))
            if chat:
                text = chat_parts(tok, text, "", recipe.get("system"))[0]
            ids = tok(text, return_tensors="pt", add_special_tokens=not chat)
            with torch.no_grad():
                seq = model.generate(**ids, **gen, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id or eos)
            new = seq[0] if kind == "seq2seq" else seq[0, ids["input_ids"].shape[1]:]
            out.append(first_sentence(tok.decode(new, skip_special_tokens=True)))
        return out
    return describe
