"""Keyword extraction: a free-text segmentation prompt -> the object names to segment.

    kw = edgesight.KeywordExtractor.from_pretrained()          # the embedded default bundle
    kw("Segment cats, dogs, but not humans")                   # ["Cat", "Dog"]
    kw(["find the red cars", "ignore the chairs"])             # [["Car"], []]
    kw("two automobiles and a monitor", vocabulary="objects365")  # ["Car", "Monitor/TV"]

Two model families run behind the same class, chosen by the bundle's `kind`:
- "token-classifier" (extractive): an encoder tags the words naming objects to keep (excluded ones
  stay untagged); one forward pass, no decode loop. ONNX (int8/fp32) on onnxruntime.
- "causal-lm" (generative): a LoRA-tuned chat LM writes "Cat, Dog" (or "None"); GGUF via llama.cpp,
  ONNX, or torch. The instruction prefix is identical for every prompt, so backends reuse its KV cache
  and per-prompt cost is only the user text plus the answer. On GGUF a `vocabulary` also becomes a
  grammar so only allowed labels can be generated.
Names come back singular, capitalised, de-duplicated, in prompt order. Output the model garbles is
parsed defensively (never an exception from the parser).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

from ..defaults import DATA_DIR
from ..errors import BundleError, InputError
from ..lexicon import LabelMap, answer_name, canonical, dedupe, english_words, from_french, lexicon, spell_fix
from ..record import Record
from ..tokenizer import TextTokenizer
from .base import Call, Task, adapter_json, prompt_halves

# ----------------------------------------------------------------------------- parsing


def parse_generated(text) -> list[str]:
    """'Cat, Dog' / '["cat", "dogs"]' / '- Cat\\n- Dog' / 'None' -> canonical names. Never raises."""
    if not isinstance(text, str):
        return []
    text = re.split(r"<\|im_(?:end|start)\|>|\n\s*\n", text)[0].strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    bullets = [ln for ln in lines if re.match(r"\s*([-*\u2022]|\d+[.)])\s", ln)]
    # a bullet list spans lines; anything else is one line and what follows is the model rambling on
    text = "\n".join(bullets) if len(bullets) > 1 else (lines[0] if lines else "")
    if text.lower().strip().rstrip(".!") in ("none", "nothing", "[]", "no objects", ""):
        return []
    parts = re.split(r"[,\n;|]+|\band\b", text)
    names = []
    for part in parts:
        part = re.sub(r"^[\s\-\*\u2022\d\.\)\]\[\"'`]+|[\s\]\[\"'`\.!?]+$", "", part)
        if part.lower() in ("none", "nothing") or len(part) > 40:
            continue
        names.append(answer_name(part))
    return dedupe(names)


def parse_seed_000(text) -> list[str]:
    """Seed 000's own parsing (segment_objects_with_prompting): the text after the last "<|assistant|>",
    its first non-empty line split at commas, each part stripped and str.capitalize()d, duplicates
    dropped. The seed de-duplicates with set() (an arbitrary order); this keeps first appearances."""
    if not isinstance(text, str):
        return []
    lines = [ln.strip() for ln in text.split("<|assistant|>")[-1].strip().splitlines() if ln.strip()]
    return list(dict.fromkeys(o.strip().capitalize() for o in lines[0].split(",") if o.strip())) if lines else []


# Which parser reads a generative bundle's answers: the manifest's "parser" names one (data, not code).
# A parser other than edgesight's also gets the user's text as it is (no preamble/French handling).
PARSERS = {"edgesight": parse_generated, "seed-000": parse_seed_000}


# what lies between a possessor and the next tagged span: "'s ", "' ", "'s two red "
POSSESSOR_GAP = re.compile(r"['\u2019]s?\s+(?:[^\W\d_]+\s+){0,2}", re.I)


def _owns(text: str, span, nxt) -> bool:
    """Whether `span` is a possessive ("runners'", "rider's") right before the next tagged span."""
    if nxt is None:
        return False
    word = re.search(r"['\u2019]s?$", text[span[0]:span[1]], re.I)   # the tagger may include the apostrophe
    gap = text[span[0] + word.start() if word else span[1]:nxt[0]]
    return POSSESSOR_GAP.fullmatch(gap) is not None


def spans_to_names(text: str, spans) -> list[str]:
    """Character spans the tagger marked -> answer names (edgesight.lexicon.answer_name); a word is
    spell-corrected only when it is not English and close to exactly one name word (lexicon.spell_fix)."""
    names, known = [], lexicon()
    merged: list[list[int]] = []
    for start, end in spans:   # a name the tagger cut in two ("potted" + "plants") is one name
        if merged and not text[merged[-1][1]:start].strip() and \
                canonical(text[merged[-1][0]:end]).lower() in known:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    # a possessor tagged next to what it owns names no object: "the runners' shoes" -> Shoe
    merged = [span for span, nxt in zip(merged, merged[1:] + [None]) if not _owns(text, span, nxt)]
    for k, (start, end) in enumerate(merged):
        phrase = re.sub(r"[^\W\d_]+", lambda m: spell_fix(m.group()), text[start:end])
        compound = _compound(text, start, phrase, merged[k - 1][1] if k else 0)
        names += [compound] if compound else [answer_name(p) for p in _split_names(phrase)]
    return dedupe(n for n in names if any(c.isalpha() for c in n))   # "12345" names no object


# words before a noun that keep it the same object ("a big red box" is still a Storage box)
MODIFIERS = frozenset("""a an the this that these those my your his her our their its one two three four five six
seven eight nine ten some any all each every other same whole only single double few many several more most no
red blue green yellow white black brown grey gray pink purple orange silver gold golden beige dark light bright
big small large little tiny huge giant long short tall wide narrow thin thick round square flat heavy
old new young dirty clean broken empty full wet dry open closed shiny dusty rusty nice pretty ugly cute
favourite favorite main left right front back top bottom upper lower middle inner outer far near bigger smaller
larger older newer wooden woollen woolen frozen rotten hidden fallen stolen wood metal plastic paper glass steel iron leather stone rubber cardboard""".split())
ADJECTIVE_END = re.compile(r"[a-z]+(ful|ous|ive|less|able|ible|ish|ed|est|ic|ary)$")


def _compound(text: str, start: int, phrase: str, previous_end: int) -> str | None:
    """A one-word span whose answer is a longer Objects365 name ("card" -> Poker Card, "box" -> Storage
    box), right after an untagged noun: the compound names another object ("birthday card", "shoe box")
    and is answered as written; adjectives, determiners and known compounds ("playing card") are not."""
    word = phrase.strip()
    if not word.isalpha() or len(answer_name(word).split()) <= 1:
        return None
    before = re.search(r"(?<![\w'\u2019-])([A-Za-z]{3,}) $", text[previous_end:start])
    if before is None:
        return None
    modifier = before.group(1)
    low = modifier.lower()
    if low in MODIFIERS or ADJECTIVE_END.fullmatch(low) or low not in english_words():
        return None
    if canonical(f"{low} {word}").lower() in lexicon():
        return answer_name(f"{modifier} {word}")
    return canonical(f"{modifier} {word}")


def _split_names(phrase: str) -> list[str]:
    """One tagged span -> the names in it: "Bottle Cup Knife" (seed 000 writes names one after the other)
    is three known names; verb forms at the edges of an unknown phrase go ("cows grazing" -> "cows")."""
    known = lexicon()
    words = phrase.split()
    if len(words) < 2 or canonical(phrase).lower() in known:
        return [phrase]
    pieces, i = [], 0
    while i < len(words):
        j = next((j for j in range(len(words), i, -1) if canonical(" ".join(words[i:j])).lower() in known), None)
        if j is None:
            break
        pieces.append(" ".join(words[i:j]))
        i = j
    if i == len(words):
        return pieces
    verb = re.compile(r"[a-z]{3,}(ing|ed)$", re.I)
    while len(words) > 1 and verb.fullmatch(words[0]):
        words = words[1:]
    while len(words) > 1 and verb.fullmatch(words[-1]):
        words = words[:-1]
    return [" ".join(words)]


# Seed 000's training rows wrap the user's text: "\nInstruction: ... Example: For the input '...' ...
# \nDescription: <text>\n"; its chat prompt puts it between <|user|> and <|assistant|>.
SEED_PREAMBLE = re.compile(r"^\s*Instruction:.*?\bDescription:[ \t]*", re.S)
CHAT_TURN = re.compile(r"<\|user\|>\s*(.*?)\s*(?:</s>\s*)?(?:<\|assistant\|>|$)", re.S)


def user_text(prompt: str) -> str:
    """The text the user wrote, in English: seed 000's preamble and chat markers removed, French
    translated word by word (lexicon.from_french)."""
    match = SEED_PREAMBLE.match(prompt)
    if match:
        prompt = prompt[match.end():]
    turn = CHAT_TURN.search(prompt)
    if turn:
        prompt = turn.group(1)
    return from_french(prompt.strip())


# ----------------------------------------------------------------------------- the task

def _check_prompts(prompts) -> list[str]:
    from ..runtime import check_text

    for p in prompts:
        if not isinstance(p, str):
            raise InputError(f"KeywordExtractor takes a prompt string or a list of strings, got {type(p).__name__}")
    return [check_text(p) for p in prompts]   # checked and cleaned (invisible characters removed) before tokenizing


class KeywordExtractor(Task):
    name = "keywords"

    def __init__(self, bundle, backend: str | None = None, threads: int | None = None, device: str | None = "cpu",
                 vocabulary=None):
        super().__init__(bundle, backend, threads, device)
        # a bundle that ships a sentence embedder lets vocabularies match by meaning ("automobile" -> "Car")
        self._embed = _SentenceEmbedder(self) if bundle.has("embedder") else None
        self._label_maps: dict = {}
        self._label_maps_lock = threading.Lock()   # the server's worker threads share one extractor
        self.vocabulary = self.label_map(vocabulary)
        if bundle.kind == "token-classifier":
            self._model = _Tagger(self)
        elif bundle.kind == "causal-lm":
            self._model = _Generator(self)
        else:
            raise BundleError(f"{bundle.path}: keywords bundles are 'token-classifier' or 'causal-lm', not {bundle.kind!r}")

    def label_map(self, vocabulary) -> LabelMap | None:
        """One LabelMap per distinct vocabulary: its label embeddings are computed once, not on every call
        (a per-call vocabulary="objects365" over HTTP embedded 365 names per request)."""
        if vocabulary is None:
            return None
        try:
            key = vocabulary if isinstance(vocabulary, str) else tuple(vocabulary)
            cached = self._label_maps.get(key)
        except TypeError:                 # unhashable entries: LabelMap says what is wrong with them
            return LabelMap(vocabulary, embed=self._embed)
        if cached is None:
            cached = LabelMap(vocabulary, embed=self._embed)
            with self._label_maps_lock:   # evict-then-insert must not interleave with another thread's
                if len(self._label_maps) >= 16:
                    self._label_maps.pop(next(iter(self._label_maps)))
                self._label_maps[key] = cached
        return cached

    def _run_batch(self, inputs: list, vocabulary=None) -> list[list[str]]:
        prompts = _check_prompts(inputs)
        vocab = self.label_map(vocabulary) if vocabulary is not None else self.vocabulary
        todo = [i for i, p in enumerate(prompts) if p.strip()]  # empty prompts: [] without the model
        results: list[list[str]] = [[] for _ in prompts]
        if todo:
            own = self.bundle.get("parser", "edgesight") != "edgesight"   # the model's own format: text as given
            for i, names in zip(todo, self._model.extract([prompts[i] if own else user_text(prompts[i]) or "."
                                                           for i in todo], vocab)):
                results[i] = names
        if vocab is not None:
            results = [dedupe(filter(None, (vocab(n) for n in names))) for names in results]
        return results


class _SentenceEmbedder:
    """The bundle's "embedder" graph (a sentence encoder, e.g. all-MiniLM-L6-v2): mean-pooled, unit vectors."""

    def __init__(self, task: Task):
        self.session = task.session("embedder")
        self.tokenizer = TextTokenizer.from_file(task.bundle.file("embedder_tokenizer"), clean_up_spaces=False).tokenizer
        self.tokenizer.enable_padding()

    def __call__(self, texts) -> np.ndarray:
        encs = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encs], np.int64)
        mask = np.array([e.attention_mask for e in encs], np.int64)
        hidden = self.session.run({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[..., None].astype(np.float32)
        vec = (hidden * m).sum(1) / m.sum(1)
        return vec / np.linalg.norm(vec, axis=1, keepdims=True)


class _Tagger:
    """Extractive family: one onnxruntime pass tags B-/I- object tokens; offsets give the words."""

    def __init__(self, task: Task):
        bundle = task.bundle
        self.session = task.session("model")
        self.tokenizer = TextTokenizer.from_file(bundle.file("tokenizer"), clean_up_spaces=False).tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.labels = bundle.get("labels", ["O", "B-OBJ", "I-OBJ"])
        self.max_length = int(bundle.get("max_length", 256))

    def extract(self, prompts: list[str], vocab=None) -> list[list[str]]:
        encs = self.tokenizer.encode_batch(prompts)
        for p, e in zip(prompts, encs):
            if len(e.ids) > self.max_length:
                raise InputError(f"prompt is {len(e.ids)} tokens, over this model's limit of {self.max_length}; "
                                 "split it into shorter prompts")
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), np.int64)
        mask = np.zeros_like(ids)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)], mask[i, : len(e.ids)] = e.ids, 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        logits = self.session.run(feed)[0]
        tags = logits.argmax(-1)
        return [spans_to_names(p, self._spans(e, tags[i])) for i, (p, e) in enumerate(zip(prompts, encs))]

    def _spans(self, enc, tags) -> list[tuple[int, int]]:
        """Word-level spans: a word takes the tag of its first sub-token; B- starts an object,
        I- (or B- right after a tagged word of the same object) extends it."""
        spans: list[list[int]] = []
        prev_word, prev_tagged = None, False
        for j, ((s, e), t) in enumerate(zip(enc.offsets, tags)):
            word = enc.word_ids[j]
            if word is None or s == e:
                prev_word, prev_tagged = None, False
                continue
            if word == prev_word:            # later sub-token: follows its word
                if prev_tagged:
                    spans[-1][1] = e
                continue
            label = self.labels[int(t)]
            if label == "O":
                prev_tagged = False
            elif label.startswith("I-") and prev_tagged:
                spans[-1][1] = e
                prev_tagged = True
            else:
                spans.append([s, e])
                prev_tagged = True
            prev_word = word
        return [(s, e) for s, e in spans]


