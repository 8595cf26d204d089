"""English noun inflection, once for every task: `singular("buses") == "bus"`, `plural("piece of
glass") == "pieces of glass"`. Keywords canonicalise names with it, descriptions count with it, the
captioner lemmatises tag words with it and the training data builders vary surface forms with it.
Rules plus an irregular table; no dictionary.
"""
from __future__ import annotations

# singular -> plural where the rules below would be wrong
IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
             "goose": "geese", "tooth": "teeth", "foot": "feet", "knife": "knives", "shelf": "shelves",
             "leaf": "leaves", "wolf": "wolves", "loaf": "loaves", "half": "halves", "calf": "calves",
             "scarf": "scarves", "ox": "oxen", "die": "dice", "cactus": "cacti", "bus": "buses",
             "potato": "potatoes", "tomato": "tomatoes", "mango": "mangoes", "hero": "heroes", "echo": "echoes"}
SINGULAR = {p: s for s, p in IRREGULAR.items()}
# The same word in both numbers (mass nouns, zero plurals).
SAME = {"sheep", "deer", "fish", "series", "species", "news", "sushi", "tennis", "billiards", "cosmetics",
        "hummus", "asparagus", "chess", "french fries"}
# Singular words ending in s: never strip it.
ENDS_IN_S = {"bus", "gas", "lens", "grass", "glass", "cross", "dress", "class", "boss", "mattress", "compass",
             "octopus", "cactus", "canvas"}
# Names of one object that are plural in form ("a pair of ..."), kept as they are.
PLURAL_ONLY = {"glasses", "scissors", "binoculars", "pliers", "tongs", "jeans", "shorts", "pants", "trousers",
               "headphones", "earphones", "goggles", "sunglasses", "noodles", "chips", "eyeglasses", "spectacles"}
# Nouns ending in -oe: their plural only adds s ("shoes" -> "shoe", unlike "heroes" -> "hero").
OE_NOUNS = ("shoe", "toe", "canoe", "hoe", "oboe", "floe", "sloe", "doe", "foe", "woe", "roe", "tiptoe",
            "mistletoe")
ACRONYMS = {"tv": "TV", "suv": "SUV", "cd": "CD", "dvd": "DVD", "atv": "ATV", "pc": "PC", "ufo": "UFO"}


def singular(word: str) -> str:
    """One lower-case word -> its singular ("berries" -> "berry", "tvs" -> "tv", "glass" -> "glass")."""
    w = word.lower()
    if w in SINGULAR:
        return SINGULAR[w]
    if w.endswith("s") and w[:-1] in ACRONYMS:  # "tvs", "suvs"
        return w[:-1]
    if w in SAME or w in ENDS_IN_S or len(w) <= 3 or not w.endswith("s") or w.endswith(("ss", "us", "is")):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("oes") and (w[:-1] in OE_NOUNS or w.endswith("shoes")):  # "shoes", "horseshoes", "canoes"
        return w[:-1]
    if w.endswith(("ches", "shes", "xes", "zes", "sses", "oes")):
        return w[:-2]
    return w[:-1]


def plural(phrase: str, invariant=frozenset()) -> str:
    """English plural of a noun phrase: the head noun changes ("piece of glass" -> "pieces of glass").
    A phrase or head word in `invariant` stays as it is (a caller's uncountable nouns)."""
    head, sep, tail = phrase.partition(" of ")
    words = head.split(" ")
    last = words[-1]
    low = last.lower()
    if phrase.lower() in invariant or low in invariant:
        new = last
    elif low in IRREGULAR:
        new = IRREGULAR[low]
    elif low in SAME or phrase.lower() in SAME or low in PLURAL_ONLY:
        new = last
    elif low.endswith("s") and low not in ENDS_IN_S and not low.endswith(("ss", "us", "is")):
        new = last                        # already plural ("sneakers", "gloves")
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        new = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        new = last[:-1] + "ies"
    else:
        new = last + "s"
    return " ".join(words[:-1] + [new]) + (sep + tail if sep else "")
