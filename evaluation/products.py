"""Product recognition evaluation (`edgesight eval products`): a synthetic catalogue
(edgesight.training.data.products) queried with augmented photos, held-out look-alikes and photos of
non-products, per encoder bundle and OCR setting; optionally the catalogue search time vs its size.

    run_eval(bundle, threads=2, products=40, views=3, ocr="both", scaling=True)
"""
from __future__ import annotations

import numpy as np

from ..catalog import CatalogIndex, Product
from ..cli import add_runtime_arguments
from ..errors import InputError
from ..tasks.products import ProductRecognizer

OCR_SETTINGS = {"off": [False], "on": [True], "both": [False, True]}
BENCH_OPTIONS = {"products": 16, "views": 2, "holdout": 4, "ocr": "off"}  # what the benchmark suite runs


def search_scaling(sizes=(1_000, 10_000, 100_000), dim: int = 1280, queries: int = 30, k: int = 5) -> list[dict]:
    """Time of one top-k search vs catalogue size, exact scan and (from IVF_MIN_ITEMS) the inverted file, with
    the IVF's agreement with the exact top-1. Random unit embeddings (speed does not depend on values); the
    queries are noisy copies of catalogue rows (cosine ~0.9, like a photo of a listed product)."""
    import time

    from ..catalog import IVF_MIN_ITEMS

    def median_ms(fn, qs):
        times = []
        for q in qs:
            t0 = time.perf_counter()
            fn(q)
            times.append(time.perf_counter() - t0)
        return round(float(np.median(times)) * 1000, 3)

    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        index = CatalogIndex(emb, [Product(str(i), None, None) for i in range(n)], {})
        qs = emb[rng.integers(0, n, queries)] + rng.standard_normal((queries, dim), dtype=np.float32) * (0.48 / np.sqrt(dim))
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        row = {"items": n, "dim": dim, "matrix_mb": round(emb.nbytes / 1e6, 1),
               "exact_ms": median_ms(lambda q: index.search(q, k, exact=True), qs)}
        if n >= IVF_MIN_ITEMS:
            t0 = time.perf_counter()
            ivf = index.ivf()
            row.update(ivf_lists=len(ivf.centroids), nprobe=index.nprobe, ivf_build_s=round(time.perf_counter() - t0, 1),
                       ivf_ms=median_ms(lambda q: index.search(q, k), qs),
                       ivf_top1_agreement=float(np.mean([index.search(q, 1)[0][0, 0] == index.search(q, 1, exact=True)[0][0, 0]
                                                         for q in qs])))
        rows.append(row)
        del emb, index
    return rows


def evaluate(task: ProductRecognizer, known: list, unknown: list = (), ocr: bool = False, non_products: list = ()) -> dict:
    """Metrics on (photo, truth) pairs whose truth has .title .category .price; `unknown` pairs are
    products absent from the catalogue, `non_products` photos of anything else (the right answer is `unknown`)."""
    import time

    if non_products:
        rejected = [task(image, ocr=False).unknown for image in non_products]
    results, times = [], []
    for image, _ in known + list(unknown):
        t0 = time.perf_counter()
        results.append(task(image, ocr=ocr))
        times.append(time.perf_counter() - t0)
    res_known, res_unknown = results[:len(known)], results[len(known):]
    truth = [t for _, t in known]
    top1 = np.mean([r.matches[0].title == t.title for r, t in zip(res_known, truth)])
    answered = np.mean([r.title == t.title for r, t in zip(res_known, truth)])
    category = np.mean([r.matches[0].category == t.category for r, t in zip(res_known, truth)])
    price_err = [abs((r.price if r.price is not None else r.price_estimate.value) - t.price) for r, t in zip(res_known, truth)]
    out = {"queries": len(known), "ocr": ocr, "top1_title_accuracy": round(float(top1), 4),
           "accuracy_with_unknown": round(float(answered), 4), "category_accuracy": round(float(category), 4),
           "price_mae": round(float(np.mean(price_err)), 3), "false_unknown_rate": round(float(np.mean([r.unknown for r in res_known])), 4),
           "median_ms": round(float(np.median(times)) * 1000, 1),
           "similarity_correct_median": round(float(np.median([r.matches[0].similarity for r in res_known])), 4)}
    if unknown:
        out["unknown_queries"] = len(unknown)
        out["unknown_detected_rate"] = round(float(np.mean([r.unknown for r in res_unknown])), 4)
        out["similarity_unknown_median"] = round(float(np.median([r.matches[0].similarity for r in res_unknown])), 4)
    if non_products:
        out["non_product_photos"] = len(non_products)
        out["non_product_unknown_rate"] = round(float(np.mean(rejected)), 4)
    if ocr:
        out["ocr_price_read_accuracy"] = round(float(np.mean([r.ocr.price is not None and abs(r.ocr.price - t.price) < 0.005
                                                              for r, t in zip(res_known, truth)])), 4)
    return out


