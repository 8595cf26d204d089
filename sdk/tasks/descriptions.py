"""Descriptions: detector + scene-classifier JSON -> one natural sentence that never lies about counts.

    ds = edgesight.Describer.from_pretrained()
    ds({"detections": [{"label": "plastic", "confidence": 0.92}], "scene": {"class": "grass", "confidence": 0.95}})
    # Description(text="There is 1 plastic bottle on the grass.", fallback=False, checks={...})

The flow reads top to bottom:
1. the input contract: `parse_input` validates the JSON and reduces it to `Facts` (label counts in
   order of first appearance, the scene when its confidence passes `scene_threshold`);
2. `render_facts` writes the facts compactly ("2 plastic, 1 metal; scene: grass"): the model sees
   a dozen tokens instead of raw JSON, which keeps prefill short on an edge CPU;
3. the model (ONNX seq2seq with beam search, or a causal LoRA on llama.cpp) writes a sentence;
4. `check_sentence` parses the sentence back (digits and number words, singular/plural, label
   phrases, scene phrases, is/are) and compares it with the facts; when any rule fails, the
   deterministic `template_sentence` replaces it and the result says `fallback=True`.
`Vocabulary` (label -> noun phrases, scene -> place phrases) is shared by the data builder
(edgesight.training.data.descriptions), the guard and the fallback, so all three speak the same words.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BundleError, InputError
from ..limits import check_number, limit, parse_json
from ..inflect import plural as pluralize
from ..record import Record
from .base import Task, adapter_json, prompt_halves

MIN_CONFIDENCE = 0.5    # the seed's detector threshold
SCENE_THRESHOLD = 0.8   # the seed mentions a scene only at >= 0.8
UNKNOWN_SCENE = "unknown"

# ----------------------------------------------------------------------------- vocabulary

# The seed's garbage vocabulary, made countable (counts must read naturally: "2 plastic bottles",
# not "2 plastic debris"), plus a few general scenes. Phrases are singular; plurals are derived.
GARBAGE_VOCAB = {
    "domain": "garbage",
    "labels": {
        "plastic": ["plastic bottle", "plastic item", "piece of plastic waste"],
        "glass": ["glass bottle", "glass item", "piece of broken glass"],
        "metal": ["metal can", "aluminum can", "metal item"],
        "paper": ["paper item", "piece of cardboard", "piece of paper waste"],
        "organic": ["piece of organic waste", "food scrap", "organic item"],
    },
    "scenes": {
        "grass": ["on the grass", "in a grassy area", "on green grass", "on the lawn"],
        "sandy": ["on sandy ground", "on the beach", "in sandy terrain", "on the sand"],
        "rocky": ["on rocky terrain", "among rocks", "on rocky ground", "between stones"],
        "marshy": ["in a marshy area", "in wetlands", "in swampy terrain", "near a marsh"],
        "street": ["on the street", "along the road", "on the pavement"],
        "indoor": ["indoors", "inside a building", "in an indoor space"],
        "forest": ["in the forest", "among the trees", "in the woods"],
    },
}

# Words that carry no scene identity: a scene is recognised by its distinctive words only.
PLACE_STOPWORDS = {"on", "in", "at", "the", "a", "an", "of", "near", "among", "between", "along", "inside",
                   "area", "terrain", "ground", "space", "scene", "setting", "green", "scattered"}


def humanize(label: str) -> str:
    """A detector class name as a noun phrase: "traffic_light" -> "traffic light", "Cabinet/shelf" -> "cabinet"."""
    text = re.split(r"[/|]", label.strip())[0]
    return re.sub(r"[\s_\-]+", " ", text).strip().lower()


@dataclass
class Vocabulary(Record):
    """label -> singular noun phrases; scene class -> place phrases; `domain` names the empty case
    ("No garbage detected"). Labels or scenes not listed fall back to their humanized names."""

    labels: dict[str, list[str]] = field(default_factory=dict)
    scenes: dict[str, list[str]] = field(default_factory=dict)
    domain: str = "objects"

    @classmethod
    def from_dict(cls, d: dict | None) -> "Vocabulary":
        d = d or GARBAGE_VOCAB
        if not isinstance(d, dict) or not isinstance(d.get("labels", {}), dict) or not isinstance(d.get("scenes", {}), dict):
            raise InputError("a vocabulary is a JSON object {\"labels\": {label: [phrases]}, \"scenes\": "
                             "{scene: [phrases]}, \"domain\": str}")
        norm = lambda m: {humanize(k): [str(p).strip().lower() for p in (v or [humanize(k)])] for k, v in m.items()}
        return cls(norm(d.get("labels", {})), norm(d.get("scenes", {})), str(d.get("domain", "objects")))

    @classmethod
    def load(cls, path) -> "Vocabulary":
        """A vocabulary JSON file, or a text file of class names one a line (labels only)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"vocabulary file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: not valid JSON ({exc})") from None
        return cls({humanize(l): [humanize(l)] for l in text.splitlines() if l.strip()}, {}, "objects")

    def label_phrases(self, label: str) -> list[str]:
        return self.labels.get(label) or [label]

    def scene_phrases(self, scene: str) -> list[str]:
        return self.scenes.get(scene) or [f"in a {scene} scene"]


