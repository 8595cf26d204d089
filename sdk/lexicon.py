"""Object names: the Objects365 label set, the surface forms people type for its labels, and
`LabelMap`, which maps free names onto an allowed label list (a user vocabulary or Objects365).

    canonical("the Red CARS")            # "Red car"
    lexicon()["tv"]                      # "Monitor/TV"
    LabelMap(["Car", "Dog"])("puppies")  # "Dog"
"""
from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache

import numpy as np

from .defaults import DATA_DIR
from .errors import InputError
from .inflect import ACRONYMS, PLURAL_ONLY, SAME, singular

DETERMINERS = {"a", "an", "the", "all", "any", "every", "each", "some", "my", "your", "his", "her", "their",
               "our", "its", "this", "that", "these", "those", "two", "three", "four", "five", "several",
               "many", "few", "more", "most", "only", "just"}


def canonical(name: str) -> str:
    """'the Red-ish CARS ' -> 'Car'-style form: trimmed, leading determiners dropped, last word
    singular, first letter capitalised, acronyms kept upper. Empty string if nothing is left."""
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9'&\-/]*", str(name))
    while words and words[0].lower() in DETERMINERS:
        words = words[1:]
    if not words:
        return ""
    phrase = " ".join(w.lower() for w in words)
    if phrase not in SAME and phrase not in PLURAL_ONLY:
        words[-1] = singular(words[-1])
    out = " ".join(ACRONYMS.get(w.lower(), w.lower()) for w in words)
    return out[0].upper() + out[1:]


def dedupe(names) -> list[str]:
    seen, out = set(), []
    for n in names:
        if n and n.lower() not in seen:
            seen.add(n.lower())
            out.append(n)
    return out


