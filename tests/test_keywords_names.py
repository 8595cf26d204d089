"""Keyword answers (issue 13): names, spelling correction that never rewrites an English word, seed
000's preamble, French prompts, and the frozen evaluation set's shape."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesight.inflect import plural, singular
from edgesight.lexicon import answer_name, canonical, english_words, from_french, name_words, spell_fix
from edgesight.tasks.keywords import spans_to_names, user_text
from edgesight.training.data import keywords as kwdata

FROZEN = Path(__file__).parent / "data" / "keywords_frozen.jsonl"
PREAMBLE = ("\nInstruction: You are an assistant specialized in object segmentation. Your task is to list all the "
            "objects mentioned in the description, following the specific instructions provided.\nExample: For the "
            "input 'Segment cats, dogs, but not humans', the expected output is ['cat', 'dog'].\nDescription: ")


def test_no_english_word_is_ever_rewritten():
    """Every word of the English word list, and its plural (where the inflector reads it back), comes
    back as written: only a word absent from the list may be corrected. 128k words x 2 forms (about 3 s)."""
    forms = [f for w in english_words() for f in (w, plural(w)) if f == w or singular(f) == w]
    changed = [form for form in forms if spell_fix(form) != form]
    assert changed == []


@pytest.mark.parametrize("word", ["tiger", "house", "tractor", "fence", "pallets", "moose", "owl", "wig", "fig",
                                  "grill", "cattle", "crate", "trunk", "lamb", "goats", "bush", "saddle", "cable",
                                  "chain", "tower", "rake", "vent", "disk", "log", "map", "pan", "bell", "tire"])
def test_correct_nouns_near_a_name_stay_themselves(word):
    assert spans_to_names(word, [(0, len(word))]) == [canonical(word)]


@pytest.mark.parametrize("plural_form, want", [("shoes", "Shoe"), ("canoes", "Canoe"), ("horseshoes", "Horseshoe"),
                                               ("toes", "Toe"), ("potatoes", "Potato"), ("heroes", "Hero"),
                                               ("volcanoes", "Volcano"), ("boxes", "Storage box")])
def test_plurals_in_oes_keep_their_e_only_for_oe_nouns(plural_form, want):
    """'shoes' was answered 'Sho' (the -oes rule of 'potatoes' applied to -oe nouns)."""
    assert answer_name(plural_form) == want
    assert singular(plural_form) + "s" == plural_form or singular(plural_form) + "es" == plural_form


@pytest.mark.parametrize("typo, want", [("bycicle", "Bicycle"), ("umbrela", "Umbrella"), ("motorcyle", "Motorcycle"),
                                        ("elephnats", "Elephant"), ("bicylces", "Bicycle"), ("keybaord", "Keyboard"),
                                        ("trafic light", "Traffic Light")])
def test_misspellings_of_names_are_corrected(typo, want):
    assert spans_to_names(typo, [(0, len(typo))]) == [want]


def test_corrections_go_only_to_name_words_and_never_on_a_tie():
    assert spell_fix("chiens") == "chiens"         # French, not a typo of "chicken"
    assert spell_fix("zzzzqx") == "zzzzqx"
    assert spell_fix("carots") == "carots"         # carrots or carts: a tie is left alone
    assert all(w == w.lower() for w in name_words())


@pytest.mark.parametrize("phrase, want", [
    ("sofas", "Couch"), ("fridge", "Refrigerator"), ("automobiles", "Car"), ("cellphone", "Cell Phone"),
    ("remote control", "Remote"), ("lorries", "Truck"), ("teddy bears", "Stuffed Toy"), ("television", "TV"),
    ("shelves", "Shelf"), ("birds", "Bird"), ("trash cans", "Trash can"), ("people", "Person"),
    ("tigers", "Tiger"), ("excavator", "Excavator"), ("red fences", "Red fence"),
])
def test_answer_names_use_the_objects365_name_for_synonyms(phrase, want):
    assert answer_name(phrase) == want


def test_seed_preamble_and_chat_markers_are_removed():
    assert user_text(PREAMBLE + "Segment each Person Microphone found in this scene\n") == \
        "Segment each Person Microphone found in this scene"
    assert user_text("<|system|>\nList objects.</s>\n<|user|>\nfind the dogs</s>\n<|assistant|>\n") == "find the dogs"
    assert user_text("Instruction manual for the printer") == "Instruction manual for the printer"


def test_french_prompts_read_as_english():
    assert from_french("Segmente les chats et les chiens, mais pas les oiseaux") == \
        "segment the cat and the dog, but not the bird"
    assert from_french("Ne segmente pas les voitures, seulement les camions") == "do not segment the car, only the truck"
    assert from_french("À part les tables, segmente les chaises") == "apart from the table, segment the chair"
    assert from_french("Trouve la girafe et l'éléphant") == "find the giraffe and the elephant"
    for english in ("Segment the cats and the dogs", "Bonjour", "pas de deux"):
        assert from_french(english) == english


def test_frozen_set_is_intact():
    """The frozen set is never edited to fit a model: 294 rows, 12 families of at least 20."""
    rows = [json.loads(line) for line in FROZEN.read_text(encoding="utf-8").splitlines() if line.strip()]
    families = {}
    for r in rows:
        assert set(r) == {"family", "input", "output"} and isinstance(r["output"], list)
        families[r["family"]] = families.get(r["family"], 0) + 1
    assert len(rows) == 294 and len(families) == 12 and min(families.values()) >= 20


@pytest.mark.parametrize("text, tagged, want", [
    ("segment the runners' shoes", ["runners", "shoes"], ["Shoe"]),
    ("the rider's red helmets and the cats", ["rider's", "helmets", "cats"], ["Helmet", "Cat"]),
    ("the cyclist’s bicycle", ["cyclist", "bicycle"], ["Bicycle"]),
    ("cats and dogs", ["cats", "dogs"], ["Cat", "Dog"]),
    ("segment the dog's", ["dog"], ["Dog"]),                      # nothing owned after it: kept
    ("the farmer's big old brown tractor", ["farmer", "tractor"], ["Farmer", "Tractor"]),  # too far apart
])
def test_a_possessor_tagged_before_what_it_owns_is_dropped(text, tagged, want):
    spans = [(text.index(w), text.index(w) + len(w)) for w in tagged]
    assert spans_to_names(text, spans) == want


@pytest.mark.parametrize("text, tagged, want", [
    ("I want to use it for a birthday card", ["card"], ["Birthday card"]),   # a compound is another object
    ("the shoe box and the dog", ["box", "dog"], ["Shoe box", "Dog"]),
    ("segment the red cards", ["cards"], ["Poker Card"]),                   # adjectives keep the object
    ("the big wooden box", ["box"], ["Storage box"]),
    ("the playing cards", ["cards"], ["Poker Card"]),                       # a known compound: its name
    ("the children's cards", ["cards"], ["Poker Card"]),                    # a possessor is no modifier
    ("Find the dogs, card", ["dogs", "card"], ["Dog", "Poker Card"]),       # punctuation between: a list
    ("the birthday card", ["birthday card"], ["Birthday card"]),            # tagged whole: the same answer
])
def test_a_compound_whose_head_is_a_synonym_is_answered_as_written(text, tagged, want):
    spans = [(text.index(w), text.index(w) + len(w)) for w in tagged]
    assert spans_to_names(text, spans) == want


def test_cutting_board_is_not_cut():
    assert answer_name("cutting boards") == "Cutting Board" and answer_name("chopping board") == "Chopping Board"


def test_data_has_scene_purpose_location_and_nothing_kinds():
    """kw-data-5: a scene sentence before the request, purpose and location phrases after the objects
    (their nouns untagged), objects one per sentence, chat with nothing to segment."""
    data = kwdata.build(2000, 10, seed=0)["train"]
    fams = {r["family"] for r in data}
    assert {"scene", "with", "nothing"} <= fams
    import random
    rng, labels = random.Random(0), ["Cat", "Dog", "Car", "Chair", "Bench", "Bicycle", "Cup", "Poker Card"]
    for t in kwdata.TEMPLATES["scene"]:
        if "{Y}. " in t:
            for _ in range(5):   # nothing tagged in the scene sentence, something after it
                ex = kwdata.make_example(t, labels, rng)
                assert ex["output"] and min(s for s, _ in ex["spans"]) > ex["input"].index(". "), ex
    for extra in kwdata.PURPOSES + kwdata.LOCATIONS:   # the purpose or place noun is never tagged
        ex = kwdata.make_example("Segment {K}" + extra + ".", labels, rng)
        head = extra.split("{")[0]
        assert ex["output"] and max(e for _, e in ex["spans"]) <= ex["input"].index(head), ex
    assert sum(any(x.split("{")[0] in r["input"] for x in kwdata.PURPOSES[:4] + kwdata.LOCATIONS[1:4])
               for r in data) > 20
    assert any(r["input"].count(". ") >= 1 and r["template"] in ("{K}", "{K}.") for r in data)
    assert [r for r in data if r["family"] == "nothing"] and all(r["output"] == [] for r in data if r["family"] == "nothing")
