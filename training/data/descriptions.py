"""Training data for descriptions (`edgesight train describe` trains on it).

The seed's generator, generalised: any detector's label and scene vocabulary (edgesight.tasks.
descriptions.Vocabulary), counts up to dozens, several sentences per input, deterministic with a
seed. Inputs come from a detector's JSON files on disk or are sampled synthetically; rows are
{"input": detector JSON, "output": sentence} in JSONL. The model is trained on the compact
rendering of the input ("2 plastic, 1 metal; scene: grass"), the same text the Describer sends.

    edgesight train describe --out runs/describe --steps 150                  # SmolLM2, causal
    edgesight train describe --kind seq2seq --base ./flan-t5-small --out runs/t5
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from ...bundle import atomic_write_bytes
from ...defaults import DATA_DIR
from ...errors import TrainingError
from ...tasks.descriptions import (MIN_CONFIDENCE, PROMPT, SCENE_THRESHOLD, TEMPLATES, UNKNOWN_SCENE, Facts,
                                  Vocabulary, compose, humanize, parse_input, render_facts)

DATA_VERSION = "describe-data-1"
SYSTEM = "Describe the detections in one sentence."   # short: every token is paid in training


def extra_labels() -> list[str]:
    """General detector classes (Objects365) the generator mixes in, so a model copies labels it has
    no phrases for; names with several parts or plural-looking names are left out."""
    names = (DATA_DIR / "objects365_categories.txt").read_text(encoding="utf-8").splitlines()
    keep = {humanize(n) for n in names if "/" not in n}
    return sorted(n for n in keep if n.replace(" ", "").isalpha() and len(n.split()) <= 2 and not n.endswith("s"))


def _count(rng: random.Random, max_count: int) -> int:
    r = rng.random()
    if r < 0.45:
        return 1
    if r < 0.8:
        return rng.randint(2, 5)
    if r < 0.93:
        return rng.randint(6, min(12, max_count))
    return rng.randint(min(13, max_count), max_count)


def sample_input(rng: random.Random, vocab: Vocabulary, pool: list[str], *, max_labels: int = 4,
                 max_count: int = 48, p_vocab: float = 0.75) -> dict:
    """One synthetic detector output in the input contract, with below-threshold noise detections
    and scene confidences on both sides of the threshold."""
    k = rng.choices(range(max_labels + 1), weights=[10, 35, 30, 17, 8][: max_labels + 1])[0]
    labels: list[str] = []
    while len(labels) < k:
        source = list(vocab.labels) if (rng.random() < p_vocab or not pool) and vocab.labels else pool
        label = rng.choice(source)
        if label not in labels:
            labels.append(label)
    dets = [{"label": label, "confidence": round(rng.uniform(MIN_CONFIDENCE, 1.0), 2)}
            for label in labels for _ in range(_count(rng, max_count))]
    for _ in range(rng.choice([0, 0, 1, 2])):   # what the default threshold drops
        dets.append({"label": rng.choice(list(vocab.labels) or pool), "confidence": round(rng.uniform(0.05, 0.49), 2)})
    rng.shuffle(dets)
    for d in dets:
        if rng.random() < 0.3:
            x, y = rng.randint(0, 600), rng.randint(0, 400)
            d["bbox"] = [x, y, x + rng.randint(10, 200), y + rng.randint(10, 200)]
    r = rng.random()
    if r < 0.1 or not vocab.scenes:
        scene = {"class": UNKNOWN_SCENE, "confidence": 0.0}
    else:
        scene = {"class": rng.choice(list(vocab.scenes)), "confidence": round(rng.uniform(0.4, 1.0), 2)}
    return {"detections": dets, "scene": scene}


def random_sentence(facts: Facts, vocab: Vocabulary, rng: random.Random) -> str:
    return compose(facts, vocab, rng.choice(TEMPLATES), lambda l: rng.choice(vocab.label_phrases(l)),
                   lambda s: rng.choice(vocab.scene_phrases(s)))


def build_examples(inputs: list, vocab: Vocabulary, *, variations: int = 3, seed: int = 0,
                   min_confidence: float = MIN_CONFIDENCE, scene_threshold: float = SCENE_THRESHOLD) -> list[dict]:
    """Up to `variations` distinct sentences per input, as {"input": detector JSON, "output": sentence}."""
    rng = random.Random(seed)
    rows = []
    for payload in inputs:
        facts = parse_input(payload, min_confidence=min_confidence, scene_threshold=scene_threshold)
        seen: set[str] = set()
        for _ in range(variations * 4):
            if len(seen) == variations:
                break
            sentence = random_sentence(facts, vocab, rng)
            if sentence not in seen:
                seen.add(sentence)
                rows.append({"input": payload, "output": sentence})
    return rows


def synthetic_inputs(n: int, vocab: Vocabulary, *, seed: int = 0, general: bool = True, **kw) -> list[dict]:
    rng = random.Random(seed)
    pool = extra_labels() if general else []
    return [sample_input(rng, vocab, pool, **kw) for _ in range(n)]


def heldout_inputs(n: int = 200, vocab: Vocabulary | None = None, seed: int = 10_007) -> list[dict]:
    """The evaluation inputs: the training distribution under a seed training never uses."""
    return synthetic_inputs(n, vocab or Vocabulary.from_dict(None), seed=seed)


def load_inputs(path) -> list[dict]:
    """Detector outputs from disk: a directory of .json files, one .json (object or list), or .jsonl."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise TrainingError(f"{path} holds no .json detector outputs")
        out = []
        for f in files:
            out += load_inputs(f)
        return out
    if not path.is_file():
        raise TrainingError(f"{path} does not exist; pass a directory of detector .json files or a .jsonl file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: not valid JSON ({exc})") from None
    return [r["input"] if isinstance(r, dict) and "detections" not in r and "input" in r else r for r in rows]


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path} does not exist; build it with the data builder or pass --inputs")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: not valid JSONL ({exc})") from None
    if not all(isinstance(r, dict) and {"input", "output"} <= r.keys() for r in rows):
        raise TrainingError(f"{path}: every line must be an object with \"input\" and \"output\"")
    return rows


def write_jsonl(rows: list[dict], path) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def train_format(example: dict) -> tuple[str, str]:
    """(prompt, answer) as the Describer will send it: the compact facts behind the instruction."""
    payload = example["input"]
    facts = parse_input(payload) if not isinstance(payload, Facts) else payload
    return PROMPT.replace("{input}", render_facts(facts)), example["output"]
