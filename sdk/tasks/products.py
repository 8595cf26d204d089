"""Product recognition: photo -> title, category, price, by image-embedding search in a catalogue.

Instead of a 4B-parameter VLM fine-tuned to memorise a catalogue (seeds 002/004), an image encoder
(EfficientNet-Lite0 ONNX, int8) embeds the photo and the nearest catalogue items answer. A new product
or a price change is an index update, not a retraining; a photo that matches nothing well enough is
reported `unknown` rather than as a confident wrong answer. Optional OCR (RapidOCR: PP-OCR ONNX
models) reads the label: matches whose title shares the printed brand/name move up, and a price
printed in the photo is reported next to (never instead of) the catalogue price.

    pr = ProductRecognizer.from_pretrained(None, catalog="catalog.csv")   # None = default encoder
    r = pr("photo.jpg")        # ProductResult(title=..., category=..., price=..., score=..., matches=[...])
    pr.add_product("NORDA Red Cola", "beverages/soft-drinks", 1.49, "cola.png")
    pr.set_price("NORDA Red Cola", 1.29)
"""
from __future__ import annotations

import difflib
import io
import os
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import defaults
from ..catalog import CatalogIndex, IngestReport, Product, parse_price, read_catalog_csv
from ..encoder import ImageEncoder
from ..errors import CatalogError, ImageError, InputError
from ..images import decode_base64, load_image
from ..limits import check_number
from ..progress import bar
from ..record import Record
from .base import Task, adapter_json

DEFAULT_THRESHOLD = 0.55   # similarity below which a photo is `unknown` when the catalogue has no calibrated threshold
                           # (too few items) and the manifest sets no `unknown_threshold`
OCR_WEIGHT = 0.15          # how much a label-text match adds to the visual similarity when re-ranking
RERANK_POOL = 20           # OCR re-ranks only the visual top-20: search stays one matrix product


@dataclass
class Match(Record):
    title: str
    category: str | None
    price: float | None
    similarity: float              # the item's best view: cosine, fused with colour similarity (index `features`)
    score: float                   # similarity (+ OCR text bonus when OCR ran): the ranking key
    text_score: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class PriceEstimate(Record):
    """Similarity-weighted price over the nearest catalogue items, with the range they span."""
    value: float
    low: float
    high: float
    neighbours: int


@dataclass
class OcrReading(Record):
    text: list[str]                # lines read from the photo
    price: float | None            # a price printed in the photo (shelf tag / label), not the catalogue's


@dataclass
class ProductResult:
    title: str | None              # None when unknown
    category: str | None
    price: float | None            # catalogue price of the recognised product
    score: float                   # ranking score of the best match
    unknown: bool
    matches: list[Match]
    price_estimate: PriceEstimate | None = None
    ocr: OcrReading | None = None
    unknown_reason: str | None = None

    def to_dict(self) -> dict:
        return {"title": self.title, "category": self.category, "price": self.price, "score": self.score,
                "unknown": self.unknown, "unknown_reason": self.unknown_reason, "matches": [m.to_dict() for m in self.matches],
                "price_estimate": self.price_estimate.to_dict() if self.price_estimate else None,
                "ocr": self.ocr.to_dict() if self.ocr else None}


