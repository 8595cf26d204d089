"""Keyword extraction evaluation (`edgesight eval keywords`), the vocabulary + negation-scope baseline,
and the latency benchmark against the seed's path.

    run_eval(bundle, threads=2, limit=40)   # {"model": info, "sets": {name: {"model": scores, "baseline": ...}}}
    python -m edgesight.evaluation.keywords bench --bundle int8=DIR --seed-adapter ADAPTER --threads 2
    python -m edgesight.evaluation.keywords data --out DIR    # the training data as train/val JSONL

Default prompt sets (from a checkout): the frozen set (tests/data/keywords_frozen.jsonl, 294 prompts in
12 families, scored per family; see keywords_frozen.md), the older hand-written set
(tests/data/keywords_handwritten.jsonl) and the validation split of the data builder. Scores are `edgesight.tasks.keywords.score`
(the training loop reports the same figures).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..cli import add_runtime_arguments
from ..errors import InputError
from ..lexicon import canonical, dedupe, objects365
from ..tasks.keywords import KeywordExtractor, score, vocabulary_arg

HANDWRITTEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "keywords_handwritten.jsonl"
# written before the issue-13 changes, never edited to fit a model; rows carry a "family" (scored per family)
FROZEN = HANDWRITTEN.with_name("keywords_frozen.jsonl")
BENCH_OPTIONS = {"limit": 40, "with_baseline": False}  # what the benchmark suite runs (a minute or so)

# ----------------------------------------------------------------------------- baseline

NEGATORS = ("not", "no", "ignore", "except", "exclude", "excluding", "without", "skip", "avoid", "neither", "nor",
            "don't", "dont", "never", "nothing", "anything", "leave", "drop", "instead")


def baseline(prompt: str) -> list[str]:
    """Vocabulary lookup over the Objects365 names + a negation-scope rule: a name is kept when an
    even number of negation cues precede it in its clause ("ignore what is not X" keeps X)."""
    names = {canonical(p).lower() for label in objects365() for p in label.split("/")}
    out = []
    for clause in re.split(r"[.;!?]|\bbut\b|\bonly\b|\bjust\b", prompt.lower()):
        words = re.findall(r"[a-z0-9][a-z0-9'\-]*", clause)
        negs, i = 0, 0
        while i < len(words):
            for n in (3, 2, 1):
                name = canonical(" ".join(words[i:i + n])).lower()
                if len(words[i:i + n]) == n and name in names:
                    if negs % 2 == 0:
                        out.append(canonical(name))
                    i += n
                    break
            else:
                negs += words[i] in NEGATORS or (words[i] == "than" and i and words[i - 1] == "other")
                i += 1
    return dedupe(out)


# ----------------------------------------------------------------------------- `edgesight eval keywords`

def read_jsonl(path) -> list[dict]:
    """Rows {"input": prompt, "output": [names or lists of accepted names]} of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass JSONL files of {{input, output}} rows")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not JSON ({exc})") from None
    return rows


def _eval_sets(files) -> dict[str, list[dict]]:
    """The given JSONL files, or the hand-written set (in a source checkout) + the validation split."""
    if files:
        return {Path(f).name: read_jsonl(f) for f in files}
    from ..training.data.keywords import DATA_VERSION, build
    sets = {path.name: read_jsonl(path) for path in (FROZEN, HANDWRITTEN) if path.is_file()}
    sets[f"validation ({DATA_VERSION}, seed 0)"] = build(0, 300, seed=0)["val"]
    return sets


def run_eval(bundle=None, *, threads: int | None = None, backend: str | None = None, device: str | None = "cpu",
             data=None, limit: int | None = None, with_baseline: bool = True, vocabulary=None) -> dict:
    """Precision/recall/F1/exact-set and mean latency of a bundle (None: the default), next to the
    baseline, per prompt set. `data`: JSONL paths (default: see the module doc); `limit`: at most
    this many prompts per set; `vocabulary`: "objects365" or a list of allowed labels."""
    import time
    task = KeywordExtractor.from_pretrained(bundle, backend=backend, threads=threads, device=device, vocabulary=vocabulary)
    report = {"model": task.info(), "sets": {}}
    for name, rows in _eval_sets(data).items():
        rows = rows[:limit]
        prompts, gold = [r["input"] for r in rows], [r["output"] for r in rows]
        t0 = time.perf_counter()
        preds = [task(p) for p in prompts]
        ms = (time.perf_counter() - t0) * 1000 / max(1, len(prompts))
        entry = {"model": {**score(preds, gold).to_dict(), "mean_ms": round(ms, 2)},
                 "errors": [{"input": p, "gold": g, "pred": q} for p, g, q in zip(prompts, gold, preds)
                            if score([q], [g]).exact < 1][:60]}
        if any("family" in r for r in rows):
            entry["families"] = per_family(rows, preds)
        if with_baseline:
            entry["baseline"] = score([baseline(p) for p in prompts], gold).to_dict()
        report["sets"][name] = entry
    return report


