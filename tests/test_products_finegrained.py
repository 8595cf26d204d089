"""The fine-grained apparel benchmark of `edgesight eval products`: the frozen test split must not drift
(its photos' sha256 is pinned), and its shape is what the issue asked for."""
from collections import Counter

import numpy as np

from edgesight.evaluation.products import FINEGRAINED, FROZEN, finegrained_split


def test_frozen_test_split_is_unchanged_and_shaped_as_specified():
    listed, known, unknown, digest = finegrained_split("test")
    assert digest == FROZEN["test"], "the frozen fine-grained test split changed: revert the generator, do not re-pin"
    assert len(listed) >= 60 and len({g.silhouette for g in listed}) >= 10
    per_shape = Counter(g.silhouette for g in listed)
    assert min(per_shape.values()) >= 3
    colours_per_shape = {s: {g.colour for g in listed if g.silhouette == s} for s in per_shape}
    patterns_per_colour = Counter((g.silhouette, g.colour) for g in listed)
    assert all(len(c) >= 3 for c in colours_per_shape.values()) and max(patterns_per_colour.values()) >= 3
    unlisted = {g.title: g for _, g in unknown}
    assert len(unlisted) >= 20 and sum(g.look_alike != "silhouette not listed" for g in unlisted.values()) >= 10
    assert not set(unlisted) & {g.title for g in listed}
    assert len(known) == FINEGRAINED["test"]["views"] * len(listed)


def test_dev_split_is_another_catalogue():
    test, dev = finegrained_split("test")[0], finegrained_split("dev")[0]
    assert {g.title for g in test} != {g.title for g in dev}


def _fused(shape, colour, w=0.3):
    return np.concatenate([np.sqrt(1 - w) * shape / np.linalg.norm(shape), np.sqrt(w) * colour / np.linalg.norm(colour)])


def test_calibration_adds_a_colour_cut_that_flags_a_new_colourway_of_a_listed_shape():
    """Items = 3 shapes x 3 colours. Left out, an item's nearest neighbour has its shape in another colour: the
    fused score stays high (shape weighs 0.7) but colour agreement drops, so the calibrated rule needs both."""
    from edgesight.catalog import CatalogIndex, Product
    from edgesight.tasks.products import agreement, calibrate

    rng = np.random.default_rng(0)
    shapes, colours = rng.standard_normal((3, 16)), np.eye(6)[:4] + 0.05
    items = [(s, c) for s in range(3) for c in range(3)]
    noisy = lambda s, c, k: np.stack([_fused(shapes[s] + 0.15 * rng.standard_normal(16), colours[c] + 0.05 * rng.random(6))
                                      for _ in range(k)]).astype(np.float32)
    index = CatalogIndex(np.concatenate([noisy(s, c, 4) for s, c in items]), [Product(f"{s}/{c}", None, None) for s, c in items],
                         {}, items=np.repeat(np.arange(len(items)), 4), features={"colour_weight": 0.3, "embedding": 16})
    probes = np.concatenate([noisy(s, c, 6) for s, c in items])
    cal = calibrate(index, probes, np.repeat(np.arange(len(items)), 6))
    assert cal["colour_min"] is not None and cal["listed_pass_rate"] >= 0.9 and cal["lookalike_flag_rate"] >= 0.9

    def flagged(q):
        top, sims = index.search(q, 2, exact=True)
        emb, col, _ = agreement(index, q, top[:, 0]).T
        return (sims[:, 0] < cal["threshold"]) | (emb < (cal["embedding_min"] or -1)) | (col < cal["colour_min"])
    listed, new_colourway = noisy(1, 2, 20), noisy(1, 3, 20)
    fused_gap = index.search(new_colourway, 1, exact=True)[1].mean() - cal["threshold"]
    assert fused_gap > 0, "the fused score alone would pass the new colourway"
    assert flagged(listed).mean() <= 0.1 and flagged(new_colourway).mean() >= 0.9


def test_texture_cut_flags_a_listed_colour_in_a_new_pattern():
    """Items = 3 silhouettes x patterns, all one colour; silhouette 0 is listed solid and dotted, striped only on the
    others. A striped silhouette 0 matches its silhouette and colour exactly, so embedding and colour agreement and
    the fused score pass it; only the texture descriptor (real, on rendered garments) sees the new pattern, and
    the calibration must find that cut from the probes alone."""
    import random

    from edgesight.catalog import CatalogIndex, Product
    from edgesight.tasks.products import TEXTURE, TEXTURE_WEIGHT, agreement, calibrate, texture_descriptor
    from edgesight.training.data.products import Garment, render_garment, reshoot

    rng, prng = np.random.default_rng(0), random.Random(0)
    shapes, colour = rng.standard_normal((3, 16)), np.full(256, 1 / 16)
    features = {"embedding": 16, "colour_weight": 0.3, "colour_bins": [4, 8, 8], "texture_weight": TEXTURE_WEIGHT,
                "texture": dict(TEXTURE)}
    wc, wt = 0.3, TEXTURE_WEIGHT
    silhouettes = ("Dress", "Skirt", "Scarf")

    def rows(s, pattern, k, texture=True):
        photo = render_garment(Garment("x", silhouettes[s], "Navy", pattern, "c", 1.0, True))
        out = []
        for _ in range(k):
            e = shapes[s] + 0.15 * rng.standard_normal(16)
            t = texture_descriptor(reshoot(photo, prng))
            out.append(np.concatenate([np.sqrt(1 - wc - wt) * e / np.linalg.norm(e), np.sqrt(wc) * colour,
                                       np.sqrt(wt) * t * texture]))
        return np.stack(out).astype(np.float32)

    listed = [(0, "Solid"), (0, "Dot"), (1, "Solid"), (1, "Stripe"), (2, "Dot"), (2, "Stripe")]
    index = CatalogIndex(np.concatenate([rows(s, p, 4) for s, p in listed]), [Product(f"{s}/{p}", None, None) for s, p in listed],
                         {}, items=np.repeat(np.arange(len(listed)), 4), features=features)
    cal = calibrate(index, np.concatenate([rows(s, p, 6) for s, p in listed]), np.repeat(np.arange(len(listed)), 6))
    assert cal["texture_min"] is not None and cal["listed_pass_rate"] >= 0.9

    def flagged(q):
        top, sims = index.search(q, 2, exact=True)
        agree = agreement(index, q, top[:, 0])
        return (sims[:, 0] < cal["threshold"]) | (sims[:, 0] - sims[:, 1] < cal["margin"]) | np.any(
            [agree[:, j] < (cal[f"{n}_min"] or -1) for j, n in enumerate(("embedding", "colour", "texture"))], axis=0)
    known, new_pattern = rows(0, "Solid", 20), rows(0, "Stripe", 20)
    assert index.search(new_pattern, 1, exact=True)[1].mean() > cal["threshold"], "the fused score alone passes it"
    assert agreement(index, new_pattern, index.search(new_pattern, 1, exact=True)[0][:, 0])[:, 1].min() > 0.99
    assert flagged(known).mean() <= 0.1 and flagged(new_pattern).mean() >= 0.8
