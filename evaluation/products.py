"""Product recognition evaluation (`edgesight eval products`), three benchmarks per encoder bundle:

- `finegrained`: a seeded apparel catalogue (edgesight.training.data.products.garment_catalogue: 72 listed
  garments, 12 silhouettes x colourways x patterns) queried with re-shoots (70-95 % crops, +-12 deg, blur,
  brightness 0.7-1.3, JPEG 35-75) and 28 unlisted garments (24 look-alikes); a frozen `test` split (its
  photos' sha256 is pinned below, so it cannot drift) and a `dev` split (other seed, other products) for tuning;
- `packaged`: the rendered grocery catalogue (brands x package shapes), held-out look-alikes and real
  non-product photos, per OCR setting;
- `real`: real photos (scikit-image / scikit-learn / matplotlib samples) as a catalogue, re-shot.
Optionally the catalogue search time and approximate-search recall vs its size (`scaling`).

    run_eval(bundle, threads=2, benchmarks="finegrained,packaged,real", ocr="off", scaling=True)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..catalog import CatalogIndex, Product
from ..cli import add_runtime_arguments
from ..errors import InputError
from ..tasks.products import QUERY_PHOTOS, ProductRecognizer

OCR_SETTINGS = {"off": [False], "on": [True], "both": [False, True]}
BENCH_OPTIONS = {"benchmarks": "finegrained,packaged", "splits": "test", "products": 16, "views": 2, "holdout": 4,
                 "ocr": "off"}  # what the benchmark suite runs


def real_rows(bundle=None, *, threads: int | None = None, queries: int = 300, seed: int = 0):
    """Real catalogue rows for the search benchmark: every garment the fine-grained generator can draw (14
    silhouettes x 12 colours x 6 patterns) indexed as the SDK indexes a CSV (16 views, colour fused), and
    `queries` re-shot photos of random ones, described the same way. -> (rows, row items, queries, their items)."""
    import random

    from ..tasks.products import IndexBuilder, describe
    from ..training.data.products import GARMENT_COLOURS, PATTERNS, SILHOUETTES, Garment, render_garment, reshoot

    task = ProductRecognizer.from_pretrained(bundle, threads=threads)
    garments = [Garment(f"{s[0]} {c} {p}", s[0], c, p, s[1], 1.0, True) for s in SILHOUETTES for c, _ in GARMENT_COLOURS
                for p in PATTERNS]
    builder = IndexBuilder(task.encoder)
    for i in range(0, len(garments), 32):
        builder.add_images([render_garment(g) for g in garments[i:i + 32]])
    rows = np.concatenate(builder.rows)
    rng = random.Random(seed)
    picked = [rng.randrange(len(garments)) for _ in range(queries)]
    photos = [reshoot(render_garment(garments[i]), rng) for i in picked]
    q = np.concatenate([describe(task.encoder, photos[i:i + 32], builder.features) for i in range(0, len(photos), 32)])
    return rows, np.repeat(np.arange(len(garments)), builder.views), q, np.array(picked)


def search_scaling(sizes=(100_000, 1_000_000), *, bundle=None, threads: int | None = None, queries: int = 300,
                   nprobes=(4, 8, 12, 16, 32, 64), reranks=(1, 4), k: int = 5) -> dict:
    """Exact (faiss IndexFlatIP) vs approximate (IVF-SQ8 candidates, re-scored exactly) search at catalogue sizes
    in rows, one thread: median ms per query, product-level recall@1 of the approximate top-1 against the exact
    one, build time and memory. The rows are real (`real_rows`: 16,128 rows of rendered garments); beyond them
    the catalogue is filled with vectors drawn from a Gaussian fitted to the real rows (their mean and top-256
    principal directions + isotropic rest), so the fill is as dense as real rows, without their item clusters.
    The queries are real re-shot photos of real rows."""
    import resource
    import time

    from ..catalog import _faiss

    faiss = _faiss()
    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    real, real_items, qs, _ = real_rows(bundle, threads=threads, queries=queries)
    embed_s = time.perf_counter() - t0
    mean = real.mean(0)
    _, sv, vt = np.linalg.svd(real - mean, full_matrices=False)
    top = min(256, len(sv) - 1)
    comps, scale = vt[:top], sv[:top] / np.sqrt(len(real))
    rest = float(np.sqrt(max(0.0, (sv[top:] ** 2).sum() / len(real) / (real.shape[1] - top))))
    rng = np.random.default_rng(0)
    report = {"real_rows": len(real), "real_products": int(real_items.max() + 1), "dim": int(real.shape[1]), "queries": len(qs),
              "real_embedding_s": round(embed_s, 1), "sizes": []}
    for n in sizes:
        views = 16
        index = CatalogIndex(real, [Product(f"p{i}", None, None) for i in range((n + views - 1) // views + int(real_items.max()) + 1)],
                             {}, items=real_items)
        next_item = int(real_items.max()) + 1
        t_fill = time.perf_counter()
        for start in range(len(real), n, 65_536):
            m = min(65_536, n - start)
            x = mean + (rng.standard_normal((m, top), dtype=np.float32) * scale) @ comps \
                + rng.standard_normal((m, real.shape[1]), dtype=np.float32) * rest
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            index.add_rows(x.astype(np.float32), next_item + np.arange(m) // views)
            next_item += (m + views - 1) // views
        fill_s = time.perf_counter() - t_fill

        def median_ms(fn):
            times = []
            for q in qs[:100]:     # the first 100 queries time it (an exact scan of 1M rows is slow)
                t = time.perf_counter()
                fn(q)
                times.append(time.perf_counter() - t)
            return round(float(np.median(times)) * 1000, 2)

        exact = index.search(qs, 1, exact=True)[0][:, 0]
        row = {"rows": n, "rows_mb": round(n * index.dim * 4 / 1e6), "fill_s": round(fill_s, 1),
               "exact_ms": median_ms(lambda q: index.search(q, k, exact=True))}
        t = time.perf_counter()
        ann = index.ann()
        row.update(ann_lists=int(ann.nlist), ann_build_s=round(time.perf_counter() - t, 1),
                   ann_mb=round(ann.ntotal * (ann.code_size + 8) / 1e6 + ann.nlist * index.dim * 4 / 1e6),
                   peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), approximate=[])
        for rerank in reranks:     # candidates re-scored exactly: rerank x 2 x k x views rows
            index.rerank = rerank
            for nprobe in nprobes:
                index.nprobe = nprobe
                approx = index.search(qs, k)[0][:, 0]   # the top-1 of the top-k search that is timed
                row["approximate"].append({"nprobe": nprobe, "rerank": rerank, "recall_at_1": round(float((approx == exact).mean()), 4),
                                           "ms": median_ms(lambda q: index.search(q, k))})
        report["sizes"].append(row)
        del index
    return report


def evaluate(task: ProductRecognizer, known: list, unknown: list = (), ocr: bool = False, non_products: list = (),
             family=None) -> dict:
    """Metrics on (photo, truth) pairs whose truth has .title .category .price; `unknown` pairs are
    products absent from the catalogue, `non_products` photos of anything else (the right answer is `unknown`).
    `family(truth) -> str` adds the same scores per family of input ("families")."""
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
    if family is not None:
        groups = {}
        for r, t in zip(res_known, truth):
            groups.setdefault(("listed", family(t)), []).append((r.matches[0].title == t.title, r.unknown))
        for r, (_, t) in zip(res_unknown, unknown):
            groups.setdefault(("unlisted", family(t)), []).append((None, r.unknown))
        out["families"] = {f"{kind}: {name}": {"queries": len(v), **({"top1": round(float(np.mean([h for h, _ in v])), 4)}
                                                                      if kind == "listed" else {}),
                                              "flagged_unknown": round(float(np.mean([u for _, u in v])), 4)}
                           for (kind, name), v in sorted(groups.items())}
    if ocr:
        out["ocr_price_read_accuracy"] = round(float(np.mean([r.ocr.price is not None and abs(r.ocr.price - t.price) < 0.005
                                                              for r, t in zip(res_known, truth)])), 4)
    return out


# The fine-grained splits: catalogue seed, query seed, photos per listed / unlisted garment. `test` was frozen
# before the matching was changed for it; FROZEN pins the sha256 of its photos and titles.
FINEGRAINED = {"test": {"seed": 0, "query_seed": 100, "views": 3, "unlisted_views": 2},
               "dev": {"seed": 1, "query_seed": 101, "views": 3, "unlisted_views": 2}}
FROZEN = {"test": "8742ce7126e1122cc299fa9b504978bbfc781e187305325c76c31fbf79f1e060",
          "dev": "5bd3c2dd313c8aeae667eca3adc76c074869ea3f3cb0956a85dc3505b78ada90"}
REAL_PHOTOS = [("skimage", n) for n in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "immunohistochemistry",
                                          "hubble_deep_field", "retina", "cat", "colorwheel", "logo", "camera", "coins")] + \
              [("sklearn", "china.jpg"), ("sklearn", "flower.jpg"), ("matplotlib", "grace_hopper.jpg")]
REAL_UNLISTED = 4        # the last photos of REAL_PHOTOS are left out of the catalogue (should be `unknown`)


def finegrained_split(split: str = "test"):
    """(listed garments, known (photo, garment) pairs, unknown pairs, sha256 of the photos and titles)."""
    import hashlib

    from ..training.data.products import garment_catalogue, garment_queries

    if split not in FINEGRAINED:
        raise InputError(f"fine-grained split must be one of {', '.join(FINEGRAINED)}, got {split!r}")
    cfg = FINEGRAINED[split]
    garments = garment_catalogue(cfg["seed"])
    listed = [g for g in garments if g.listed]
    known = garment_queries(listed, cfg["views"], cfg["query_seed"])
    unknown = garment_queries([g for g in garments if not g.listed], cfg["unlisted_views"], cfg["query_seed"] + 1000)
    h = hashlib.sha256()
    for img, g in known + unknown:
        h.update(g.title.encode() + np.asarray(img).tobytes())
    return listed, known, unknown, h.hexdigest()


def _garment_family(g) -> str:
    return g.look_alike or ("solid colourway" if g.pattern == "Solid" else "patterned")


def real_photos():
    """[(name, RGB array)] of the real photos available offline, or [] without the [dev] extra's packages."""
    out = []
    for source, name in REAL_PHOTOS:
        try:
            if source == "skimage":
                from skimage import data
                arr = getattr(data, name)()
            elif source == "sklearn":
                from sklearn.datasets import load_sample_image
                arr = load_sample_image(name)
            else:
                from matplotlib import cbook
                with cbook.get_sample_data(name) as f:
                    from PIL import Image
                    arr = np.asarray(Image.open(f).convert("RGB"))
        except (ImportError, OSError, AttributeError, ValueError):
            continue
        out.append((name, arr))
    return out