# ----------------------------------------------------------------------------- input contract

@dataclass
class Facts:
    """What a sentence may say: label counts (first-appearance order) and the confident scene or None."""

    counts: dict[str, int]
    scene: str | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _confidence(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number in [0, 1], got {type(value).__name__} {str(value)[:40]!r}")
    try:
        value = float(value)
    except OverflowError:   # an int of hundreds of digits
        raise InputError(f"{where} must be in [0, 1], got a number too large ({len(str(abs(value)))} digits)") from None
    if not 0.0 <= value <= 1.0:   # NaN fails this too
        raise InputError(f"{where} must be in [0, 1], got {value:g}; pass probabilities, not percentages or logits")
    return value


def parse_input(payload, *, min_confidence: float = MIN_CONFIDENCE, scene_threshold: float = SCENE_THRESHOLD) -> Facts:
    """Validate one detector output and reduce it to Facts. Accepts a dict or a JSON string.

    Contract: {"detections": [{"label": str, "confidence": 0..1, "bbox": [4 numbers] (optional)}],
    "scene": {"class": str, "confidence": 0..1} (optional; null or "unknown" = no scene)}."""
    if isinstance(payload, (str, bytes)):
        payload = parse_json(payload, "description input")
    if not isinstance(payload, dict):
        raise InputError('description input must be an object {"detections": [...], "scene": {...}}, '
                         f"got {type(payload).__name__}")
    if "detections" not in payload:
        raise InputError('description input lacks "detections"; pass [] when nothing was detected')
    dets = payload["detections"]
    if not isinstance(dets, list):
        raise InputError(f'"detections" must be a list of objects, got {type(dets).__name__}')
    if len(dets) > limit("items"):
        raise InputError(f'"detections" has {len(dets)} entries, over the limit of {limit("items")}; '
                         "raise min_confidence in the detector or split the input")
    counts: dict[str, int] = {}
    for i, det in enumerate(dets):
        where = f"detections[{i}]"
        if not isinstance(det, dict):
            raise InputError(f"{where} must be an object with label and confidence, got {type(det).__name__}")
        for key in ("label", "confidence"):
            if key not in det:
                raise InputError(f'{where} lacks "{key}"; every detection needs "label" and "confidence"')
        label = det["label"]
        if not isinstance(label, str) or not humanize(label):
            raise InputError(f"{where}.label must be a non-empty string, got {label!r}")
        conf = _confidence(det["confidence"], f"{where}.confidence")
        bbox = det.get("bbox")
        if bbox is not None:
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
                raise InputError(f"{where}.bbox must be 4 finite numbers [x1, y1, x2, y2], got {str(bbox)[:60]}")
            try:
                for k, v in enumerate(bbox):
                    check_number(v, f"{where}.bbox[{k}]")
            except InputError as exc:
                raise InputError(f"{where}.bbox must be 4 finite numbers [x1, y1, x2, y2] ({exc})") from None
        if conf >= min_confidence:
            counts[humanize(label)] = counts.get(humanize(label), 0) + 1
    scene = payload.get("scene")
    if scene is None:
        return Facts(counts, None)
    if not isinstance(scene, dict):
        raise InputError(f'"scene" must be an object {{"class": str, "confidence": 0..1}} or null, got {type(scene).__name__}')
    for key in ("class", "confidence"):
        if key not in scene:
            raise InputError(f'scene lacks "{key}"; pass {{"class": str, "confidence": 0..1}} or omit "scene"')
    if not isinstance(scene["class"], str):
        raise InputError(f"scene.class must be a string, got {scene['class']!r}")
    conf = _confidence(scene["confidence"], "scene.confidence")
    name = humanize(scene["class"])
    confident = name and name != UNKNOWN_SCENE and conf >= scene_threshold
    return Facts(counts, name if confident else None)


def render_facts(facts: Facts) -> str:
    """The compact model input: "2 plastic, 1 metal; scene: grass" (or "none; scene: none")."""
    objects = ", ".join(f"{n} {label}" for label, n in facts.counts.items()) or "none"
    return f"{objects}; scene: {facts.scene or 'none'}"


# ----------------------------------------------------------------------------- sentences

TEMPLATES = [
    "There {verb} {objects}{place}.",
    "{Objects} {verb} visible{place}.",
    "The image shows {objects}{place}.",
    "{Objects} can be seen{place}.",
    "I can see {objects}{place}.",
]


def count_phrase(n: int, phrase: str) -> str:
    return f"{n} {phrase if n == 1 else pluralize(phrase)}"


def join_list(parts: list[str]) -> str:
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + f", and {parts[-1]}"


def compose(facts: Facts, vocab: Vocabulary, template: str, label_phrase, place_phrase) -> str:
    """A sentence from a template; `label_phrase(label)` / `place_phrase(scene)` choose the words."""
    place = f" {place_phrase(facts.scene)}" if facts.scene else ""
    if not facts.counts:
        return f"No {vocab.domain} detected{place or ' in this image'}."
    objects = join_list([count_phrase(n, label_phrase(label)) for label, n in facts.counts.items()])
    return template.format(verb="is" if facts.total == 1 else "are", objects=objects,
                           Objects=objects[:1].upper() + objects[1:], place=place)


def template_sentence(facts: Facts, vocab: Vocabulary) -> str:
    """The deterministic fallback: first template, first phrase of every label and scene."""
    return compose(facts, vocab, TEMPLATES[0], lambda l: vocab.label_phrases(l)[0], lambda s: vocab.scene_phrases(s)[0])


def first_sentence(text: str) -> str:
    """Models may run on after the sentence: keep the first line up to its first full stop. Bundles
    that stop generating at "." (an end token) return the sentence without it: put it back."""
    text = text.strip().split("\n")[0].strip()
    m = re.search(r"[.!?](\s|$)", text)
    return text[: m.start() + 1] if m else (text + "." if text else text)


# ----------------------------------------------------------------------------- faithfulness guard

UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
NUMBER_WORDS = {w: i for i, w in enumerate(UNITS)} | TENS | {"dozen": 12}
ONE_WORDS = {"a", "an", "single"}          # "a bottle", "a single can"
NEGATIONS = {"no", "nothing", "none", "not", "without"}
BOUNDARIES = {"and", "or", "with", ",", ";", ".", "plus", "of"}
MAX_GAP = 2                                # adjectives allowed between a number and its noun


def tokenize(text: str) -> list[str]:
    """Words (letters of any script), numbers and punctuation, lower-cased."""
    return re.findall(r"\d+|[^\W\d_]+(?:'[^\W\d_]+)?|[.,;:!?]", text.lower().replace("-", " "))


def number_at(tokens: list[str], end: int) -> tuple[int, int] | None:
    """(value, start index) of a number that ends at tokens[end]: "12", "twelve", "twenty one",
    "two dozen", "a", "a single"; None when tokens[end] is not one."""
    tok = tokens[end] if 0 <= end < len(tokens) else ""
    prev = tokens[end - 1] if end > 0 else ""
    if tok.isdigit():
        return int(tok), end
    if tok == "dozen":
        mult = NUMBER_WORDS.get(prev) if prev != "dozen" else None
        return (12 * mult, end - 1) if mult else (12, end - (prev in ONE_WORDS))
    if tok in NUMBER_WORDS:
        if 0 < NUMBER_WORDS[tok] < 10 and prev in TENS:
            return TENS[prev] + NUMBER_WORDS[tok], end - 1
        return NUMBER_WORDS[tok], end
    if tok == "single":
        return 1, end - (prev in ONE_WORDS)
    if tok in ONE_WORDS:
        return 1, end
    return None


@dataclass
class Mention:
    label: str
    start: int
    end: int
    plural: bool | None      # None: singular and plural forms are the same word
    count: int | None = None
    count_start: int | None = None


def _phrase_table(vocab: Vocabulary, labels) -> list[tuple[list[str], str, bool | None]]:
    """(tokens, label, plural?) for every phrase form of every label, longest first. Besides the
    vocabulary's phrases, the label itself counts, also with a count noun ("4 baseball items")."""
    table = []
    for label in dict.fromkeys(list(vocab.labels) + list(labels)):
        for phrase in dict.fromkeys(vocab.label_phrases(label) + [label, f"{label} item", f"piece of {label}"]):
            sing, plur = tokenize(phrase), tokenize(pluralize(phrase))
            if not sing or not plur:   # no word in it (e.g. "★"): it can never be matched, and an empty
                continue               # phrase would match everywhere without advancing
            if sing == plur:
                table.append((sing, label, None))
            else:
                table += [(sing, label, False), (plur, label, True)]
    return sorted(table, key=lambda t: -len(t[0]))


def _scene_keywords(vocab: Vocabulary, scene: str | None) -> dict[str, set[str]]:
    """scene -> the words that identify it: its name plus its phrases' words no other scene uses."""
    scenes = list(dict.fromkeys(list(vocab.scenes) + ([scene] if scene else [])))
    words = {s: set(tokenize(" ".join(vocab.scene_phrases(s)))) - PLACE_STOPWORDS for s in scenes}
    shared = {w for s in scenes for w in words[s] if sum(w in words[o] for o in scenes) > 1}
    return {s: (words[s] - shared) | set(tokenize(s)) - PLACE_STOPWORDS for s in scenes}


@dataclass
class GuardReport:
    """The rule checks of one sentence against its facts; `passed` only when every rule holds."""

    checks: dict[str, bool]
    problems: list[str]

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


def check_sentence(sentence: str, facts: Facts, vocab: Vocabulary) -> GuardReport:
    """Parse `sentence` and check it against `facts`: every label mentioned with its count, nouns
    and is/are agreeing with the counts, the scene mentioned only when confident, nothing invented."""
    tokens = tokenize(sentence)
    problems: dict[str, list[str]] = {k: [] for k in ("labels", "counts", "agreement", "scene", "invented")}
    if not tokens:
        problems["labels"].append("the sentence is empty")
    # 1. Label mentions: longest phrase match, left to right.
    table = _phrase_table(vocab, facts.counts)
    mentions, used, i = [], set(), 0
    while i < len(tokens):
        hit = next(((toks, label, plural) for toks, label, plural in table if tokens[i:i + len(toks)] == toks), None)
        if hit:
            mentions.append(Mention(hit[1], i, i + len(hit[0]), hit[2]))
            used.update(range(i, i + len(hit[0])))
            i += len(hit[0])
        else:
            i += 1
    # 2. The number each mention carries: just before it, across at most MAX_GAP adjectives.
    for m in mentions:
        for end in range(m.start - 1, max(-1, m.start - 2 - MAX_GAP), -1):
            if end in used or tokens[end] in BOUNDARIES:
                break
            found = number_at(tokens, end)
            if found:
                m.count, m.count_start = found
                used.update(range(found[1], end + 1))
                break
    # 3. Numbers that belong to no mention were invented ("3 bottles" of an unknown thing, "4 of them").
    for j, tok in enumerate(tokens):
        if j not in used and (tok.isdigit() or tok in NUMBER_WORDS):
            problems["invented"].append(f"the number {tok!r} belongs to no detected label")
    said: dict[str, int] = {}
    for m in mentions:
        name = " ".join(tokens[m.start:m.end])
        if m.label not in facts.counts:
            problems["invented"].append(f"{name!r} ({m.label}) was not detected")
            continue
        if m.count is None:
            problems["counts"].append(f"{name!r} is mentioned without a count")
            continue
        said[m.label] = said.get(m.label, 0) + m.count
        if m.plural is not None and m.plural != (m.count != 1):
            problems["agreement"].append(f"{m.count} {name!r}: the noun should be {'plural' if m.count != 1 else 'singular'}")
    for label, n in facts.counts.items():
        if label not in said and not any(m.label == label for m in mentions):
            problems["labels"].append(f"{label!r} (x{n}) is not mentioned")
        elif label in said and said[label] != n:
            problems["counts"].append(f"{label!r}: the sentence says {said[label]}, the detector found {n}")
    # 4. is/are agrees with the total number of objects.
    if facts.total:
        verb = next((t for t in tokens if t in ("is", "are")), None)
        if verb and verb != ("is" if facts.total == 1 else "are"):
            problems["agreement"].append(f"{verb!r} with {facts.total} object(s)")
    elif not NEGATIONS & set(tokens):
        problems["labels"].append(f"nothing was detected but the sentence does not say so (e.g. 'No {vocab.domain} detected')")
    # 5. Scene: named when confident, no other scene named (label words are not scene evidence).
    rest = {t for j, t in enumerate(tokens) if j not in used}
    named = {s for s, words in _scene_keywords(vocab, facts.scene).items() if words & rest}
    if facts.scene and facts.scene not in named:
        problems["scene"].append(f"the scene {facts.scene!r} is not mentioned")
    for s in sorted(named - {facts.scene}):
        problems["scene"].append(f"the scene {s!r} is mentioned but " +
                                 ("the scene is below the threshold or unknown" if not facts.scene else f"it is {facts.scene!r}"))
    return GuardReport({k: not v for k, v in problems.items()}, [p for v in problems.values() for p in v])


# ----------------------------------------------------------------------------- the task

@dataclass
class Description(Record):
    """One sentence; `fallback` is True when the model's sentence failed a rule and the template
    sentence replaced it. `generated` keeps the model's own sentence, `checks` its rule results."""

    text: str
    fallback: bool
    checks: dict[str, bool]
    generated: str = ""
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text


class Describer(Task):
    """Detector + scene JSON -> Description. Runs an ONNX seq2seq bundle (beam search as the seed:
    num_beams=4, no_repeat_ngram_size=2) or a causal GGUF/ONNX bundle (greedy); a list is one batch.

    `guard=False` returns the model's sentence unchecked (for evaluation of the raw model)."""

    name = "describe"

    def __init__(self, bundle, backend: str | None = None, threads: int | None = None, device: str | None = "cpu", *,
                 min_confidence: float = MIN_CONFIDENCE, scene_threshold: float = SCENE_THRESHOLD, guard: bool = True):
        super().__init__(bundle, backend, threads, device)
        from ..generation import GenerationConfig
        self.min_confidence = _confidence(min_confidence, "min_confidence")
        self.scene_threshold = _confidence(scene_threshold, "scene_threshold")
        self.guard = guard
        self.vocab = Vocabulary.from_dict(bundle.get("vocab") or (bundle.get("prompt") or {}).get("vocab"))
        self.prompt_template = _prompt_template(bundle)
        self.json_input = (bundle.get("prompt") or {}).get("input") == "json"   # the model reads the detector JSON
        self.parse = PARSERS.get(bundle.get("parser", "first-sentence"))
        if self.parse is None:
            raise BundleError(f"{bundle.path}: unknown parser {bundle.get('parser')!r}; this edgesight knows "
                              f"{', '.join(PARSERS)}")
        self.generation = GenerationConfig.from_dict(default_generation(bundle.kind) | (bundle.get("generation") or {}))
        self.model = self.text_model()

    def facts(self, payload, min_confidence: float | None = None, scene_threshold: float | None = None) -> Facts:
        min_confidence = None if min_confidence is None else _confidence(min_confidence, "min_confidence")
        scene_threshold = None if scene_threshold is None else _confidence(scene_threshold, "scene_threshold")
        return parse_input(payload, min_confidence=self.min_confidence if min_confidence is None else min_confidence,
                           scene_threshold=self.scene_threshold if scene_threshold is None else scene_threshold)

    def _run_batch(self, inputs: list, min_confidence: float | None = None, scene_threshold: float | None = None,
                   guard: bool | None = None) -> list[Description]:
        facts = [self.facts(x, min_confidence, scene_threshold) for x in inputs]  # validate all before any work
        prompts = [self.prompt_template.replace("{input}", model_input(x) if self.json_input else render_facts(f))
                   for x, f in zip(inputs, facts)]
        limit = self.model.context_length - self.generation.max_new_tokens
        for p in prompts:
            if self.model.count_tokens(p) > limit:
                raise InputError(f"the input lists too many distinct labels for this model ({self.model.count_tokens(p)} "
                                 f"prompt tokens, limit {limit}); split the detections or raise min_confidence")
        outputs = self.model.generate(prompts, self.generation)
        return [self.finish(f, self.parse(out[0]), self.guard if guard is None else guard)
                for f, out in zip(facts, outputs)]

    def finish(self, facts: Facts, sentence: str, guard: bool = True) -> Description:
        report = check_sentence(sentence, facts, self.vocab)
        if report.passed or not guard:
            return Description(sentence, False, report.checks, sentence, report.problems)
        return Description(template_sentence(facts, self.vocab), True, report.checks, sentence, report.problems)


def default_generation(kind: str) -> dict:
    """The seed's beam search for seq2seq models; greedy for causal ones (beams cost latency there)."""
    if kind == "seq2seq":
        return {"max_new_tokens": 48, "num_beams": 4, "no_repeat_ngram_size": 2, "early_stopping": True}
    return {"max_new_tokens": 40}


def _prompt_template(bundle) -> str:
    """The full model input with an "{input}" hole: a model's own template (seed 001's PROMPT_TEMPLATE,
    edgesight.export.prompts), else the bundle's chat-template prefix and suffix (recorded at export,
    as for keywords) around the instruction the data builder trains with."""
    prompt = bundle.get("prompt") or {}
    if prompt.get("template"):
        return prompt["template"]
    return prompt.get("prefix", "") + PROMPT + prompt.get("suffix", "")


PROMPT = "Describe: {input}"
# How the model's text becomes the sentence (manifest "parser"): edgesight's models may run on after
# the sentence; a model brought as it is (seed 001) keeps its whole answer, as its notebook did.
PARSERS = {"first-sentence": first_sentence, "whole": str.strip}


def model_input(payload) -> str:
    """The detector output as seed 001's model read it: json.dumps of the object (a JSON string is
    parsed first, so spacing is the seed's)."""
    return json.dumps(parse_json(payload, "description input") if isinstance(payload, (str, bytes)) else payload)


# ----------------------------------------------------------------------------- CLI, server, demo hooks

SAMPLE_INPUTS = [
    {"detections": [{"label": "plastic", "confidence": 0.92}, {"label": "plastic", "confidence": 0.88},
                    {"label": "metal", "confidence": 0.75}], "scene": {"class": "grass", "confidence": 0.95}},
    {"detections": [], "scene": {"class": "sandy", "confidence": 0.91}},
]


def from_json(payload):
    """HTTP body -> task input: one detector output, or {"inputs": [...]} for a batch."""
    if isinstance(payload, dict) and "inputs" in payload:
        if not isinstance(payload["inputs"], list):
            raise InputError('"inputs" must be a list of detector outputs')
        return payload["inputs"]
    return payload


def export_spec(adapter_dir, kind: str) -> dict:
    """the adapter's chat prompt (prefix/suffix from recipe.json) and vocabulary (vocab.json), the task's
    decoding (causal: greedy, stops at "." or <|im_end|>; seq2seq: the seed's beam search), describe probes"""
    recipe, vocab = adapter_json(adapter_dir, "recipe.json", {}), adapter_json(adapter_dir, "vocab.json", GARBAGE_VOCAB)
    prefix = suffix = ""
    if kind == "causal-lm" and recipe.get("chat_template"):
        prefix, suffix = prompt_halves(recipe, f"{adapter_dir}/recipe.json")
    generation = default_generation(kind)
    if kind == "causal-lm":   # "." ends the sentence one decode step before the end-of-turn token
        generation["stop_tokens"] = ["<|im_end|>", "."]
    probes = [prefix + PROMPT.replace("{input}", render_facts(parse_input(x))) + suffix for x in SAMPLE_INPUTS]
    return {"prompt": {"prefix": prefix, "suffix": suffix, "vocab": vocab}, "generation": generation,
            "probes": probes, "max_new_tokens": 16}


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="detector JSON (inline, a .json/.jsonl file, or - for stdin)")
    p.add_argument("--min-confidence", type=float, default=None, help=f"drop detections below this (default {MIN_CONFIDENCE})")
    p.add_argument("--scene-threshold", type=float, default=None, help=f"mention the scene from this confidence (default {SCENE_THRESHOLD})")
    p.add_argument("--no-guard", action="store_true", help="return the model's sentence even when it fails a rule")


