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
}


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