class _Generator:
    """Generative family: prefix + user text + suffix (the chat template of training) -> "Cat, Dog"."""

    def __init__(self, task: Task):
        from ..generation import GenerationConfig
        bundle = task.bundle
        prompt = bundle.get("prompt") or {}
        if "prefix" not in prompt or "suffix" not in prompt:
            raise BundleError(f"{bundle.path}: manifest lacks prompt.prefix/suffix; re-export the keywords bundle")
        self.prefix, self.suffix = prompt["prefix"], prompt["suffix"]
        self.parse = PARSERS.get(bundle.get("parser", "edgesight"))
        if self.parse is None:
            raise BundleError(f"{bundle.path}: unknown parser {bundle.get('parser')!r}; this edgesight knows "
                              f"{', '.join(PARSERS)} (upgrade edgesight or re-export the bundle)")
        self.model = task.text_model()
        self.config = GenerationConfig.from_dict({"max_new_tokens": 48, **(bundle.get("generation") or {})})

    def extract(self, prompts: list[str], vocab=None) -> list[list[str]]:
        from dataclasses import replace
        limit = self.model.context_length - self.config.max_new_tokens
        full = [self.prefix + p + self.suffix for p in prompts]
        for text in full:
            n = self.model.count_tokens(text)
            if n > limit:
                raise InputError(f"prompt is {n} tokens with the instruction, over this model's limit of {limit}; "
                                 "split it into shorter prompts")
        config = self.config
        if vocab is not None and self.model.supports_grammar:
            config = replace(config, grammar=vocab.grammar())
        return [self.parse(outs[0] if outs else "") for outs in self.model.generate(full, config)]