@lru_cache(maxsize=1)
def objects365() -> tuple[str, ...]:
    text = (DATA_DIR / "objects365_categories.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# Objects365 names that are not what a person types, and common other words for the same object.
FORMS = {
    "Other Shoes": ["shoe"], "Trash bin Can": ["trash can", "trash bin", "garbage can", "bin"],
    "Other Fish": ["fish"], "Other Balls": ["ball"], "Canned": ["can", "canned food"],
    "Soccer": ["soccer ball", "football"], "Tennis": ["tennis ball"], "French": ["french horn"],
    "Noddles": ["noodles"], "Skiboard": ["ski"], "Curling": ["curling stone"], "Table Tennis": ["ping pong ball"],
    "Billiards": ["billiard ball"], "Extractor": ["range hood", "extractor hood"], "Formula 1": ["formula 1 car", "race car"],
    "Tong": ["tongs"], "Skating and Skiing shoes": ["ski boot", "skate"], "Machinery Vehicle": ["excavator", "bulldozer"],
    "Green Vegetables": ["vegetable"], "Wild Bird": ["bird"], "Head Phone": ["headphones", "headphone"],
    "earphone": ["earbud", "earphone"], "Hami melon": ["melon", "hami melon"], "Kiwi fruit": ["kiwi"],
    "Baozi": ["bun", "baozi"], "Poker Card": ["playing card", "card"], "Router/modem": ["router", "modem", "wifi router"],
    "Person": ["person", "people", "human", "man", "woman", "kid", "child", "pedestrian", "boy", "girl"],
    "Car": ["car", "automobile"], "Cell Phone": ["phone", "cell phone", "smartphone", "mobile phone", "cellphone"],
    "Monitor/TV": ["monitor", "tv", "television", "screen"], "Couch": ["couch", "sofa"],
    "Bicycle": ["bicycle", "bike"], "Motorcycle": ["motorcycle", "motorbike"], "Airplane": ["airplane", "plane", "aeroplane"],
    "Potted Plant": ["potted plant", "plant", "houseplant"], "Dining Table": ["dining table", "table"],
    "Cup": ["cup", "mug"], "Dog": ["dog", "puppy"], "Cat": ["cat", "kitten"], "Street Lights": ["street light", "streetlight", "lamp post"],
    "Sneakers": ["sneaker", "trainer"], "Handbag/Satchel": ["handbag", "satchel", "purse", "bag"],
    "Refrigerator": ["refrigerator", "fridge"], "Laptop": ["laptop", "notebook computer"],
    "Glasses": ["glasses", "eyeglasses", "spectacles"], "Pen/Pencil": ["pen", "pencil"],
    "Storage box": ["storage box", "box"], "Traffic Light": ["traffic light", "stoplight"],
    "Luggage": ["luggage", "suitcase"], "Stuffed Toy": ["stuffed toy", "teddy bear", "plush toy"],
    "Bowl/Basin": ["bowl", "basin"], "Barrel/bucket": ["barrel", "bucket"], "Cabinet/shelf": ["cabinet", "shelf", "cupboard"],
    "Picture/Frame": ["picture frame", "frame", "painting"], "Blackboard/Whiteboard": ["blackboard", "whiteboard", "chalkboard"],
    "Orange/Tangerine": ["orange", "tangerine"], "Cigar/Cigarette": ["cigar", "cigarette"],
    "Washing Machine/Drying Machine": ["washing machine", "dryer", "washer"], "Wallet/Purse": ["wallet"],
    "Tape Measure/Ruler": ["tape measure", "ruler"], "Cutting/chopping Board": ["cutting board", "chopping board"],
    "Cosmetics Brush/Eyeliner Pencil": ["makeup brush", "eyeliner pencil"], "Hot-air balloon": ["hot-air balloon", "hot air balloon"],
    "Pickup Truck": ["pickup truck", "pickup"], "Trolley": ["trolley", "shopping cart", "cart"],
    "Computer Box": ["computer case", "desktop computer", "computer"], "Converter": ["adapter", "converter"],
    "Power outlet": ["power outlet", "socket", "outlet"], "Air Conditioner": ["air conditioner", "ac unit"],
    "Lifesaver": ["lifebuoy", "life ring", "lifesaver"], "Gun": ["gun", "pistol", "rifle"], "Ship": ["ship"],
    "Boat": ["boat"], "Van": ["van", "minivan"], "Traffic Sign": ["traffic sign", "road sign", "sign"],
    "Speaker": ["speaker", "loudspeaker"], "Mouse": ["mouse", "computer mouse"], "Tablet": ["tablet", "ipad"],
    # kw-data-4 (issue 13): more everyday synonyms (British and American) of Objects365 names
    "Truck": ["truck", "lorry"], "Backpack": ["backpack", "rucksack", "knapsack"],
    "Stroller": ["stroller", "pram", "pushchair", "baby carriage"], "Eggplant": ["eggplant", "aubergine"],
    "Donut": ["donut", "doughnut"], "Hamburger": ["hamburger", "burger", "cheeseburger"],
    "Fire Truck": ["fire truck", "fire engine"], "Remote": ["remote", "remote control"],
    "Microwave": ["microwave", "microwave oven"], "Green Onion": ["green onion", "scallion", "spring onion"],
    "Pepper": ["pepper", "bell pepper", "capsicum"], "Hot dog": ["hot dog", "hotdog"],
    "French Fries": ["french fries", "fries"], "Toilet Paper": ["toilet paper", "toilet roll"],
    "Traffic cone": ["traffic cone", "cone"], "Nightstand": ["nightstand", "bedside table"],
    "Tea pot": ["tea pot", "teapot"], "Hair Dryer": ["hair dryer", "hairdryer", "blow dryer"],
    "Surveillance Camera": ["surveillance camera", "security camera", "cctv camera"],
    "Sailboat": ["sailboat", "sailing boat"], "Watch": ["watch", "wristwatch"], "Microphone": ["microphone", "mic"],
    "Ice cream": ["ice cream", "ice-cream"], "Scooter": ["scooter", "kick scooter"],
}
FORMS["Couch"].append("settee")
FORMS["Airplane"] += ["aircraft", "airliner", "jet"]
FORMS["Trash bin Can"] += ["rubbish bin", "dustbin", "wastebasket", "waste bin"]
FORMS["Cell Phone"] += ["mobile", "iphone", "cellular phone"]
FORMS["Street Lights"] += ["street lamp", "streetlamp"]
FORMS["Traffic Light"].append("traffic signal")
FORMS["Head Phone"].append("headset")
FORMS["earphone"].append("earbuds")
FORMS["Person"] += ["baby", "adult", "guy", "lady", "toddler", "teenager"]

# The name keyword extraction answers with, for Objects365 names nobody types (None: keep the user's word).
DISPLAY = {"Other Shoes": "Shoe", "Trash bin Can": "Trash can", "Other Fish": "Fish", "Other Balls": "Ball",
           "Canned": "Can", "Soccer": "Soccer ball", "Tennis": "Tennis ball", "French": "French horn",
           "Noddles": "Noodles", "Skiboard": "Ski", "Curling": "Curling stone", "Table Tennis": "Ping pong ball",
           "Billiards": "Billiard ball", "Wild Bird": "Bird", "earphone": "Earphone", "Kiwi fruit": "Kiwi",
           "Machinery Vehicle": None, "Skating and Skiing shoes": None, "Green Vegetables": None, "Formula 1": None}
# synonyms of one part of a slashed name ("television" is the TV of "Monitor/TV")
SLASH_SYNONYMS = {"television": "TV", "telly": "TV", "screen": "Monitor", "cupboard": "Cabinet", "painting": "Picture",
                  "picture frame": "Frame", "chalkboard": "Blackboard", "washer": "Washing Machine",
                  "dryer": "Drying Machine", "wifi router": "Router", "makeup brush": "Cosmetics Brush",
                  "cutting board": "Cutting Board"}   # "Cutting/chopping Board" is two boards


@lru_cache(maxsize=1)
def lexicon() -> dict[str, str]:
    """Lower-case singular surface form -> Objects365 label ("tv" -> "Monitor/TV")."""
    table: dict[str, str] = {}
    for label in objects365():
        forms = FORMS.get(label) or [p.strip() for p in label.split("/")]
        for form in forms + [p.strip() for p in label.split("/")]:
            key = canonical(form).lower()
            if key:
                table.setdefault(key, label)
    return table


class LabelMap:
    """Maps free names onto allowed labels: exact/singular/slash-part match, known synonyms, close
    spelling, then, when an `embed(texts) -> unit vectors` function is given (a bundle's sentence
    embedder), embedding similarity. Without one there is no embedding step: results never depend
    on which extras happen to be installed."""

    def __init__(self, labels, min_similarity: float = 0.5, embed=None):
        if isinstance(labels, str):
            if labels != "objects365":
                raise InputError(f"vocabulary must be a list of labels or 'objects365', got {labels!r}")
            labels = objects365()
        if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
            raise InputError("vocabulary must be a non-empty list of non-empty label strings (or 'objects365')")
        self.labels = list(dict.fromkeys(labels))
        self.min_similarity = min_similarity
        self.keys: dict[str, str] = {}
        for label in self.labels:
            for part in [label] + label.split("/"):
                self.keys.setdefault(canonical(part).lower(), label)
        known = lexicon()
        for form, o365 in known.items():  # synonyms reach a label that shares an Objects365 category
            target = self.keys.get(canonical(o365).lower()) or next(
                (self.keys[canonical(p).lower()] for p in o365.split("/") if canonical(p).lower() in self.keys), None)
            if target:
                self.keys.setdefault(form, target)
        self.embed, self._emb = embed, None

    def __call__(self, name: str) -> str | None:
        key = canonical(name).lower()
        if not key:
            return None
        if key in self.keys:
            return self.keys[key]
        close = difflib.get_close_matches(key, self.keys, n=1, cutoff=0.85)
        if close:
            return self.keys[close[0]]
        return self._nearest(key)

    def _nearest(self, key: str) -> str | None:
        if self.embed is None:
            return None
        if self._emb is None:
            self._emb = self.embed([canonical(label.replace("/", " or ")) for label in self.labels])
        sims = self._emb @ self.embed([key])[0]
        best = int(np.argmax(sims))
        return self.labels[best] if sims[best] >= self.min_similarity else None

    def grammar(self) -> str:
        """GBNF that allows only "None" or a comma-separated list of the labels."""
        alts = " | ".join(json.dumps(label) for label in self.labels)
        return f'root ::= "None" | item (", " item)*\nitem ::= {alts}\n'


# ----------------------------------------------------------------------------- keyword answers (issue 13)

def answer_name(phrase: str) -> str:
    """The name keyword extraction answers with: the Objects365 name when the phrase names a category or a
    common synonym of one ("sofas" -> "Couch", "fridge" -> "Refrigerator"), the named part of a slashed
    name ("shelves" -> "Shelf", "television" -> "TV"), else the singular phrase ("tigers" -> "Tiger")."""
    name = canonical(phrase)
    key = name.lower()
    label = lexicon().get(key)
    if label is None:
        return name
    if "/" in label:
        parts = [p.strip() for p in label.split("/")]
        part = next((p for p in parts if canonical(p).lower() == key), None) or SLASH_SYNONYMS.get(key) or parts[0]
        return part[0].upper() + part[1:]
    shown = DISPLAY.get(label, label)
    return name if shown is None else shown


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Correctly spelled English words (data/english_words.txt.gz, from pyspellchecker's English list)."""
    import gzip
    text = gzip.decompress((DATA_DIR / "english_words.txt.gz").read_bytes()).decode("utf-8")
    return frozenset(w for w in text.splitlines() if w and not w.startswith("#"))


@lru_cache(maxsize=1)
def name_words() -> tuple[str, ...]:
    """Every word of every known name form, singular and plural: what a misspelling may be corrected to."""
    from .inflect import plural
    words = {w for form in lexicon() for w in form.split(" ") if w.isalpha() and len(w) >= 4}
    return tuple(sorted(words | {plural(w) for w in words}))


def spell_fix(word: str) -> str:
    """A misspelt name word -> the name word ("bycicle" -> "bicycle", "umbrela" -> "umbrella"). Only a word
    that is not in the English word list is ever changed, and only to the one name word closest to it
    (at most 1 edit for words of up to 5 letters, 2 beyond; transpositions count once); a tie, a
    correctly spelled word ("tiger", "house", "pallets") or anything else comes back unchanged."""
    from rapidfuzz import process
    from rapidfuzz.distance import OSA

    from .inflect import singular
    w = word.lower()
    if len(w) < 4 or not w.isalpha() or not w.isascii():
        return word
    known = english_words()
    if w in known or singular(w) in known or w in name_words():
        return word
    limit = 1 if len(w) <= 5 else 2
    hits = process.extract(w, name_words(), scorer=OSA.distance, score_cutoff=limit, limit=4)
    if not hits:
        return word
    best = min(d for _, d, _ in hits)
    closest = {singular(c): c for c, d, _ in hits if d == best}   # "guitar" and "guitars" are one answer
    return next(iter(closest.values())) if len(closest) == 1 else word


# ----------------------------------------------------------------------------- French prompts

FRENCH_MARKERS = {"le", "la", "les", "des", "et", "sauf", "pas", "mais", "sans", "segmente", "segmentez", "trouve", "trouvez",
                  "detecte", "detectez", "je", "ne", "du", "une", "aussi", "avec", "seulement", "rien", "tout",
                  "l'", "d'", "n'", "excepte", "hormis", "uniquement", "ignorez", "veux", "entoure", "repere"}


def _fold(token: str) -> str:
    import unicodedata
    token = token.lower().replace("\u2019", "'").replace("\u0153", "oe")
    return "".join(c for c in unicodedata.normalize("NFD", token) if not unicodedata.combining(c))


def _french_tokens(text: str) -> list[str]:
    return re.findall(r"\w+'|[\w\-]+|[^\w\s]", text.replace("\u2019", "'"))


@lru_cache(maxsize=1)
def french_table() -> dict[tuple[str, ...], str]:
    """data/keywords_french.tsv: French words and phrases (folded: no accents) -> English."""
    table = {}
    for line in (DATA_DIR / "keywords_french.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            fr, _, en = line.partition("\t")
            table[tuple(_fold(t) for t in _french_tokens(fr))] = en.strip()
    return table


def _french_singular(token: str) -> str:
    if token.endswith("aux") and not token.endswith("eaux") and len(token) > 4:
        return token[:-3] + "al"          # chevaux -> cheval
    return token[:-1] if token.endswith(("s", "x")) and len(token) > 3 else token


def from_french(text: str) -> str:
    """A French prompt -> word-by-word English the extractor reads ("Segmente les chats, mais pas les
    chiens" -> "segment the cat, but not the dog"); any other text comes back unchanged. French is
    recognised by two or more different function words (les, et, sauf, pas, ...)."""
    tokens = _french_tokens(text)
    folded = [_fold(t) for t in tokens]
    if len(FRENCH_MARKERS.intersection(folded)) < 2:
        return text
    table, singulars = french_table(), [_french_singular(t) for t in folded]
    out, i = [], 0
    while i < len(tokens):
        for n in (4, 3, 2, 1):
            for source in (folded, singulars):
                key = tuple(source[i:i + n])
                if len(key) == n and key in table:
                    break
            else:
                continue
            if table[key]:
                out.append(table[key])
            i += n
            break
        else:
            out.append(tokens[i])
            i += 1
    return re.sub(r"\s+([,.;:!?])", r"\1", " ".join(out))