def run_eval(bundle=None, *, threads: int | None = None, backend: str | None = None, device: str | None = "cpu",
             products: int = 40, views: int = 3, holdout: int = 8, ocr: str = "both", seed: int = 0,
             threshold: float | None = None, scaling: bool = False) -> dict:
    """Render a synthetic catalogue of `products` items (+ `holdout` look-alikes left out of it), query it
    with `views` augmented photos each; one row per bundle (None: the default; a list compares several)
    and OCR setting ("off", "on" or "both"). `scaling` adds `search_scaling()`."""
    import tempfile

    from ..training.data.products import catalog_products, queries, write_catalog

    if ocr not in OCR_SETTINGS:
        raise InputError(f"ocr must be one of {', '.join(OCR_SETTINGS)}, got {ocr!r}")
    bundles = list(bundle) if isinstance(bundle, (list, tuple)) else [bundle]
    items = catalog_products(products + holdout, seed=seed)
    listed, held_out = items[:products], items[products:]
    known = queries(listed, views=views, seed=seed + 1000)
    unknown = queries(held_out, views=1, seed=seed + 2000)
    try:  # real photos of non-products (scikit-image's CC0 samples, in the [dev] extra) should all be `unknown`
        from skimage import data
        others = [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse", "coins")]
    except ImportError:
        others = []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = write_catalog(tmp, listed)
        for model in bundles:
            task = ProductRecognizer.from_pretrained(model, backend=backend, threads=threads, device=device,
                                                     catalog=csv_path, threshold=threshold)
            for with_ocr in OCR_SETTINGS[ocr]:
                rows.append({"model": str(model or "default"), "encoder": task.bundle.get("name"),
                             "precision": task.bundle.precision, "threshold": task.threshold,
                             **evaluate(task, known, unknown, ocr=with_ocr, non_products=others)})
    report = {"catalogue": {"products": len(listed), "views": views, "held_out": len(held_out), "seed": seed},
              "results": rows}
    if scaling:
        report["search_scaling"] = search_scaling()
    return report


def add_eval_arguments(p) -> None:
    p.add_argument("--model", action="append", default=None,
                   help="encoder bundle(s) to compare (repeatable; default: the embedded default)")
    add_runtime_arguments(p)
    p.add_argument("--products", type=int, default=40, help="synthetic catalogue size")
    p.add_argument("--views", type=int, default=3, help="augmented query photos per product")
    p.add_argument("--holdout", type=int, default=8, help="extra products left out of the catalogue (should be 'unknown')")
    p.add_argument("--ocr", choices=list(OCR_SETTINGS), default="both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--scaling", action="store_true", help="also time catalogue search at 1k/10k/100k random items")


def from_args(args) -> dict:
    return run_eval(args.model, threads=args.threads, backend=args.backend, device=args.device, products=args.products,
                    views=args.views, holdout=args.holdout, ocr=args.ocr, seed=args.seed, threshold=args.threshold,
                    scaling=args.scaling)