def export_probes() -> list[str]:
    """Prompts the export stage checks a keywords model on (torch vs the exported graph)."""
    return [line for line in (DATA_DIR / "keywords_probes.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def export_spec(adapter_dir, kind: str) -> dict:
    """token classifier: the keyword probes the tags are checked on, and the base encoder as the sentence
    embedder that maps names onto a vocabulary by meaning; causal LM: the training chat prompt
    (prefix/suffix/system from the adapter's recipe.json) and short greedy answers"""
    if kind == "token-classifier":   # the base encoder also ships as the sentence embedder of vocabularies
        return {"probes": export_probes(), "embedder": "base"}
    recipe = adapter_json(adapter_dir, "recipe.json")
    if kind != "causal-lm" or recipe is None:
        return {}   # a plain adapter: nothing known besides the weights
    prefix, suffix = prompt_halves(recipe, f"{adapter_dir}/recipe.json", default="{input}")   # no chat template: the raw prompt
    return {"prompt": {"prefix": prefix, "suffix": suffix, "system": recipe.get("system")},
            "generation": {"max_new_tokens": 24, "eos_token_ids": []},
            "probes": [prefix + p + suffix for p in export_probes()[:6]], "max_new_tokens": 16}


# ----------------------------------------------------------------------------- CLI, server, demo

SAMPLE_INPUTS = ["Segment cats, dogs, but not humans",
                 "Find the red cars and the bicycles in the photo I took in Paris last summer",
                 "ignore everything except the umbrellas"]


def add_cli_arguments(parser) -> None:
    parser.add_argument("prompts", nargs="*", help="segmentation prompts (default: read lines from stdin)")
    parser.add_argument("--vocabulary", default=None,
                        help="'objects365' or a comma-separated list of allowed labels")


def vocabulary_arg(value):
    """--vocabulary: "objects365" or a comma-separated label list."""
    if value is None or value == "objects365":
        return value
    return [v.strip() for v in value.split(",") if v.strip()]


def run_cli(task, args):
    import sys
    prompts = args.prompts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    results = task(prompts, vocabulary=vocabulary_arg(args.vocabulary))
    if len(prompts) == 1:
        return results[0] if args.json else ", ".join(results[0])
    return [{"prompt": p, "keywords": r} for p, r in zip(prompts, results)]


def from_json(payload):
    """HTTP body {"prompt": str} or {"prompts": [str, ...]} (+ optional "vocabulary") -> task input."""
    if not isinstance(payload, dict) or not ("prompt" in payload or "prompts" in payload):
        raise InputError('send {"prompt": "..."} or {"prompts": ["...", ...]}')
    inputs = payload.get("prompts", payload.get("prompt"))
    if isinstance(inputs, list):
        _check_prompts(inputs)
    elif not isinstance(inputs, str):
        raise InputError('"prompt" must be a string and "prompts" a list of strings')
    if payload.get("vocabulary") is not None:   # honoured as in the API: kw(prompt, vocabulary=...)
        return Call(inputs, {"vocabulary": payload["vocabulary"]})
    return inputs


# ----------------------------------------------------------------------------- scoring (training and evaluation)

@dataclass
class Scores(Record):
    """Set-based scores over a prompt set: micro precision/recall/F1 and exact-set accuracy."""

    n: int
    precision: float
    recall: float
    f1: float
    exact: float


def _gold_sets(gold):
    """Gold items are names or lists of accepted names (["Car", "Automobile"])."""
    return [{canonical(a).lower() for a in ([g] if isinstance(g, str) else g)} for g in gold]


def score(predictions, golds) -> Scores:
    """Predicted name lists vs gold lists (each gold item a name or a list of accepted names)."""
    tp = fp = fn = exact = 0
    for pred, gold in zip(predictions, golds):
        pred = dedupe(canonical(p) for p in pred)
        gsets = _gold_sets(gold)
        matched = set()
        hit = 0
        for name in pred:
            j = next((j for j, g in enumerate(gsets) if j not in matched and name.lower() in g), None)
            if j is None:
                fp += 1
            else:
                matched.add(j)
                hit += 1
        tp += hit
        fn += len(gsets) - len(matched)
        exact += hit == len(pred) and len(matched) == len(gsets)
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    n = len(golds)
    return Scores(n, round(p, 4), round(r, 4), round(f1, 4), round(exact / n, 4) if n else 0.0)