def read_inputs(source: str | None) -> list:
    """Inline JSON, a .json file (one object or a list), a .jsonl file (one object a line), or stdin."""
    import sys
    if source is None or source == "-":
        data = sys.stdin.buffer.read()
        where = "stdin"
    elif source.lstrip()[:1] in ("{", "["):   # inline JSON: never tried as a file name (255-byte limit)
        try:
            data = parse_json(source, "the inline input")
        except InputError as exc:
            raise InputError(f"input is neither a file nor valid JSON ({exc}); pass detector JSON") from None
        return data if isinstance(data, list) else [data]
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except (OSError, ValueError) as exc:
            raise InputError(f"{source[:200]}: neither a readable file nor inline JSON ({type(exc).__name__}: "
                             f"{getattr(exc, 'strerror', None) or exc}); pass detector JSON or a .json/.jsonl file") from None
        where = str(path)
        if path.suffix == ".jsonl":
            try:
                lines = data.decode("utf-8-sig").splitlines()
            except UnicodeDecodeError as exc:
                raise InputError(f"{where} is not UTF-8 text (bad byte at position {exc.start})") from None
            rows = [parse_json(line, f"{where} line {n}") for n, line in enumerate(lines, 1) if line.strip()]
            return [r.get("input", r) if isinstance(r, dict) and "detections" not in r else r for r in rows]
    data = parse_json(data, where)
    return data if isinstance(data, list) else [data]


def run_cli(task: Describer, args):
    inputs = read_inputs(args.input)
    results = task(inputs, min_confidence=args.min_confidence, scene_threshold=args.scene_threshold,
                   guard=False if args.no_guard else None)
    if not args.json and len(results) == 1:
        return results[0].text
    return [r.to_dict() for r in results]