def _tasks(bundles, csv_path, photos=(), **kw):
    """(model, recognizer on the catalogue CSV) per bundle; `photos` [(image, title)]: the shop's own photos of listed
    products, drawn like the benchmark's queries with another seed, set the "unknown" rule (ProductRecognizer.calibrate)."""
    for model in bundles:
        task = ProductRecognizer.from_pretrained(model, catalog=csv_path, **kw)
        if photos:
            task.calibrate(photos)
        yield model, task


def run_eval(bundle=None, *, threads: int | None = None, backend: str | None = None, device: str | None = "cpu",
             benchmarks: str = "finegrained,packaged,real", splits: str = "test,dev",
             products: int = 40, views: int = 3, holdout: int = 8, ocr: str = "both", seed: int = 0,
             threshold: float | None = None, scaling: bool = False, adapt: int | None = None,
             index_views: int | None = None, colour_weight: float | None = None, texture: bool | None = None,
             query_photos: str | None = None, calibration_photos: int = 0) -> dict:
    """One report per benchmark ("finegrained", "packaged", "real"; comma-separated), one row per bundle (None:
    the default; a list compares several). `packaged`: a rendered catalogue of `products` items (+ `holdout`
    look-alikes left out of it) queried with `views` augmented photos each, per OCR setting ("off", "on", "both").
    `scaling` adds `search_scaling()`. `adapt` STEPS also LoRA-adapts the first bundle's encoder to each fine-grained
    catalogue's photos (never its queries) and scores the tuned encoder on the same queries. `query_photos` ("shelf",
    "reshoot") says how the calibration probes are drawn; `calibration_photos` N instead calibrates each catalogue on N
    photos per listed product drawn by the benchmark's own query generator with another seed (the shop's own photos)."""
    import tempfile

    from ..training.data.products import (catalog_products, garment_queries, queries, reshoot, write_catalog,
                                          write_garment_catalog)

    chosen = [b.strip() for b in benchmarks.split(",") if b.strip()]
    unknown_names = sorted(set(chosen) - {"finegrained", "packaged", "real"})
    if unknown_names or not chosen:
        raise InputError(f"benchmarks must be a comma-separated subset of finegrained, packaged, real; got {benchmarks!r}")
    if ocr not in OCR_SETTINGS:
        raise InputError(f"ocr must be one of {', '.join(OCR_SETTINGS)}, got {ocr!r}")
    bundles = list(bundle) if isinstance(bundle, (list, tuple)) else [bundle]
    kw = dict(backend=backend, threads=threads, device=device, threshold=threshold, views=index_views,
              colour_weight=colour_weight, texture=texture, query_photos=query_photos)
    n_photos = int(calibration_photos or 0)

    def row(model, task):
        return {"model": str(model or "default"), "encoder": task.bundle.get("name"), "precision": task.bundle.precision,
                "threshold": round(task.threshold, 4), "threshold_source": task.threshold_source,
                "calibration": task.catalog.calibration, "views": task.catalog.views,
                "colour_weight": task.catalog.features.get("colour_weight", 0.0),
                "calibrated_on": task.catalog.calibration.get("probes_from"),
                "texture_weight": task.catalog.features.get("texture_weight", 0.0)}

    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "finegrained" in chosen:
            fine = {}
            for split in [s.strip() for s in splits.split(",") if s.strip()]:
                listed, known, unknown, digest = finegrained_split(split)
                csv_path = write_garment_catalog(f"{tmp}/fine-{split}", listed)
                seed_photos = FINEGRAINED[split]["query_seed"] + 7000     # the shop's own photos: another seed
                photos = [(im, g.title) for im, g in garment_queries(listed, n_photos, seed_photos)] if n_photos else ()
                rows = [{**row(m, t), **evaluate(t, known, unknown, family=_garment_family)}
                        for m, t in _tasks(bundles, csv_path, photos, **kw)]
                if adapt:
                    import time

                    from ..training.products import adapt as lora_adapt
                    t0 = time.perf_counter()
                    tuned = lora_adapt(csv_path, f"{tmp}/adapt-{split}", adapt, threads=threads, progress=False)
                    took = round(time.perf_counter() - t0, 1)
                    rows += [{**row(f"adapted ({adapt} steps)", t), "adapt_s": took, **evaluate(t, known, unknown, family=_garment_family)}
                             for _, t in _tasks([tuned], csv_path, photos, **kw)]
                fine[split] = {"listed": len(listed), "unlisted": len({g.title for _, g in unknown}), "sha256": digest,
                               "frozen": digest == FROZEN.get(split), "results": rows}
            report["finegrained"] = fine
        if "real" in chosen:
            photos = real_photos()
            if len(photos) > REAL_UNLISTED + 1:
                import csv as _csv
                import random
                from PIL import Image

                from ..training.data.products import SIZE
                listed, unlisted = photos[:-REAL_UNLISTED], photos[-REAL_UNLISTED:]
                folder = Path(tmp) / "real"
                (folder / "images").mkdir(parents=True)
                truth = {}
                with open(folder / "catalog.csv", "w", newline="", encoding="utf-8") as f:
                    w = _csv.writer(f)
                    w.writerow(["title", "category", "full_price", "local_image_path"])
                    for i, (name, arr) in enumerate(listed):
                        Image.fromarray(arr).convert("RGB").save(folder / "images" / f"{i:02d}.png")
                        w.writerow([name, "photo", f"{i + 1}.00", f"images/{i:02d}.png"])
                        truth[name] = Product(name, "photo", float(i + 1))
                rng = random.Random(7)

                def shots(items, n):
                    return [(reshoot(Image.fromarray(arr).convert("RGB").resize((SIZE, SIZE)), rng),
                             truth.get(name, Product(name, "photo", 0.0))) for name, arr in items for _ in range(n)]
                known_r, unknown_r = shots(listed, 3), shots(unlisted, 2)
                rng = random.Random(8)    # the shop's own photos: other re-shoots
                photos = [(im, t.title) for im, t in shots(listed, n_photos)] if n_photos else ()
                report["real"] = {"listed": len(listed), "unlisted": len(unlisted),
                                  "results": [{**row(m, t), **evaluate(t, known_r, unknown_r)}
                                              for m, t in _tasks(bundles, folder / "catalog.csv", photos, **kw)]}
            else:
                report["real"] = {"skipped": "scikit-image / scikit-learn sample photos not installed (pip install 'edgesight[dev]')"}
        if "packaged" in chosen:
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
            csv_path = write_catalog(f"{tmp}/packaged", listed)
            photos = [(im, p.title) for im, p in queries(listed, views=n_photos, seed=seed + 3000)] if n_photos else ()
            for model, task in _tasks(bundles, csv_path, photos, **kw):
                for with_ocr in OCR_SETTINGS[ocr]:
                    rows.append({**row(model, task), **evaluate(task, known, unknown, ocr=with_ocr, non_products=others)})
            report["catalogue"] = {"products": len(listed), "views": views, "held_out": len(held_out), "seed": seed}
            report["results"] = rows
    if scaling:
        report["search_scaling"] = search_scaling(bundle=bundles[0], threads=threads)
    return report


