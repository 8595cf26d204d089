"""Keyword extraction training data (`edgesight train keywords` trains on it).

Prompts a person would type to ask for segmentation, built from the Objects365 category list
and 100+ templates in the seed's families (simple, question, negation, action, detailed, contextual,
alternative, uncertainty) plus free phrasing. Unlike the seed, excluded objects ("but not humans",
"ignore the cars") never appear in the target, and prompts with nothing to segment map to [].
Surface forms vary (plurals, case, synonyms, slashed names split, adjectives and colours that are
not part of the name, a few misspellings). Each example also carries the character spans of the
kept objects, which is what the extractive (token-classifier) family learns.

The split is by template *and* by category: validation prompts use templates and categories that
training never saw, so validation measures generalisation. Everything is deterministic in `seed`.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ...inflect import ACRONYMS, ENDS_IN_S, PLURAL_ONLY, SAME, plural
from ...lexicon import FORMS, answer_name, canonical, dedupe, objects365

DATA_VERSION = "kw-data-5"
SYSTEM = "List the objects to segment."
LABELS = ["O", "B-OBJ", "I-OBJ"]

# {K}/{K2}: objects to keep; {X}/{X2}: objects mentioned but excluded. Templates without {K} give [].
TEMPLATES = {
    "simple": [
        "Detect and segment the following objects in the image: {K}.", "Identify and locate the following elements: {K}.",
        "Segment {K}.", "Precisely segment the objects: {K}.", "Find and mark the visible elements: {K}.",
        "Draw the contours of each {K} in the image.", "List all objects present in the image, including {K}.",
        "Accurately locate the objects: {K}.", "Separate and distinguish the following objects: {K}.", "{K}",
        "segment: {K}", "Objects to segment: {K}", "Recognize and annotate the following elements: {K}.",
    ],
    "question": [
        "What detectable objects are in the image? {K}.", "Can {K} be seen in this image?", "Does the image contain {K}?",
        "How many {K} are present in the image?", "Which elements are the most visible, including {K}?",
        "What is the main object in the image among {K}?", "Where are the {K}?", "Could you segment {K} for me?",
        "Can you find {K}?", "Is there any {K} here?", "Are there {K} in this picture?",
        "Does the image depict a scene containing {K}?",
    ],
    "negation": [
        "Segment {K}, but not {X}.", "Segment {K} but ignore {X}.", "Find {K}; skip {X}.", "Detect {K} and exclude {X}.",
        "Highlight {K}, not {X}.", "Segment everything except {X}.", "Detect all objects except {X}.", "Ignore {X}.",
        "Do not segment {X}.", "The image does NOT contain {X}. Identify only the other objects.",
        "Ignore elements that are not {K}.", "Do not consider objects other than {K}.",
        "Do not segment any objects other than {K}.", "Segment nothing other than {K}.",
        "Avoid detecting anything except {K}.", "Include only {K} in the analysis.", "Only {K}, no {X}.",
        "{K} without {X}", "Segment {K} and leave out {X}.", "I don't want {X}, just {K}.", "No {X} please, only {K}.",
        "Exclude {X} and keep {K}.", "Segment {K} instead of {X}.", "Instead of {X}, segment {K}.",
        "Segment neither {X} nor {X2}.", "Segment {K}, but neither {X} nor {X2}.", "Not only {K} but also {K2}.",
        "Segment not only {K} but also {K2}.", "Everything but {X}.", "Segment {K}, except for {X}.",
        "Keep {K}, drop {X}.", "{K} yes, {X} no.", "Don't include {X} in the mask, only {K}.",
        "Filter only for the presence of {K}.", "Exclude elements that do not belong to category {K}.",
        "Mask {K} but leave {X} untouched.", "Skip {X}, we only care about {K}.", "Nothing except {K}, please.",
        "Don't mask {X}, mask {K}.", "Get {K}, leave {X}.", "I don't care about {X}, just segment {K}.",
        "Segment {K} and not {X}.", "Everything except {X}, please.", "Not {X}. Segment {K}.",
        "Find {K} rather than {X}.", "Segment {K} in place of {X}.", "Rather than {X}, outline {K}.",
        "Instead of {X}, I want {K}.", "Disregard anything that isn't {K}.", "Leave out everything that is not {K}.",
        "Don't segment anything other than {K}.", "Do not mask anything except {K}.", "Nothing but {K}.",
        "Mask nothing besides {K}.", "Neither {X} nor {X2}, please.", "I want neither {X} nor {X2} but {K}.",
        "Both {K} and {K2}.", "Not just {K}, also {K2}.", "Segment {K} as well as {K2}.",
        "Don't forget {K}.", "Make sure you don't miss {K}.", "Never mind {X}; segment {K}.",
    ],
    "action": [
        "Draw a box around {K}.", "Highlight the area containing {K}.", "Outline the exact shape of {K}.",
        "Create a segmentation mask for {K}.", "Add a label for each {K}.", "Put a mask on {K}.",
        "Cut out {K} from the background.", "Color the {K} in red.", "Blur {K}.", "Crop {K}.",
        "Track {K} across the frames.", "Remove {K} from the photo.", "Emphasize the presence of {K} in the image.",
    ],
    "detailed": [
        "Describe in detail the following objects in the image: {K}.", "Analyze the image and precisely identify {K}.",
        "Classify the detected objects, including {K}.", "Associate each {K} with its exact position in the image.",
        "What types of objects appear here? Included list: {K}.", "Detail the shape and color of {K}.",
        "Summarize the objects present, focusing on {K}.", "Explain how {K} interact with other objects.",
        "Give me a precise mask of {K}, with clean edges.", "Provide an explanation of the presence of {K}.",
    ],
    "contextual": [
        "How far is {K} from other objects?", "Is there any overlap between {K} and other elements?",
        "How is {K} positioned in the image?", "Determine if {K} is in the foreground or background.",
        "Check if {K} is in motion or static.", "See if {K} is partially hidden by other objects.",
        "Compare the size of {K} with other objects present.", "In the photo I took in Paris last summer, find {K}.",
        "On my holiday picture, segment {K}.", "From this video still, extract {K}.",
        "In yesterday's snapshot from the garden, mark {K}.",
    ],
    "alternative": [
        "Indicate the position of {K} in the image.", "Segment each {K} found in this scene.",
        "Which categories of objects are represented, including {K}?", "Identify all {K} and estimate their relative size.",
        "Count the exact number of {K}.", "Locate {K} and mark their precise placement.", "Pick out {K}.",
        "Spot {K} in the shot.", "Isolate {K}.", "Extract {K} from this image.", "Define the outline of {K} in this image.",
    ],
    "uncertainty": [
        "Is it possible that the image contains {K}?", "Detect all visible objects, assuming the presence of {K}.",
        "List the potential objects in the image, including {K}.", "Find identifiable objects, focusing on {K}.",
        "Estimate the presence of {K} among the visible elements.", "Detect the objects with the highest probability, including {K}.",
        "I think there might be {K}, can you check?", "Maybe {K}? Segment them if you see any.",
        "Not sure, but there could be {K} somewhere.", "Is {K} fully visible or partially hidden?",
    ],
    "free": [
        "i need masks for {K}", "hey can u segment {K} pls", "{K} only", "just the {K}", "show me where the {K} are",
        "I'm looking for {K} in this picture.", "need {K} segmented asap", "Please segment {K} in the photo I took in Paris last summer.",
        "what about {K}?", "Segment {K}. Thanks!", "For my robotics project, locate {K}.", "{K}, nothing else.",
        "Nothing to segment here, just testing.", "Hello!", "What a beautiful day.", "Can you help me with the image?",
        "ok so basically i want {K} highlighted", "{K}!!!", "Could you please, if possible, segment {K}?",
        "What a lovely sunset.", "Thanks, that's all for now.", "The weather in the picture looks nice.",
        "Is this photo from last summer?", "Good morning, how are you?", "Test test 123", "No objects this time.",
        "Tell me a joke about the weekend.", "segment please", "Can you describe the mood of the scene?",
    ],
    # kw-data-4 (issue 13): scope across sentences, corrections, soft exclusions, exceptions after a list
    "multi": [
        "Do not segment {X}. Segment {K}.", "Segment {K}. Do not segment {X}.", "Don't mask {X}. Mask {K} instead.",
        "Segment {K}. Leave {X} alone.", "Ignore {X}. I want {K}.", "{X}: no. {K}: yes.", "Segment {K}. Not {X}, though.",
        "Find {K}. {X} should not be segmented.", "No {X}. Only {K}.", "Skip {X}. Then outline {K}.",
        "First, segment {K}. Second, ignore {X}.", "We don't need {X}. Please find {K}.",
        "Don't ignore {K}.", "Do not skip {K}.", "Don't leave out {K}.", "Please don't forget {K}; ignore {X}.",
        "Ignore everything except {K}.", "Ignore everything but {K}.", "Ignore all objects except {K}.",
        "Everything except {K} should be ignored.", "Everything other than {K} can be ignored.",
        "Apart from {X}, segment {K}.", "Segment {K}, apart from {X}.",
        "Only {K}, apart from that nothing.", "{K} only; apart from that, nothing.", "Just {K}, nothing more.",
    ],
    "correction": [
        "Segment {X}. Actually, no, segment {K} instead.", "Find {X}... wait, I meant {K}.", "Segment {X}, sorry, {K}.",
        "Mark {X}. Scratch that: mark {K}.", "Outline {X}. No wait, outline {K}.", "Segment {X}; correction: {K}.",
        "Rather than {X}, segment {K}.", "Segment {K} rather than {X}.", "Not {X} but {K}.", "{K}, not {X}.",
        "I said {X} but I meant {K}.", "Segment {X}. Hmm, on second thought, just {K}.",
        "Segment {K} and {X}, except {XR}.", "Find {K}, {X}, but not {XR}.", "Outline {K} and {X}; skip {XR} though.",
        "Segment {K} and {X}. Actually leave out {XR}.",
    ],
    "soft": [
        "Segment {K}. {X} can stay unmarked.", "Segment {K}; {X} are fine to skip.", "Segment {K}; {X} are out of scope.",
        "{X} don't matter, only {K}.", "Segment {K}, {X} can be left as they are.", "Mark {K}. {X} need no mask.",
        "Find {K}. We don't care about {X}.", "Outline {K}; {X} are not needed.", "{X} are background. Segment {K}.",
        "Segment {K}. Masks for {X} are optional, skip them.", "Please segment {K}; {X} will be done later.",
        "Segment {K}. {X} are already labelled.",
    ],
    # words that are not objects to segment: category words next to members, possessors, task words
    "hard_negative": [
        "Segment all {C} like {K}.", "Segment {C} such as {K}.", "Find the {C}: {K}.", "Mark {C}, for example {K}.",
        "Segment the {C}, especially {K}.", "Segment the {P}'s {K}.", "Find the {P}s' {K}.", "Outline the {P}'s {K}.",
        "Create a segmentation mask for {K}.", "Draw bounding boxes around {K}.", "Produce masks for {K}.",
        "Box {K}.", "Give me the outline of {K}.", "Make a mask of {K}.", "Label {K} with boxes.",
        "I want a segmentation of {K}.", "Generate a mask for each of {K}.",
    ],
    # kw-data-5 (issue 13, stop 23): a sentence describing the scene ({Y}: things in it, untagged, sometimes
    # the wanted objects too) before the actual request
    "scene": [
        "There are {Y}. Segment just {K}.", "The picture shows {Y}. I only care about {K}.",
        "In the background there are {Y}. Please segment only {K}.", "I see {Y} here. What I want are {K}.",
        "It's a busy scene with {Y}, but for now segment only {K}.", "The table has {Y} on it. What I need is {K}.",
        "This photo has {Y} in it. Just {K}, please.", "We have {Y} in this frame. Mask {K} and nothing else.",
        "There's {Y} in the shot. Could you outline {K}?", "The room is full of stuff: {Y}. I'm after {K}.",
        "Lots going on here, {Y}. Segment {K} only.", "You can see {Y}. The ones I need are {K}.",
        "{Y} are everywhere in this image. Find {K}.", "The scene: {Y}. Target: {K}.",
        "There are {Y}. What I want segmented are {K}.", "The street has {Y}. Only {K} matter to me.",
    ],
    # the objects named with what they hold or carry: both are asked for (the old hand-written set's form)
    "with": [
        "I'd like a mask of {K} with {K2}.", "Segment {K} playing with {K2}.", "Find {K} holding {K2}.",
        "Outline {K} carrying {K2}.", "Segment {K} together with {K2}.", "Mark {K} and {K2} they are holding.",
        "Segment {K} with {K2} on them.",
    ],
    # things that are not a request at all, naming scene words or everyday nouns in chat
    "nothing": [
        "What a lovely {S}.", "Such a beautiful {S}!", "I love the {S} in this picture.", "The {S} looks amazing.",
        "Nice {S}, isn't it?", "Wow, look at that {S}.", "My {N} broke yesterday, what a day.",
        "I bought a new {N} last week.", "The {S} was gorgeous this evening.", "Is the {S} too dark here?",
        "I'm just saying hi, no image today.", "Can you tell me what a {N} is?",
    ],
}
# kw-data-5: after the objects, a purpose ({N}: a noun that is not an object to segment, untagged)
PURPOSES = [" for a birthday card", " for a poster", " for my sister's birthday card", " for a greeting card",
            " so my team can train a parking app with them", " to train a {N} detector", " for a sticker",
            " so I can put them into a slideshow", " because I'm making a {N} catalogue", " for a book cover",
            " for our website", " for a collage about {NP}", " so I can make a funny sticker", " for a calendar",
            " for the {N} section of my report", " to print on a t-shirt", " for a presentation about {NP}",
            " so I can build a {N} app", " for a school project about {NP}", " for a gift box design",
            ". I want to use it for a card for my mum", ", it's for a flyer for the {N} shop",
            ". They're for a photo book", " for a dataset of {N} pictures", " for my app's {N} screen"]
# kw-data-5: objects named as the place of the wanted ones ({N}) are not answered (docs/keywords.md)
LOCATIONS = [" on the {N}", " next to the {N}", " under the {N}", " beside the {N}", " in front of the {N}",
             " behind the {N}", " near the {N}", " on top of the {N}", " inside the {N}", " by the {N}"]
SCENE_WORDS = ["sunset", "sunrise", "view", "sky", "weather", "light", "landscape", "atmosphere", "mood", "scenery",
               "composition", "evening", "colour", "sea", "horizon", "skyline", "garden", "weekend", "holiday"]
ADJECTIVES = ["red", "blue", "white", "black", "green", "yellow", "small", "large", "big", "old", "wooden",
              "metal", "plastic", "tiny", "shiny", "dirty", "new", "brown", "grey", "pink"]
UNCOUNTABLE = {"rice", "pasta", "luggage", "bread", "toilet paper", "tape", "corn", "lettuce", "garlic", "broccoli",
               "okra", "cabbage", "red cabbage", "asparagus", "cheese", "candy", "steak", "sushi", "ice cream",
               "canned food", "soap", "tissue", "notepaper", "cosmetics", "noodles", "chips", "nuts"}
SINGULAR_DETS = ["", "a ", "the ", "every ", "each ", "one ", "that "]
PLURAL_DETS = ["", "the ", "all the ", "all ", "some ", "two ", "any ", "three ", "these "]


# Nouns the prompts never pluralise ("two grass", "all the glass" read as mass nouns): part of the data
# version, so kw-data-2 stays what the shipped adapter was trained and validated on.
KEEP_SINGULAR = SAME | ENDS_IN_S


def pluralize(form: str) -> str:
    return plural(form, invariant=KEEP_SINGULAR | PLURAL_ONLY)


def surface_forms(label: str) -> list[str]:
    """Lower-case singular names a person would type for one Objects365 label."""
    forms = FORMS.get(label) or [p.strip().lower() for p in label.split("/")]
    # a usable form is singular: it pluralises to another word that canonicalises back to it (or never changes)
    return [f.lower() for f in forms if canonical(pluralize(f.lower())).lower() == canonical(f).lower()
            and (pluralize(f.lower()) != f.lower() or f.lower() in KEEP_SINGULAR | PLURAL_ONLY
                 or f.lower().split(" ")[-1] in KEEP_SINGULAR)]


def _misspell(word: str, rng: random.Random) -> str:
    if len(word) < 6 or " " in word:
        return word
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:] if rng.random() < 0.5 else word[:i] + word[i + 1:]


def _case(text: str, rng: random.Random) -> str:
    r = rng.random()
    return text.title() if r < 0.2 else text.upper() if r < 0.25 else text


def _render_object(form: str, rng: random.Random, misspell: float, bare: bool) -> tuple[str, int, int]:
    """One object mention: (text, noun start, noun end); determiners and adjectives are not tagged.
    `bare`: the template already put a determiner before the slot ("each {K}")."""
    plural = rng.random() < 0.55 and form not in PLURAL_ONLY and form not in UNCOUNTABLE
    noun = pluralize(form) if plural else form
    if rng.random() < misspell:
        noun = _misspell(noun, rng)
    noun = ACRONYMS.get(noun, noun) if rng.random() < 0.5 else noun
    noun = _case(noun, rng)
    det = "" if bare else rng.choice(PLURAL_DETS if plural else SINGULAR_DETS)
    if form in UNCOUNTABLE and det.strip() in ("a", "an", "one", "two", "three", "every", "each"):
        det = "the "
    adj = rng.choice(ADJECTIVES) + " " if rng.random() < 0.25 else ""
    head = det + adj
    return head + noun, len(head), len(head) + len(noun)


def _render_list(items: list[str], rng: random.Random, misspell: float, bare: bool):
    """Join object mentions like a person would: 'a, b and c', 'a/b', 'a & b', 'a,b'."""
    rendered = [_render_object(f, rng, misspell, bare and i == 0) for i, f in enumerate(items)]
    seps = [", ", ", ", ",", " / ", "; "]
    last = rng.choice([" and ", ", ", " & ", " or ", ", and ", " and also "])
    sep = rng.choice(seps)
    text, spans = "", []
    for i, (t, s, e) in enumerate(rendered):
        if i:
            text += last if i == len(rendered) - 1 else sep
        spans.append((len(text) + s, len(text) + e))
        text += t
    return text, spans


CATEGORY_WORDS = ["animals", "vehicles", "furniture", "fruit", "fruits", "kitchen items", "tools", "food", "objects",
                  "items", "things", "electronics", "devices", "appliances", "instruments", "toys", "sports gear",
                  "containers", "clothes", "accessories", "plants", "birds", "pets"]
POSSESSORS = ["cyclist", "driver", "girl", "boy", "man", "woman", "surfer", "rider", "child", "teacher", "worker",
              "chef", "player", "farmer", "tourist", "student", "customer", "owner", "neighbour", "kid"]
# Concrete nouns outside Objects365 (objects a user may still ask for): the tagger must tag them too,
# and they come back as written. Written for kw-data-4; nouns of the frozen evaluation set were removed.
EXTRA_NOUNS = """eagle hawk squirrel frog snake turtle lizard shark whale octopus bee spider ant kangaroo koala panda
leopard cheetah hippo rhino gorilla barn shed hut bridge gate door window wall roof chimney staircase balcony fountain
statue trailer tram canoe kayak raft yacht submarine rocket drone sled wagon sack hose wire rope hoe saw drill wrench
skillet wok ladle spatula whisk grater colander jar lid tray thermos whistle harp accordion banjo xylophone poster
sculpture curtain blanket quilt rug mat cushion hammock crib cot cap jacket sweater shirt dress skirt sock crown apron
lime walnut peanut almond pretzel bagel muffin croissant waffle pancake taco burrito noodle soup salad omelette wheel
engine bumper antenna seesaw trampoline stove heater boiler stump branch rock boulder pebble shell coral cactus toolbox
nail screw bolt cassette joystick controller robot coin banknote ticket envelope parcel stamp torch flashlight
chandelier soda juice milk coffee tea wine drawer wardrobe dresser goggles""".split()

# Context that names things which are not objects to segment (places, people, times, scene parts).
CONTEXTS = [" in the photo I took in Paris last summer", " from my holiday pictures", " near the river",
            " on the left side of the frame", " for my school project", " in the image my friend sent yesterday",
            " on the road", " under the bright sky", " in the kitchen", " at the beach", " in the living room",
            " on the statue", " by the window", " in this shot from the parking lot", " at my grandmother's house",
            " from the video my brother recorded", " in the background", " on the street",
            # kw-data-4: gerunds and scene words after the objects are not objects to segment
            " grazing in the field", " running across the grass", " flying over the lake", " parked along the curb",
            " next to the dock", " walking down the road", " sleeping on the floor", " standing near the wall",
            " swimming in the pond", " lying on the ground", " waiting at the platform", " hanging on the wall",
            " in front of the building", " against the sky", " behind the hill", " floating in the water"]


# Long chatty prompts (kw-data-4): sentences around the request whose nouns are not objects to segment.
CHATTY_BEFORE = ["Hi there! ", "Hello, hope you're well. ", "Quick question about a photo I took with my phone. ",
                 "This picture is from our family trip to the mountains last spring. ",
                 "I'm preparing a presentation for my marketing class and need some help. ",
                 "Our startup is building an inventory tool for small shops. ",
                 "So, this is a frame from the security footage of our warehouse. ",
                 "My neighbour sent me this snapshot of the street festival. ",
                 "I'm a biology student documenting the campus garden. ",
                 "We are labelling images for a research project on city traffic. ",
                 "Sorry for the blurry shot, it was taken from a moving train. ",
                 "This one comes from the school's sports day. ", "Okay, next image: the lobby of our hotel. ",
                 "Long story short, the scanner at the office broke, so I used my camera. ",
                 "Context: a dashcam clip from a rainy evening. ", "Task for the annotation team: ",
                 "I've been working on this dataset all week and I'm exhausted. ",
                 "My grandfather's old slide collection is being digitised. "]
CHATTY_AFTER = [" Thanks a lot!", " Thank you so much, you're a lifesaver.", " Let me know if anything is unclear.",
                " The deadline for the report is Monday.", " We will handle the rest of the image ourselves.",
                " Nothing else in the picture matters.", " I'll send more pictures tomorrow.", " Cheers!",
                " This is for a school project about recycling.", " The lighting is poor, sorry about that.",
                " My manager needs the masks by noon.", " The photo was taken with an old film camera."]


def chatty(example: dict, rng: random.Random) -> dict:
    """The example inside a sentence or two of chat (before, after or both); spans shift along."""
    r = rng.random()
    before = rng.choice(CHATTY_BEFORE) if r < 0.7 else ""
    after = rng.choice(CHATTY_AFTER) if r > 0.4 else ""
    return {**example, "input": before + example["input"] + after,
            "spans": [[s + len(before), e + len(before)] for s, e in example["spans"]]}


def _untagged(labels, rng, exclude=()) -> str:
    """One noun form of a random label that is not an object to segment here ({N})."""
    while True:
        label = rng.choice(labels)
        if label not in exclude:
            return rng.choice(surface_forms(label))


def make_example(template: str, labels: list[str], rng: random.Random, misspell: float = 0.0) -> dict:
    """Fill one template with objects drawn from `labels`; returns input, output, spans.
    {K}/{K2}: kept objects; {X}/{X2}: excluded; {XR}: the excluded named again; {Y}: a list of things in
    the scene (untagged, sometimes the kept objects again); {N}: one untagged noun; {S}: a scene word."""
    if "{K" in template and rng.random() < 0.25:
        stem = template.rstrip(".!?")
        template = stem + rng.choice(CONTEXTS) + template[len(stem):]
    if "{K" in template and rng.random() < 0.15:   # kw-data-5: a location or a purpose after the objects
        stem = template.rstrip(".!?")
        i = template.rfind("{K")
        extra = rng.choice(LOCATIONS if rng.random() < 0.5 else PURPOSES)
        if template.find("}", i) + 1 >= len(stem) or rng.random() < 0.5:   # at the end of the request
            template = stem + extra + template[len(stem):]
        else:                                                              # or right after the last objects
            j = template.find("}", i) + 1
            template = template[:j] + extra + template[j:]
    if template.strip() in ("{K}", "{K}.") and rng.random() < 0.3:
        template = "{KS}"   # "Guitar. Drum. Microphone."
    slots = re.findall(r"\{(K2?|X2?)\}", template) + (["K"] if "{KS}" in template else [])
    for slot, words in (("{C}", CATEGORY_WORDS), ("{P}", POSSESSORS)):   # untagged words (kw-data-4)
        if slot in template:
            template = template.replace(slot, rng.choice(words))
    need = {s: rng.choice([1, 1, 2, 2, 3, 4]) if s == "K" else rng.choice([1, 1, 2]) for s in slots}
    if "X2" in need:
        need["X"] = need["X2"] = 1
    chosen = rng.sample(labels, sum(need.values()))
    text, spans, output = "", [], []
    said: dict[str, list[str]] = {}
    picked = list(chosen)
    groups = {}
    for slot in slots:
        groups[slot], chosen = chosen[: need[slot]], chosen[need[slot]:]
    for piece in re.split(r"(\{K[2S]?\}|\{X[2R]?\}|\{(?:Y|NP?|S)\})", template):
        slot = piece[1:-1] if piece.startswith("{") else None
        if slot is None:
            text += piece
            continue
        if slot == "XR":   # the excluded objects named again ("segment A and B, except the B")
            text += _render_list(said["X"], rng, 0.0, False)[0]
            continue
        if slot in ("N", "NP"):
            noun = _untagged(labels, rng, picked)
            text += pluralize(noun) if slot == "NP" else noun
            continue
        if slot == "S":
            text += rng.choice(SCENE_WORDS)
            continue
        if slot == "Y":   # the scene: other things, and in 30% of prompts the wanted objects among them
            others = [_untagged(labels, rng, picked) for _ in range(rng.choice([1, 2, 2, 3]))]
            if rng.random() < 0.3 and "K" in groups:
                others.insert(rng.randrange(len(others) + 1), rng.choice(surface_forms(rng.choice(groups["K"]))))
            text += _render_list(list(dict.fromkeys(others)), rng, 0.0, False)[0]
            continue
        forms = [rng.choice(surface_forms(label)) for label in groups["K" if slot == "KS" else slot]]
        said[slot] = forms
        bare = re.search(r"(\b(each|every|the|a|all|any|of)|'s|s')\s$", text.lower()) is not None
        if slot == "KS":   # one object per sentence
            rspans, rendered = [], ""
            for f in forms:
                t, s, e = _render_object(f, rng, misspell, True)
                t = t[:1].upper() + t[1:]
                rendered += (" " if rendered else "")
                rspans.append((len(rendered) + s, len(rendered) + e))
                rendered += t + "."
            slot = "K"
        else:
            rendered, rspans = _render_list(forms, rng, misspell, bare)
        if slot.startswith("K"):
            spans += [(len(text) + s, len(text) + e) for s, e in rspans]
            output += [answer_name(f) for f in forms]   # the SDK's answer form (Objects365 name for synonyms)
        text += rendered
    return {"input": text, "output": dedupe(output), "spans": [list(s) for s in spans]}


def build(n_train: int = 4000, n_val: int = 400, *, seed: int = 0, val_fraction: float = 0.2) -> dict:
    """{"train": [...], "val": [...]} split by template and by category (see module doc)."""
    rng = random.Random(seed)
    labels = [label for label in list(objects365()) + EXTRA_NOUNS if surface_forms(label)]
    rng.shuffle(labels)
    n_val_labels = int(len(labels) * val_fraction)
    val_labels, train_labels = labels[:n_val_labels], labels[n_val_labels:]
    train_t, val_t = [], []
    for family, templates in sorted(TEMPLATES.items()):
        ts = list(templates)
        rng.shuffle(ts)
        k = max(1, round(len(ts) * val_fraction))
        val_t += [(family, t) for t in ts[:k]]
        train_t += [(family, t) for t in ts[k:]]
    out = {}
    for split, n, temps, labs, miss in (("train", n_train, train_t, train_labels, 0.03),
                                        ("val", n_val, val_t, val_labels, 0.0)):
        srng = random.Random(f"{seed}-{split}")
        rows = []
        for i in range(n):
            family, t = temps[i % len(temps)] if i < len(temps) else srng.choice(temps)
            wrap = srng.random() < 0.15
            ex = make_example(t, labs, srng, miss)
            if wrap:
                ex = chatty(ex, srng)
            ex.update(family=family, template=t)
            rows.append(ex)
        out[split] = rows
    out["meta"] = {"version": DATA_VERSION, "seed": seed, "templates": sum(map(len, TEMPLATES.values())),
                   "train_templates": len(train_t), "val_templates": len(val_t),
                   "train_categories": len(train_labels), "val_categories": len(val_labels)}
    return out


def write_jsonl(rows, path) -> Path:
    from ...bundle import atomic_write_bytes
    path = Path(path)
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return path


def format_generative(example: dict) -> tuple[str, str]:
    return example["input"], ", ".join(example["output"]) or "None"


def format_extractive(example: dict) -> tuple[str, list]:
    return example["input"], [(s, e, "OBJ") for s, e in example["spans"]]
