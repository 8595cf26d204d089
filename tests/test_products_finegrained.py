"""The fine-grained apparel benchmark of `edgesight eval products`: the frozen test split must not drift
(its photos' sha256 is pinned), and its shape is what the issue asked for."""
from collections import Counter

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