def add_eval_arguments(p) -> None:
    p.add_argument("--model", action="append", default=None,
                   help="encoder bundle(s) to compare (repeatable; default: the embedded default)")
    add_runtime_arguments(p)
    p.add_argument("--benchmarks", default="finegrained,packaged,real",
                   help="comma-separated: finegrained (apparel colourways/patterns), packaged (grocery + OCR), real (real photos)")
    p.add_argument("--splits", default="test,dev", help="fine-grained splits: test (frozen) and/or dev")
    p.add_argument("--products", type=int, default=40, help="packaged: synthetic catalogue size")
    p.add_argument("--views", type=int, default=3, help="packaged: augmented query photos per product")
    p.add_argument("--holdout", type=int, default=8, help="packaged: extra products left out of the catalogue (should be 'unknown')")
    p.add_argument("--ocr", choices=list(OCR_SETTINGS), default="both", help="packaged: OCR off, on or both")
    p.add_argument("--seed", type=int, default=0, help="packaged: catalogue seed")
    p.add_argument("--threshold", type=float, default=None, help="override the catalogue's calibrated 'unknown' threshold")
    p.add_argument("--index-views", type=int, default=None, help="indexed views per catalogue photo (ablation; default: the SDK's)")
    p.add_argument("--colour-weight", type=float, default=None, help="colour weight in the score (ablation; 0 = embedding only)")
    p.add_argument("--texture", choices=["on", "off"], default=None,
                   help="texture (pattern) descriptor for the 'unknown' check (ablation; default: the SDK's, off)")
    p.add_argument("--query-photos", choices=list(QUERY_PHOTOS), default=None,
                   help="how the 'unknown' calibration probes are drawn (default: the SDK's, shelf); see docs/products.md")
    p.add_argument("--calibration-photos", type=int, default=0, metavar="N",
                   help="calibrate each catalogue on N photos per listed product drawn like its queries with another seed "
                        "(the shop's own photos) instead of synthetic probes")
    p.add_argument("--adapt", type=int, default=None, metavar="STEPS",
                   help="fine-grained: also LoRA-adapt the encoder to each catalogue's photos for STEPS steps and score it")
    p.add_argument("--scaling", action="store_true",
                   help="also measure catalogue search at 100k and 1M rows: exact vs approximate latency, recall@1, build, memory")


def from_args(args) -> dict:
    return run_eval(args.model, threads=args.threads, backend=args.backend, device=args.device, benchmarks=args.benchmarks,
                    splits=args.splits, products=args.products, views=args.views, holdout=args.holdout, ocr=args.ocr,
                    seed=args.seed, threshold=args.threshold, scaling=args.scaling, adapt=args.adapt,
                    index_views=args.index_views, colour_weight=args.colour_weight,
                    texture=None if args.texture is None else args.texture == "on", query_photos=args.query_photos,
                    calibration_photos=args.calibration_photos)