def per_family(rows: list[dict], preds: list[list[str]]) -> dict:
    """Scores of the rows of each "family" (rows without one count as "other")."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.get("family", "other"), []).append(i)
    return {fam: score([preds[i] for i in idx], [rows[i]["output"] for i in idx]).to_dict()
            for fam, idx in groups.items()}


def add_eval_arguments(p) -> None:
    p.add_argument("--model", default=None, help="bundle directory (default: the embedded default)")
    add_runtime_arguments(p)
    p.add_argument("--data", nargs="+", default=None,
                   help="JSONL files of {input, output[, family]}; default: the frozen set, the hand-written set "
                        "and the validation split")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts per file")
    p.add_argument("--no-baseline", action="store_true", help="skip the vocabulary + negation-scope baseline")
    p.add_argument("--vocabulary", default=None, help="'objects365' or a comma-separated list of allowed labels")


def from_args(args) -> dict:
    return run_eval(args.model, threads=args.threads, backend=args.backend, device=args.device, data=args.data,
                    limit=args.limit, with_baseline=not args.no_baseline, vocabulary=vocabulary_arg(args.vocabulary))


# ----------------------------------------------------------------------------- latency benchmark

def benchmark(bundles: dict, prompts: list[str], *, seed_adapter=None, threads: int = 2, rounds: int = 3) -> dict:
    """Median ms per prompt of each bundle (KeywordExtractor, one prompt per call) and, with
    `seed_adapter`, of the seed's path: transformers + PeftModel fp32 `generate` on the same base
    and adapter. Cases run round-robin in one process so machine drift hits them alike; compare
    the ratios, not the absolute numbers."""
    import statistics
    import time

    runners = {name: KeywordExtractor.from_pretrained(path, threads=threads) for name, path in bundles.items()}
    if seed_adapter is not None:
        runners["seed: transformers+peft fp32"] = _seed_path(seed_adapter, threads)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for name, run in runners.items():  # warm-up: first call pays for lazy initialisation
        run(prompts[0])
    for _ in range(rounds):
        for p in prompts:
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(p)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: {"median_ms": round(statistics.median(ts), 2), "p90_ms": round(sorted(ts)[int(0.9 * len(ts))], 2),
                   "n": len(ts)} for name, ts in times.items()}


def _seed_path(adapter_dir, threads: int):
    """The prototype's inference: base + PeftModel in fp32, chat prompt, `generate`, parse the text."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..export.weights import smollm2_gguf
    from ..tasks.keywords import parse_generated
    from ..training.data.keywords import SYSTEM
    from ..training.trainer import chat_parts
    torch.set_num_threads(threads)
    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    def run(prompt: str) -> list[str]:
        ids = tok(chat_parts(tok, prompt, "", SYSTEM)[0], add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=24, do_sample=False, eos_token_id=im_end,
                                 pad_token_id=im_end)
        return parse_generated(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return run


def _main(argv=None) -> None:
    """python -m edgesight.evaluation.keywords bench --bundle NAME=DIR ... [--seed-adapter DIR] --threads 2"""
    import argparse

    from ..bundle import atomic_write_bytes
    from ..cli import threads_arg
    p = argparse.ArgumentParser(prog="python -m edgesight.evaluation.keywords")
    p.add_argument("command", choices=["bench", "data"])
    p.add_argument("--bundle", action="append", default=[], help="NAME=DIR (repeatable)")
    p.add_argument("--seed-adapter", default=None)
    p.add_argument("--prompts", default=str(HANDWRITTEN))
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=threads_arg, default=2)
    p.add_argument("--out", default=None, help="bench: JSON report; data: directory for train/val JSONL")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.command == "data":
        from ..training.data.keywords import build, write_jsonl
        data = build(seed=args.seed)
        for split in ("train", "val"):
            write_jsonl(data[split], Path(args.out or ".") / f"keywords_{split}.jsonl")
        print(json.dumps(data["meta"]))
        return
    prompts = [r["input"] for r in read_jsonl(args.prompts)][: args.limit]
    result = benchmark(dict(b.split("=", 1) for b in args.bundle), prompts, seed_adapter=args.seed_adapter,
                       threads=args.threads, rounds=args.rounds)
    text = json.dumps({"threads": args.threads, "prompts": len(prompts), "results": result}, indent=2)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    print(text)


if __name__ == "__main__":
    _main()