class ProductRecognizer(Task):
    name = "products"

    @classmethod
    def from_pretrained(cls, path=None, *args, **kwargs):
        """A bundle of kind "vlm" (issue 15) answers generatively: edgesight.tasks.vlm.VLMProductRecognizer."""
        from .vlm import VLMProductRecognizer, is_vlm_bundle   # here: tasks.vlm imports ProductResult from this module

        if is_vlm_bundle(path):   # the runtime comes from the bundle's format (GGUF: llama.cpp, ONNX: onnxruntime)
            return VLMProductRecognizer.from_pretrained(path, **{k: kwargs[k] for k in ("threads", "backend", "device")
                                                                 if kwargs.get(k) is not None})
        return super().from_pretrained(path, *args, **kwargs)

    def __init__(self, bundle, backend=None, threads=None, device: str | None = "cpu", catalog=None, ocr: bool = False,
                 threshold: float | None = None, top_k: int = 5, progress: bool | None = None,
                 views: int | None = None, colour_weight: float | None = None, texture: bool | None = None,
                 query_photos: str | None = None, vlm=None):
        super().__init__(bundle, backend, threads, device)
        self.encoder = ImageEncoder.from_task(self)
        self._threshold = None if threshold is None else check_number(threshold, "threshold", -1.0, 1.0)
        self.matching = {"views": int(check_number(MATCHING["views"] if views is None else views, "views", 1, 256)),
                         "colour_weight": check_number(MATCHING["colour_weight"] if colour_weight is None else colour_weight,
                                                       "colour_weight", 0.0, 0.95),
                         "texture": MATCHING["texture"] if texture is None else bool(texture),
                         "query_photos": _query_photos(MATCHING["query_photos"] if query_photos is None else query_photos)}
        self.top_k, self.use_ocr, self.progress = int(top_k), bool(ocr), progress
        self._ocr_engine, self._ocr_lock = None, threading.Lock()
        self.report: IngestReport | None = None
        self.catalog: CatalogIndex | None = None
        catalog = catalog if catalog is not None else os.environ.get("EDGESIGHT_PRODUCTS_CATALOG") or None  # for `serve`
        if catalog is not None:
            self.set_catalog(catalog)
        elif bundle.has("catalog_items"):
            self.catalog = CatalogIndex.from_bundle(bundle)   # the bundle's sample catalogue
            self.catalog.threads = self.threads
            for p in self.catalog.products:
                if p.image and not Path(p.image).is_absolute():
                    p.image = str(bundle.path / p.image)
        self._use_catalog_threshold()
        self.vlm = None   # the cascade (docs/vlm.md): a vlm bundle answers the photos the catalogue calls unknown
        vlm = vlm if vlm is not None else os.environ.get("EDGESIGHT_PRODUCTS_VLM") or None   # for `serve` / `batch`
        if vlm is not None:
            self.use_vlm(vlm)

    def use_vlm(self, path) -> None:
        """Answer the photos the catalogue calls `unknown` with the vlm bundle at `path` (results then say which
        path answered: "retrieval" | "vlm")."""
        from .vlm import VLMProductRecognizer, is_vlm_bundle

        if not is_vlm_bundle(path):
            raise InputError(f"vlm {path}: not a bundle of kind vlm (edgesight export --task products on a "
                             "`train products --family vlm` adapter writes them)")
        self.vlm = VLMProductRecognizer.from_pretrained(path, threads=self.threads, device=self.device)

    @property
    def threshold(self) -> float:
        return self._threshold_value

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = check_number(value, "threshold", -1.0, 1.0)
        self._use_catalog_threshold()

    @property
    def catalog_margin(self) -> float:
        """The calibrated lead over the runner-up below which a photo is `unknown` (0 with an explicit threshold)."""
        if self.threshold_source != "catalogue" or self.catalog is None:
            return 0.0
        return float(self.catalog.calibration.get("margin") or 0.0)

    def _use_catalog_threshold(self) -> None:
        """The "unknown" threshold: the caller's, else the catalogue's own (calibrated when it was indexed),
        else the bundle's, else DEFAULT_THRESHOLD; `threshold_source` says which."""
        calibrated = (self.catalog.calibration.get("threshold") if self.catalog is not None else None)
        for source, value in (("argument", self._threshold), ("catalogue", calibrated),
                              ("bundle", self.bundle.get("unknown_threshold")), ("default", DEFAULT_THRESHOLD)):
            if value is not None:
                self._threshold_value, self.threshold_source = float(value), source
                return

    # -- catalogue ----------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict:
        m = self.bundle.manifest
        return {"name": m.get("name"), "precision": self.bundle.precision, "dim": self.encoder.dim,
                "sha256": m["files"][m["components"]["model"]]["sha256"]}

    def set_catalog(self, catalog) -> IngestReport | None:
        """Use a CatalogIndex, a saved index directory, or a catalogue CSV (embedded now, bad rows reported)."""
        self.report = None
        if isinstance(catalog, CatalogIndex):
            index = catalog
        elif not isinstance(catalog, (str, os.PathLike)):
            raise CatalogError(f"catalog must be a CSV path, an index directory or a CatalogIndex, not {type(catalog).__name__}")
        elif Path(catalog).is_dir():
            index = CatalogIndex.load(catalog)
        elif Path(catalog).suffix.lower() == ".csv":
            products, self.report = read_catalog_csv(catalog)
            builder = IndexBuilder(self.encoder, **self.matching)
            _, failed = self.embed_files([p.image for p in products], skip_bad=True, embed=builder.add_images)
            for i, problem in failed.items():   # the header passed, the full decode did not: a skipped row
                self.report.skip(products[i].title, problem)
            products = [p for i, p in enumerate(products) if i not in failed]
            if not products:
                raise CatalogError(f"{catalog}: no catalogue image could be decoded; see the report's issues")
            index = builder.finish(products, self.fingerprint)
        else:
            raise CatalogError(f"{catalog}: not a catalogue CSV or index directory; pass a .csv "
                               "(title, category, full_price, local_image_path) or a directory saved by index.save()")
        if index.encoder.get("sha256") != self.fingerprint["sha256"]:
            raise CatalogError(f"the catalogue index was embedded with encoder {index.encoder.get('name')} "
                               f"({str(index.encoder.get('sha256'))[:12]}…), not this bundle's "
                               f"({self.fingerprint['sha256'][:12]}…); rebuild it from the CSV with this encoder")
        index.threads = self.threads
        self.catalog = index
        self._use_catalog_threshold()
        return self.report

    def embed_files(self, paths: list, batch: int = 16, skip_bad: bool = False, embed=None):
        """Embeddings of image files (or what `embed(images)` makes of them, e.g. IndexBuilder.add_images);
        with skip_bad, (embeddings of the readable ones, {index: why not})."""
        out, failed = [], {}
        for i in bar(range(0, len(paths), batch), desc="embedding catalogue", progress=self.progress):
            images = []
            for j, p in enumerate(paths[i:i + batch], start=i):
                try:
                    images.append(_open_photo(p, self.encoder.preprocessing.size))
                except ImageError as exc:
                    if not skip_bad:
                        raise
                    failed[j] = f"image cannot be decoded ({exc}); re-save it as JPEG or PNG"
            if images:
                out.append((embed or self.encoder.embed)(images))
        emb = np.concatenate(out) if out else np.zeros((0, self.encoder.dim), np.float32)
        return (emb, failed) if skip_bad else emb

    def add_product(self, title: str, category: str | None, price, image, *, replace: bool = False, **extra) -> None:
        """Add (or with replace=True update) one product: one embedding, no retraining."""
        try:
            price = parse_price(price)
        except ValueError as exc:
            raise CatalogError(f"bad price for {title!r}: {exc}") from None
        path = str(image) if isinstance(image, (str, Path)) else None
        catalog = self._require_catalog(allow_empty=True)
        rows = IndexBuilder.like(self.encoder, catalog.features).rows_of([load_image(image)])
        catalog.add(Product(title, category, price, path, extra), rows, replace=replace)

    def set_price(self, title: str, price) -> None:
        self._require_catalog().set_price(title, price)

    def calibrate(self, photos) -> dict:
        """Re-derive the catalogue's "unknown" rule from the shop's own photos of listed products: a CSV (title +
        image path columns, several rows per title allowed, paths relative to the CSV) or [(image, title)]. Each photo
        is scored as a listed case (its own item) and, with its item left out, as a look-alike case (calibrate());
        the rule replaces the one from synthetic probes, is saved with the index, and the recogniser uses it. Rows
        whose title is not listed or whose image does not open are reported in the result's `issues`."""
        catalog = self._require_catalog()
        if isinstance(photos, (str, os.PathLike)):
            rows, issues = read_photo_rows(photos)
        else:
            rows, issues = [(image, title, i) for i, (image, title) in enumerate(photos)], []
        images, items = [], []
        for image, title, where in rows:
            if title not in catalog:
                issues.append({"row": where, "title": title, "problem": "not a listed title; photos calibrate listed products only"})
                continue
            try:
                images.append(_open_photo(image, self.encoder.preprocessing.size))
            except ImageError as exc:
                issues.append({"row": where, "title": title, "problem": f"image cannot be used ({exc})"})
                continue
            items.append(catalog._row(title))
        if len(set(items)) < 3:
            raise CatalogError(f"calibration needs photos of at least 3 listed products, got {len(set(items))} "
                               f"({len(issues)} rows skipped{': ' + issues[0]['problem'] if issues else ''})")
        probes = np.concatenate([describe(self.encoder, images[i:i + 32], catalog.features) for i in range(0, len(images), 32)])
        catalog.calibration = calibrate(catalog, probes, np.array(items), listed_cost=PHOTOS_LISTED_COST, source="photos")
        self._use_catalog_threshold()
        return {**catalog.calibration, "photos": len(items), "issues": sorted(issues, key=lambda i: i["row"])}

    def _require_catalog(self, allow_empty: bool = False) -> CatalogIndex:
        if self.catalog is None:
            if not allow_empty:
                raise CatalogError("no catalogue loaded; pass catalog=CSV or index directory to from_pretrained()")
            builder = IndexBuilder(self.encoder, **self.matching)
            self.catalog = CatalogIndex(np.zeros((0, builder.dim), np.float32), [], self.fingerprint, features=builder.features)
        if not allow_empty and not len(self.catalog):
            raise CatalogError("the catalogue is empty; add products (add_product or a CSV) before recognising photos")
        return self.catalog

    # -- recognition --------------------------------------------------------------------------------
    def _run_batch(self, inputs: list, top_k: int | None = None, ocr: bool | None = None) -> list[ProductResult]:
        catalog = self._require_catalog()
        k = max(1, int(top_k or self.top_k))
        use_ocr = self.use_ocr if ocr is None else ocr
        images = [_open_photo(x, 1024 if use_ocr else self.encoder.preprocessing.size) for x in inputs]
        queries = describe(self.encoder, images, catalog.features)
        idx, sims = catalog.search(queries, RERANK_POOL if use_ocr else max(k, 2))
        results = [self._result(catalog, row_idx, row_sims, self._read(img) if use_ocr else None, k, query)
                   for img, row_idx, row_sims, query in zip(images, idx, sims, queries)]
        if self.vlm is not None:   # the VLM sees the photo as given, not the encoder's thumbnail
            from .vlm import ProductCascade
            cascade = ProductCascade(self, self.vlm)
            results = [cascade.after(x, r) for x, r in zip(inputs, results)]
        return results

    def _result(self, catalog, idx, sims, reading: OcrReading | None, k: int, query=None) -> ProductResult:
        matches = []
        for i, s in zip(idx, sims):
            p = catalog.products[i]
            text = text_match(reading.text, p) if reading else None
            matches.append(Match(p.title, p.category, p.price, round(float(s), 4),
                                 round(float(s) + OCR_WEIGHT * (text or 0.0), 4), None if text is None else round(text, 3),
                                 p.extra))
        matches.sort(key=lambda m: -m.score)
        best = matches[0]
        reason = f"best similarity {best.similarity:.2f} < threshold {self.threshold:.2f}" if best.similarity < self.threshold else None
        visual = sorted((m.similarity for m in matches), reverse=True)
        margin = self.catalog_margin
        if reason is None and margin and len(visual) > 1 and visual[0] - visual[1] < margin:
            reason = (f"the two best products are {visual[0] - visual[1]:.3f} apart, less than the catalogue's margin "
                      f"{margin:.3f}: a new product between listed ones")
        cuts = catalog.calibration if self.threshold_source == "catalogue" else {}
        if reason is None and query is not None and any(cuts.get(f"{n}_min") for n in AGREEMENT):
            agree = agreement(catalog, query[None], [catalog._row(best.title)])[0]
            low = [(n, a, cuts[f"{n}_min"]) for n, a in zip(AGREEMENT, agree) if cuts.get(f"{n}_min") and a < cuts[f"{n}_min"]]
            if low:
                reason = ("the best product agrees too little in " + ", ".join(f"{WHAT[n]} {a:.2f} (needs {c:.2f})" for n, a, c in low)
                          + ": a new colourway or pattern of a listed item, or a new item")
        # A look-alike of a listed product scores like one; a readable name that no candidate carries gives it away.
        if reason is None and reading and any(w.isalpha() and len(w) >= 4 for w in _words(" ".join(reading.text))) \
                and not any(m.text_score for m in matches):
            reason = "the label text read names none of the nearest catalogue products"
        unknown = reason is not None
        matches = matches[:k]
        return ProductResult(None if unknown else best.title, None if unknown else best.category,
                             None if unknown else best.price, best.score, unknown, matches,
                             estimate_price(matches), reading, reason)

    # -- OCR ----------------------------------------------------------------------------------------
    def _read(self, image) -> OcrReading:
        with self._ocr_lock:  # the server calls one recognizer from several worker threads
            if self._ocr_engine is None:
                self._ocr_engine = self._make_ocr()
        result, _ = self._ocr_engine(np.asarray(image))
        lines = [text for _, text, conf in (result or []) if float(conf) >= 0.5]
        return OcrReading(lines, read_price(lines))

    def _make_ocr(self):
        from .._optional import require

        engine = require("rapidocr_onnxruntime", "ocr").RapidOCR
        # No angle classifier: it "corrects" upright labels (MOXI read as IXOW); shop photos are roughly upright.
        return engine(use_cls=False, intra_op_num_threads=self.threads, inter_op_num_threads=1, print_verbose=False)


