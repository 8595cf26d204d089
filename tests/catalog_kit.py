"""The test catalogue: products rendered with PIL (package shapes, brand colours, printed brand names
and prices) by edgesight.training.data.products — the same generator `edgesight eval products`
uses — plus augmented "shop photo" queries and deliberately broken catalogues for the error paths."""
from __future__ import annotations

import csv
from pathlib import Path

from edgesight.training.data.products import augment, catalog_products, queries, render, write_catalog

__all__ = ["augment", "render", "make_catalog", "photo_queries", "broken_catalog", "real_photo"]


def make_catalog(out_dir, n: int = 24, seed: int = 0, holdout: int = 4):
    """(csv path, listed products, held-out products): the held-out ones are never in the CSV."""
    products = catalog_products(n + holdout, seed=seed)
    return write_catalog(Path(out_dir), products[:n]), products[:n], products[n:]


def photo_queries(products, views: int = 1, seed: int = 123):
    return queries(products, views=views, seed=seed)


def broken_catalog(out_dir, good_csv: Path) -> Path:
    """The good catalogue's rows plus one row of each problem the ingestion must report (not die on)."""
    out_dir = Path(out_dir)
    with open(good_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    image_dir = good_csv.parent
    bad = [
        ["ZZZ Missing photo", "food/other", "3.00", "images/does-not-exist.png", "ZZZ"],   # image not on disk
        ["ZZZ Bad price", "food/other", "three dollars", body[0][3], "ZZZ"],              # unparsable price
        [body[1][0], body[1][1], "9.99", body[1][3], "dup"],                               # duplicate title
        ["", "food/other", "1.00", body[0][3], ""],                                         # empty title
        ["ZZZ Negative", "food/other", "-4", body[0][3], "ZZZ"],                            # negative price
        ["ZZZ Corrupt photo", "food/other", "2.00", str(out_dir / "corrupt.jpg"), "ZZZ"],  # not an image
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not really a JPEG")
    body = [[c if i != 3 else str(image_dir / c) for i, c in enumerate(r)] for r in body + bad]
    path = out_dir / "broken.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header] + body)
    return path


def real_photo(name: str = "chelsea"):
    """A real photo shipped with scikit-image (chelsea = a cat, coffee = an espresso): never a product."""
    from skimage import data

    return getattr(data, name)()