# -- appearance: multi-view rows, colour, the catalogue's own "unknown" threshold -----------------------
# The ImageNet embedding is nearly colour-blind and sees a crop of a pattern as another object. So every
# catalogue photo is indexed as several views (flips, tilts, crops of the item, light, blur) and every row
# and query is the embedding fused with a colour histogram in CIELAB: concatenating sqrt(1-w)*embedding and
# sqrt(w)*colour makes one inner product score (1-w)*cosine + w*colour similarity, so faiss searches it as is.
MATCHING = {"views": 16, "colour_weight": 0.3, "texture": False, "query_photos": "shelf"}   # tuned on the fine-grained dev split (docs/products.md);
                                                                   # texture: opt-in, it did not earn its cost (same page);
                                                                   # query_photos: a key of QUERY_PHOTOS
COLOUR_BINS = (4, 8, 8)        # L x a* x b* bins; a*, b* over -64..64
TEXTURE = {"side": 128, "scales": 3, "orientations": 6, "floor": 2.0}   # texture_descriptor's settings
TEXTURE_WEIGHT = 0.02          # the texture part rides in each row (stored, saved and searched with it) at a weight too
                               # small to move the ranking; it is read back for the "unknown" check (agreement())
QUERY_CONDITIONS = {"tilt": 12, "crop": (0.7, 0.95), "light": (0.7, 1.3), "blur": 1.5, "jpeg": (35, 75)}  # re-shoots as
                               # docs/products.md documents them (tilt deg, item crop, brightness, blur radius, JPEG quality)
QUERY_PHOTOS = {               # what the shop's query photos look like -> the calibration probes drawn per catalogue item
    "shelf": {"view": "probe_view", "probes": 2, "listed_cost": 2.0},     # other backgrounds, hands / shelf edges (default)
    "reshoot": {"view": "query_view", "probes": 4, "listed_cost": 3.0}}   # the item on its own background (QUERY_CONDITIONS)
PHOTOS_LISTED_COST = 3.0       # ProductRecognizer.calibrate: the shop's own photos, like re-shoot probes, are not pessimistic
CALIBRATION_ITEMS = 512        # items whose probes set the threshold (a sample of a big catalogue)
LISTED_COST = QUERY_PHOTOS["shelf"]["listed_cost"]   # calibration: a listed item flagged costs two new products missed
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06)   # leads over the runner-up product the calibration considers


_LINEAR = np.array([(v / 255 / 12.92) if v / 255 <= 0.04045 else ((v / 255 + 0.055) / 1.055) ** 2.4 for v in range(256)],
                   np.float32)   # sRGB byte -> linear light


def _lab(rgb: np.ndarray):
    """sRGB uint8-range (..., 3) -> CIELAB L, a*, b* (D65); a uint8 array goes through a lookup table."""
    if rgb.dtype == np.uint8:
        c = _LINEAR[rgb]
    else:
        c = rgb / 255.0
        c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    f = xyz / np.array([0.9505, 1.0, 1.089])
    f = np.where(f > 0.008856, np.cbrt(f), 7.787 * f + 16 / 116)
    return 116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])


def _item_weight(arr: np.ndarray):
    """L*, a*, b* of an RGB array and a per-pixel weight: a light, grey photo border (a studio background) and
    what looks like it count less."""
    L, a, b = _lab(arr)
    weight = np.ones_like(L)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).astype(np.float32)
    bl, ba, bb = (float(v[0]) for v in _lab(np.median(border, 0)[None]))
    if bl > 80 and abs(ba) < 6 and abs(bb) < 8:
        weight = np.clip((np.sqrt((L - bl) ** 2 * 0.25 + (a - ba) ** 2 + (b - bb) ** 2) - 4) / 8, 0, 1)
    return L, a, b, weight


def colour_descriptor(image, bins=COLOUR_BINS, side: int = 48) -> np.ndarray:
    """A unit vector: the square root of the L*a*b* histogram of a 48 px thumbnail, so the inner product of
    two is their Bhattacharyya coefficient. A light, grey photo border (a studio background) counts less."""
    from PIL import Image

    L, a, b, weight = _item_weight(np.asarray(image.convert("RGB").resize((side, side), Image.BILINEAR)))
    nl, na, nb = bins
    li = np.clip((L / 100 * nl).astype(int), 0, nl - 1)
    ai = np.clip(((a + 64) / 128 * na).astype(int), 0, na - 1)
    bi = np.clip(((b + 64) / 128 * nb).astype(int), 0, nb - 1)
    h = np.sqrt(np.bincount(((li * na + ai) * nb + bi).ravel(), weights=weight.ravel(), minlength=nl * na * nb) / max(weight.sum(), 1e-6))
    return (h / max(np.linalg.norm(h), 1e-6)).astype(np.float32)


def texture_descriptor(image, side: int = TEXTURE["side"], scales: int = TEXTURE["scales"],
                       orientations: int = TEXTURE["orientations"], floor: float = TEXTURE["floor"]) -> np.ndarray:
    """What pattern the item wears, blind to its colour: a unit vector of the mean L* gradient energy per orientation (0-180 deg, `orientations` bins, linearly shared between neighbours) at `scales` octaves
    of a `side` px thumbnail (128, 64, 32 px), plus a constant `floor` bin. Only item pixels count (the photo's light
    studio background and the item's outline are left out: the weight of colour_descriptor, eroded by a pixel), so a
    solid colour is ~all floor, a stripe puts its energy in one orientation, a check in two, dots in all, and the
    scale bins tell a fine pinstripe or gingham from a wide stripe or check. A HOG-style statistic in numpy (a few ms)."""
    from PIL import Image

    x, _, _, w = _item_weight(np.asarray(image.convert("RGB").resize((side, side), Image.BILINEAR)))
    out = []
    for _ in range(scales):
        gx, gy = np.zeros_like(x), np.zeros_like(x)
        gx[:, 1:-1], gy[1:-1] = (x[:, 2:] - x[:, :-2]) / 2, (x[2:] - x[:-2]) / 2
        inner = np.zeros_like(w)                      # the weight eroded by one pixel (no outline, no image edge)
        inner[1:-1, 1:-1] = np.minimum.reduce([w[1 + dy:w.shape[0] - 1 + dy, 1 + dx:w.shape[1] - 1 + dx]
                                               for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        energy = np.hypot(gx, gy) * inner
        pos = np.mod(np.arctan2(gy, gx), np.pi) / np.pi * orientations
        lo = np.floor(pos).astype(int) % orientations
        frac = pos - np.floor(pos)
        h = np.bincount(lo.ravel(), (energy * (1 - frac)).ravel(), orientations) + \
            np.bincount(((lo + 1) % orientations).ravel(), (energy * frac).ravel(), orientations)
        out.append(h / max(float(inner.sum()), 1e-6))
        x, w = _half(x), _half(w)
    v = np.concatenate(out + [[floor]])
    return (v / np.linalg.norm(v)).astype(np.float32)


def _half(x: np.ndarray) -> np.ndarray:
    """2 x 2 mean pooling (an octave down)."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def texture_dims(settings: dict) -> int:
    return int(settings["scales"]) * int(settings["orientations"]) + 1


def _item_box(image) -> tuple[int, int, int, int]:
    """Bounding box of what differs from the photo's corner colour (the item on its background)."""
    from PIL import Image, ImageChops

    bg = image.getpixel((0, 0))
    mask = ImageChops.difference(image, Image.new("RGB", image.size, bg)).convert("L").point(lambda v: 255 if v > 12 else 0)
    return mask.getbbox() or (0, 0) + image.size


def _reshoot(image, rng: random.Random, tilt: float, crop: tuple, light: tuple):
    """One re-shoot of a catalogue photo: tilt +-`tilt` deg, a square crop of `crop` (fractions) of the item's extent
    resized back, brightness x`light`."""
    from PIL import Image, ImageEnhance

    (w, h), bg = image.size, image.getpixel((0, 0))
    v = image.rotate(rng.uniform(-tilt, tilt), resample=Image.BILINEAR, fillcolor=bg)
    x0, y0, x1, y1 = _item_box(v)
    side = max(8, int(rng.uniform(*crop) * max(x1 - x0, y1 - y0)))
    cx = rng.randint(x0 + side // 2, max(x0 + side // 2, x1 - side // 2))
    cy = rng.randint(y0 + side // 2, max(y0 + side // 2, y1 - side // 2))
    v = v.crop((cx - side // 2, cy - side // 2, cx + side // 2, cy + side // 2)).resize((w, h), Image.BILINEAR)
    return ImageEnhance.Brightness(v).enhance(rng.uniform(*light))


def catalogue_views(image, n: int, seed: int) -> list:
    """The photo, its mirror image and n-2 seeded re-shoots: tilt +-10 deg, a square crop of 60-95 % of the
    item, light x0.75-1.25, a mirror half the time, a slight blur half the time."""
    from PIL import ImageFilter, ImageOps

    rng = random.Random(seed)
    out = [image, ImageOps.mirror(image)][:n]
    while len(out) < n:
        v = _reshoot(image, rng, 10, (0.6, 0.95), (0.75, 1.25))
        if rng.random() < 0.5:
            v = ImageOps.mirror(v)
        if rng.random() < 0.5:
            v = v.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
        out.append(v)
    return out


def query_view(image, rng: random.Random, conditions: dict = None):
    """A calibration photo taken under the query conditions this product documents (QUERY_CONDITIONS,
    docs/products.md "Photo conditions"): tilt, a square crop of the item, blur, light, JPEG. Drawn from the
    catalogue photo with the index's own seed, never from any query."""
    from PIL import ImageFilter

    c = QUERY_CONDITIONS if conditions is None else conditions
    v = _reshoot(image, rng, c["tilt"], c["crop"], c["light"])
    v = v.filter(ImageFilter.GaussianBlur(rng.uniform(0, c["blur"])))
    return jpeg_roundtrip(v, rng.randint(*c["jpeg"]))


def probe_view(image, rng: random.Random):
    """A calibration photo: a re-shoot unlike any indexed view, with a shop photo's faults on top (another
    background half the time, a hand or shelf edge over a side a third of the time, light, blur, JPEG), so
    the listed scores it gives are not optimistic."""
    from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

    if rng.random() < 0.5:
        bg = image.getpixel((0, 0))
        mask = ImageChops.difference(image, Image.new("RGB", image.size, bg)).convert("L").point(lambda v: 255 if v > 12 else 0)
        image = Image.composite(image, Image.new("RGB", image.size, tuple(rng.randint(120, 235) for _ in range(3))), mask)
    v = catalogue_views(image, 3, rng.randint(0, 2**31))[2].filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    v = ImageEnhance.Brightness(v).enhance(rng.uniform(0.85, 1.15))
    if rng.random() < 0.33:
        w, h = v.size
        ow, oh = int(w * rng.uniform(0.2, 0.4)), int(h * rng.uniform(0.3, 0.6))
        x, y = rng.choice([0, w - ow]), rng.randint(0, h - oh)
        ImageDraw.Draw(v).rectangle((x, y, x + ow, y + oh), fill=tuple(rng.randint(60, 200) for _ in range(3)))
    return jpeg_roundtrip(v, rng.randint(35, 90))


def jpeg_roundtrip(image, quality: int):
    """The image as a JPEG of that quality would show it (compression artefacts included)."""
    from PIL import Image

    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _parts(features: dict, dim: int) -> list[tuple[str, int, int, float]]:
    """(name, start, end, weight) of each part of a row: embedding, colour (if fused), texture (if fused)."""
    wc, wt = float(features.get("colour_weight") or 0.0), float(features.get("texture_weight") or 0.0)
    e = int(features.get("embedding") or dim)
    parts = [("embedding", 0, e, 1.0 - wc - wt)]
    if wc:
        parts.append(("colour", e, e + int(np.prod(features.get("colour_bins", COLOUR_BINS))), wc))
    if wt:
        parts.append(("texture", parts[-1][2], parts[-1][2] + texture_dims(features["texture"]), wt))
    return parts


def describe(encoder: ImageEncoder, images: list, features: dict) -> np.ndarray:
    """Rows / queries as a catalogue's `features` say: the unit embedding, fused with the colour descriptor and the
    texture descriptor (each part scaled by the square root of its weight: the inner product of two rows is the
    weighted sum of the parts' similarities)."""
    emb = encoder.embed(images)
    parts = _parts(features, encoder.dim)
    if len(parts) == 1:
        return emb
    made = {"embedding": lambda: emb,
            "colour": lambda: np.stack([colour_descriptor(im, tuple(features.get("colour_bins", COLOUR_BINS))) for im in images]),
            "texture": lambda: np.stack([texture_descriptor(im, **features["texture"]) for im in images])}
    return np.hstack([np.sqrt(w) * made[name]() for name, _, _, w in parts]).astype(np.float32)


AGREEMENT = ("embedding", "colour", "texture")   # the parts agreement() compares, in its columns' order
WHAT = {"embedding": "shape", "colour": "colour", "texture": "pattern"}


def agreement(index: CatalogIndex, queries: np.ndarray, products) -> np.ndarray:
    """(Q, 3): each query's best embedding cosine, best colour similarity (Bhattacharyya) and best texture similarity
    over the rows of the product given for it; nan for a part the catalogue does not fuse (all nan with no colour)."""
    out = np.full((len(queries), len(AGREEMENT)), np.nan, np.float32)
    parts = _parts(index.features, index.dim)
    if len(parts) == 1:
        return out
    rows = index.embeddings
    for i, (q, p) in enumerate(zip(queries, products)):
        r = rows[index.item_rows(int(p))]
        for name, a, b, w in parts:
            out[i, AGREEMENT.index(name)] = float((r[:, a:b] @ q[a:b]).max()) / w
    return out


def calibrate(index: CatalogIndex, probes: np.ndarray, items: np.ndarray, *, listed_cost: float = LISTED_COST,
              source: str = "shelf") -> dict:
    """The catalogue's own "unknown" rule: a photo is unknown when its best product's score is below `threshold`,
    beats the runner-up by less than `margin`, or (colour fused) agrees with it in embedding below `embedding_min`
    or in colour below `colour_min` (a new colourway scores high on shape, a new pattern in a listed colour high on
    colour: the fused score lets one make up for the other). Each probe (an unseen photo of a listed item) gives a
    listed case (its own item) and a look-alike case (the same photo with its item left out: the best *other* item,
    what a new product one detail away from listed ones looks like). The cuts that best separate the two are kept
    (from a grid of quantiles of the listed probes' values), a listed item wrongly flagged costing `listed_cost`
    look-alikes missed."""
    if len(index) < 3 or not len(probes):
        return {}
    top, sims = index.search(probes, 3, exact=True)
    rows = index.embeddings
    own_score = np.array([s[list(t).index(i)] if i in t else float((rows[index.item_rows(int(i))] @ p).max())
                          for t, s, i, p in zip(top, sims, items, probes)])
    others = np.array([[(t_, s) for t_, s in zip(t, sc) if t_ != i][:2] for t, sc, i in zip(top, sims, items)])
    other_item = others[:, 0, 0].astype(int)
    # (score, lead, embedding, colour, texture agreement) of the listed and the look-alike cases
    pos = np.column_stack([own_score, own_score - others[:, 0, 1], agreement(index, probes, items)])
    neg = np.column_stack([others[:, 0, 1], others[:, 0, 1] - others[:, 1, 1], agreement(index, probes, other_item)])
    used = [not np.isnan(pos[:, 2 + j]).any() for j in range(len(AGREEMENT))]
    if not any(used[1:]):                               # embedding alone: the fused score already is the embedding
        used = [False] * len(AGREEMENT)
    quantiles = (0, .01, .02, .03, .05, .08, .1, .15, .2, .3)
    lowest = float(min(pos[:, 0].min(), neg[:, 0].min())) - 1e-3
    grids = [np.concatenate([[lowest], np.quantile(pos[:, 0], quantiles)]), np.array(MARGINS)]
    grids += [np.concatenate([[-1.0], np.quantile(pos[:, 2 + j], quantiles)]) if u else np.array([-1.0]) for j, u in enumerate(used)]

    def flags(x):   # (threshold, margin, embedding, colour, texture cuts, cases): flagged by any cut
        f = [x[None, :, j] < g[:, None] for j, g in enumerate(grids)]
        f[1] &= grids[1][:, None] > 0                      # margin 0: no lead rule
        out = np.zeros([len(g) for g in grids] + [len(x)], bool)
        for j, fj in enumerate(f):
            out |= fj.reshape([len(grids[k]) if k == j else 1 for k in range(len(grids))] + [len(x)])
        return out
    passed, flagged = 1 - flags(np.nan_to_num(pos, nan=1.0)).mean(-1), flags(np.nan_to_num(neg, nan=1.0)).mean(-1)
    value = listed_cost * passed + flagged
    # the agreement cuts may add flagged look-alikes, never flagged listed probes beyond the threshold + margin rule's
    base = np.unravel_index(np.argmax(value[(slice(None),) * 2 + (0,) * len(AGREEMENT)]), value.shape[:2]) + (0,) * len(AGREEMENT)
    value = np.where(passed >= passed[base] - 1e-9, value, -np.inf)
    best = np.unravel_index(np.argmax(value), passed.shape)   # ties: the lowest cuts
    t, m, *cuts = (float(g[i]) for g, i in zip(grids, best))
    return {"threshold": round(t, 4), "margin": round(m, 4),
            **{f"{name}_min": round(c, 4) if c > -1 else None for name, c, u in zip(AGREEMENT, cuts, used) if u},
            "probes": int(len(probes)), "items": int(len(np.unique(items))), "listed_pass_rate": round(float(passed[best]), 4),
            "lookalike_flag_rate": round(float(flagged[best]), 4), "listed_median": round(float(np.median(pos[:, 0])), 4),
            "lookalike_median": round(float(np.median(neg[:, 0])), 4),
            "probes_from": source, "listed_cost": listed_cost,
            "method": f"photos of listed items ({PROBE_SOURCES.get(source, source)}): own item (score, lead over the runner-up, "
                      "embedding, colour and texture agreement) vs the same photo with its item left out; the cuts that separate "
                      f"them best (a listed item flagged costs {listed_cost:g} look-alikes missed)"}


PROBE_SOURCES = {"shelf": "synthetic shelf photos: other backgrounds, occluders, light, blur, JPEG",
                 "reshoot": "synthetic re-shoots on the catalogue background: crops, tilt, blur, light, JPEG",
                 "photos": "the shop's own photos"}


class IndexBuilder:
    """Catalogue photos -> the rows of a CatalogIndex (views x fused descriptors) + calibration probes."""

    def __init__(self, encoder: ImageEncoder, views: int = MATCHING["views"], colour_weight: float = MATCHING["colour_weight"],
                 texture: bool = MATCHING["texture"], query_photos: str = MATCHING["query_photos"]):
        self.encoder, self.views, self.query_photos = encoder, max(1, int(views)), _query_photos(query_photos)
        self.features = {"embedding": encoder.dim, "views": self.views, "colour_weight": float(colour_weight),
                         **({"colour_bins": list(COLOUR_BINS)} if colour_weight else {}),
                         **({"texture_weight": TEXTURE_WEIGHT, "texture": dict(TEXTURE)} if texture else {})}
        self.rows, self.probes, self.probe_items, self.count = [], [], [], 0
        self._rng = random.Random(0)

    @classmethod
    def like(cls, encoder: ImageEncoder, features: dict) -> "IndexBuilder":
        """A builder making rows the way an existing index's `features` say (a product added to it)."""
        builder = cls(encoder, features.get("views", 1), features.get("colour_weight", 0.0), False)
        builder.features = {**builder.features, **features}
        return builder

    def rows_of(self, images: list) -> np.ndarray:
        """(len(images) * views, dim) rows, each image's views together."""
        start, self.count = self.count, self.count + len(images)
        views = [v for i, im in enumerate(images) for v in catalogue_views(im, self.views, start + i)]
        return np.concatenate([describe(self.encoder, views[j:j + 32], self.features) for j in range(0, len(views), 32)])

    def add_images(self, images: list) -> np.ndarray:
        first = self.count
        self.rows.append(self.rows_of(images))
        sample = [(first + i, im) for i, im in enumerate(images) if first + i < CALIBRATION_ITEMS]
        if sample:
            how = QUERY_PHOTOS[self.query_photos]
            view = {"probe_view": probe_view, "query_view": query_view}[how["view"]]
            probes = [view(im, self._rng) for _, im in sample for _ in range(how["probes"])]
            self.probes.append(describe(self.encoder, probes, self.features))
            self.probe_items += [i for i, _ in sample for _ in range(how["probes"])]
        return self.rows[-1]

    def finish(self, products: list[Product], fingerprint: dict) -> CatalogIndex:
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, self.dim), np.float32)
        index = CatalogIndex(rows, products, fingerprint, items=np.repeat(np.arange(len(products)), self.views),
                             features=self.features)
        if self.probes:
            index.calibration = calibrate(index, np.concatenate(self.probes), np.array(self.probe_items),
                                          listed_cost=QUERY_PHOTOS[self.query_photos]["listed_cost"], source=self.query_photos)
        return index

    @property
    def dim(self) -> int:
        return _parts(self.features, self.encoder.dim)[-1][2]


def _query_photos(value: str) -> str:
    if value not in QUERY_PHOTOS:
        raise InputError(f"query_photos must be one of {', '.join(QUERY_PHOTOS)}, got {value!r}")
    return value


def read_photo_rows(path) -> tuple[list, list]:
    """([(image path, title, CSV line)], issues) of a calibration-photo CSV: a title column and an image column (the catalogue
    CSV's names), paths relative to the CSV; rows without a title or an existing image are issues, not errors."""
    import csv

    from ..catalog import IMAGE_COLUMNS, TITLE_COLUMNS, _column, _read_text

    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: calibration photo CSV not found; pass a CSV with columns title, local_image_path")
    rows = list(csv.reader(io.StringIO(_read_text(path)[0], newline="")))
    header = rows[0] if rows else []
    cols = [_column(header, names) for names in (TITLE_COLUMNS, IMAGE_COLUMNS)]
    if None in cols:
        raise CatalogError(f"{path}: a calibration photo CSV needs a title and an image column "
                           f"(header: {', '.join(header) or 'empty'})")
    ti, ii = (header.index(c) for c in cols)
    pairs, issues = [], []
    for line, row in enumerate(rows[1:], start=2):
        title, image = (row[ti].strip() if len(row) > ti else ""), (row[ii].strip() if len(row) > ii else "")
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        try:
            found = bool(title and image) and image_path.is_file()
        except (OSError, ValueError):   # a NUL byte or a name too long for the file system
            found = False
        if not found:
            issues.append({"row": line, "title": title, "problem": f"no title or no image file ({image_path})"})
            continue
        pairs.append((str(image_path), title, line))
    return pairs, issues


def _open_photo(image, min_side: int):
    """load_image, a JPEG decoded at reduced scale while it stays >= min_side (the pixel limit applies first)."""
    return load_image(image, min_side=min_side)


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) >= 3 and not w.isdigit()]


def text_match(lines: list[str], product: Product) -> float:
    """How well the label text read from the photo names this product: the best fuzzy match between a
    word read and a word of its title (or brand column), 0 when nothing is close (ratio < 0.75)."""
    read = _words(" ".join(lines))
    names = _words(" ".join([product.title] + [str(v) for k, v in product.extra.items() if k.lower() in ("brand", "name")]))
    best = max((difflib.SequenceMatcher(None, a, b).ratio() for a in read for b in names), default=0.0)
    return best if best >= 0.75 else 0.0


_PRICE = re.compile(r"(?:[$€£]\s?(\d{1,5}(?:[.,]\d{2})?))|(\d{1,5}[.,]\d{2})(?:\s?[$€£])?")


def read_price(lines: list[str]) -> float | None:
    """A price printed in the photo: a currency-marked amount first, else an amount with two decimals."""
    marked = [m.group(1) for line in lines for m in _PRICE.finditer(line) if m.group(1)]
    plain = [m.group(2) for line in lines for m in _PRICE.finditer(line) if m.group(2)]
    found = marked + plain
    return float(found[0].replace(",", ".")) if found else None


def estimate_price(matches: list[Match], temperature: float = 0.03) -> PriceEstimate | None:
    """Softmax(similarity / T)-weighted mean price of the neighbours; the range spans those that carry
    at least 10 % of the top weight (a clear winner gives a narrow range, a tie a wide one)."""
    priced = [m for m in matches if m.price is not None]
    if not priced:
        return None
    s = np.array([m.score for m in priced])
    w = np.exp((s - s.max()) / temperature)
    prices = np.array([m.price for m in priced])
    near = prices[w >= 0.1]
    return PriceEstimate(round(float((w * prices).sum() / w.sum()), 2), float(near.min()), float(near.max()), int(len(near)))


# -- CLI, HTTP, demo hooks --------------------------------------------------------------------------
SAMPLE_INPUTS = [str(defaults.default_bundle_dir("products") / "samples" / "query.jpg")]  # a shop photo the default bundle ships


def from_json(payload) -> bytes:
    """HTTP body {"image": base64} -> image bytes (the catalogue is the server's loaded one)."""
    if not isinstance(payload, dict) or "image" not in payload:
        raise InputError('products request must be a JSON object {"image": "<base64 of the photo>"}')
    return decode_base64(payload["image"])


def export_spec(adapter_dir, kind: str | None) -> dict:
    """an image encoder (pixel_values -> embedding, logits) with its preprocessing in the manifest, the
    adapter of `edgesight train products` merged in; int8 calibrated on sample photos; or, for a SmolVLM /
    Idefics3 base or an adapter of `train products --family vlm`, a vlm bundle (text GGUF + mmproj f16)"""
    if kind == "vlm":                    # issue 15: edgesight.export.vlm
        return {"kind": "vlm", "mmproj_type": "f16"}
    spec = {"kind": "image-encoder",     # products bundles are image encoders, whatever the base
            "preprocessing": None,       # None: the base encoder's own (EfficientNet-Lite0: 224 px squash)
            "calibration": None}         # None: the export stage's sample photos
    spec["preprocessing"] = adapter_json(adapter_dir, "recipe.json", {}).get("preprocessing")
    return spec


def add_cli_arguments(p) -> None:
    p.add_argument("images", nargs="*", help="product photo(s)")
    p.add_argument("--catalog", default=None, help="catalogue CSV or saved index directory (default: the bundle's sample)")
    p.add_argument("--save-index", default=None, help="write the catalogue index (embeddings + metadata) to this directory")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--ocr", action="store_true", help="read label text and prices (needs edgesight[ocr])")
    p.add_argument("--threshold", type=float, default=None,
                   help="similarity below which a photo is 'unknown' (default: the catalogue's calibrated one)")
    p.add_argument("--views", type=int, default=None, help=f"indexed views per catalogue photo (default {MATCHING['views']})")
    p.add_argument("--colour-weight", type=float, default=None,
                   help=f"weight of colour similarity in the score, 0 = embedding only (default {MATCHING['colour_weight']})")
    p.add_argument("--texture", choices=["on", "off"], default=None,
                   help="index a texture (pattern) descriptor for the 'unknown' check (default off: see docs/products.md)")
    p.add_argument("--query-photos", choices=list(QUERY_PHOTOS), default=None,
                   help="what your photos to recognise look like, for the 'unknown' calibration of a --catalog CSV: shelf "
                        "(other backgrounds, hands or shelf edges; default) or reshoot (the item on its catalogue background: "
                        "crops, tilt, blur, light, JPEG); see docs/products.md")
    p.add_argument("--calibration-photos", default=None, metavar="CSV",
                   help="a CSV (title, local_image_path) of your own photos of listed products: the 'unknown' rule is derived "
                        "from them instead (saved with --save-index)")
    p.add_argument("--adapt", type=int, default=None, metavar="STEPS",
                   help="first LoRA-adapt the encoder to the catalogue CSV's photos for STEPS steps (needs edgesight[train] "
                        "and --save-index DIR: writes DIR/encoder and DIR/index)")
    p.add_argument("--prompt", default=None, help="vlm bundles only: ask this (e.g. 'what is the price in 6.5?') instead of "
                                                 "the seed's question; the answer is then free text, not grammar-constrained")
    p.add_argument("--vlm", default=None, metavar="VLM_BUNDLE",
                   help="the cascade: photos the catalogue calls unknown are answered by this vlm bundle (docs/vlm.md; "
                        "serve / batch: EDGESIGHT_PRODUCTS_VLM); each result's `path` says which answered")


def run_cli(task: ProductRecognizer, args):
    from .vlm import VLMProductRecognizer

    if isinstance(task, VLMProductRecognizer):   # --model names a vlm bundle (issue 15)
        return task.run_cli(args)
    if getattr(args, "prompt", None) is not None:   # the Python API builds args without it
        raise InputError("--prompt is for vlm bundles (--model VLM_BUNDLE); a retrieval bundle answers from the "
                         "catalogue (and --vlm behind it with the seed's question)")
    if args.threshold is not None:
        task.threshold = check_number(args.threshold, "--threshold", -1.0, 1.0)
    if args.views is not None:          # how a --catalog CSV is indexed below
        task.matching["views"] = int(check_number(args.views, "--views", 1, 256))
    if args.colour_weight is not None:
        task.matching["colour_weight"] = check_number(args.colour_weight, "--colour-weight", 0.0, 0.95)
    if getattr(args, "texture", None) is not None:
        task.matching["texture"] = args.texture == "on"
    if getattr(args, "query_photos", None) is not None:
        task.matching["query_photos"] = _query_photos(args.query_photos)
    out = {}
    if args.adapt is not None:
        task, out["adapted"] = _adapted(task, args)
    if getattr(args, "vlm", None):   # checked before the catalogue is ingested
        task.use_vlm(args.vlm)
    if args.catalog:
        report = task.set_catalog(args.catalog)
        out["catalog"] = {"items": len(task.catalog), **(report.to_dict() if report else {})}
    if getattr(args, "calibration_photos", None):
        out["calibration"] = task.calibrate(args.calibration_photos)
    if args.save_index:
        index_dir = Path(args.save_index) / "index" if args.adapt is not None else args.save_index
        task._require_catalog().save(index_dir, source=args.catalog)
        out["index"] = str(index_dir)
    if args.images:
        results = task(list(args.images), top_k=args.top_k, ocr=args.ocr)
        out["results"] = [dict(image=str(i), **r.to_dict()) for i, r in zip(args.images, results)]
    if not out:
        raise InputError("nothing to do: give photo paths, --catalog CSV and/or --save-index DIR")
    return out


def _adapted(task: ProductRecognizer, args) -> tuple[ProductRecognizer, dict]:
    """--adapt STEPS: LoRA on the catalogue's photos (edgesight.training, loaded only now), then the same
    recognizer settings on the tuned encoder, which writes DIR/encoder."""
    from .._optional import require
    from ..registry import TASKS, load_hook

    if not (args.catalog and str(args.catalog).lower().endswith(".csv") and args.save_index):
        raise InputError("--adapt STEPS needs --catalog CSV (the photos to adapt to) and --save-index DIR (where the "
                         "tuned encoder and its index go)")
    require("peft", "train")
    encoder_dir = Path(args.save_index) / "encoder"
    bundle = load_hook(f"{TASKS['products'].train}:adapt")(args.catalog, Path(args.save_index) / "run", args.adapt,
                                                          threads=task.threads, progress=task.progress)
    import shutil
    if encoder_dir.exists():
        shutil.rmtree(encoder_dir)
    shutil.move(bundle, encoder_dir)
    tuned = ProductRecognizer.from_pretrained(str(encoder_dir), threads=task.threads, device=task.device, ocr=task.use_ocr,
                                              threshold=task._threshold, top_k=task.top_k, progress=task.progress,
                                              views=task.matching["views"], colour_weight=task.matching["colour_weight"],
                                              texture=task.matching["texture"], query_photos=task.matching["query_photos"])
    return tuned, {"steps": args.adapt, "encoder": str(encoder_dir),
                   "use": f"edgesight products PHOTO --model {encoder_dir} --catalog {Path(args.save_index) / 'index'}"}
