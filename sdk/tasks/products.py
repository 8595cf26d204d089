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
import os
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

DEFAULT_THRESHOLD = 0.55   # cosine below which a photo is `unknown` (non-products score <= 0.28, listed >= ~0.7); a manifest may set `unknown_threshold`
OCR_WEIGHT = 0.15          # how much a label-text match adds to the visual similarity when re-ranking
RERANK_POOL = 20           # OCR re-ranks only the visual top-20: search stays one matrix product


@dataclass
class Match(Record):
    title: str
    category: str | None
    price: float | None
    similarity: float              # cosine between photo and catalogue image
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

    def __init__(self, bundle, backend=None, threads=None, device: str | None = "cpu", catalog=None, ocr: bool = False,
                 threshold: float | None = None, top_k: int = 5, progress: bool | None = None):
        super().__init__(bundle, backend, threads, device)
        self.encoder = ImageEncoder.from_task(self)
        self.threshold = check_number(threshold if threshold is not None else bundle.get("unknown_threshold", DEFAULT_THRESHOLD),
                                      "threshold", -1.0, 1.0)
        self.threshold_source = "argument" if threshold is not None else "bundle" if bundle.get("unknown_threshold") else "default"
        self.top_k, self.use_ocr, self.progress = int(top_k), bool(ocr), progress
        self._ocr_engine, self._ocr_lock = None, threading.Lock()
        self.report: IngestReport | None = None
        self.catalog: CatalogIndex | None = None
        catalog = catalog if catalog is not None else os.environ.get("EDGESIGHT_PRODUCTS_CATALOG") or None  # for `serve`
        if catalog is not None:
            self.set_catalog(catalog)
        elif bundle.has("catalog_embeddings"):
            self.catalog = CatalogIndex.from_bundle(bundle)   # the bundle's sample catalogue
            for p in self.catalog.products:
                if p.image and not Path(p.image).is_absolute():
                    p.image = str(bundle.path / p.image)

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
            embeddings, failed = self.embed_files([p.image for p in products], skip_bad=True)
            for i, problem in failed.items():   # the header passed, the full decode did not: a skipped row
                self.report.skip(products[i].title, problem)
            products = [p for i, p in enumerate(products) if i not in failed]
            if not products:
                raise CatalogError(f"{catalog}: no catalogue image could be decoded; see the report's issues")
            index = CatalogIndex(embeddings, products, self.fingerprint)
        else:
            raise CatalogError(f"{catalog}: not a catalogue CSV or index directory; pass a .csv "
                               "(title, category, full_price, local_image_path) or a directory saved by index.save()")
        if index.encoder.get("sha256") != self.fingerprint["sha256"]:
            raise CatalogError(f"the catalogue index was embedded with encoder {index.encoder.get('name')} "
                               f"({str(index.encoder.get('sha256'))[:12]}…), not this bundle's "
                               f"({self.fingerprint['sha256'][:12]}…); rebuild it from the CSV with this encoder")
        self.catalog = index
        return self.report

    def embed_files(self, paths: list, batch: int = 16, skip_bad: bool = False):
        """Embeddings of image files; with skip_bad, (embeddings of the readable ones, {index: why not})."""
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
                out.append(self.encoder.embed(images))
        emb = np.concatenate(out) if out else np.zeros((0, self.encoder.dim), np.float32)
        return (emb, failed) if skip_bad else emb

    def add_product(self, title: str, category: str | None, price, image, *, replace: bool = False, **extra) -> None:
        """Add (or with replace=True update) one product: one embedding, no retraining."""
        try:
            price = parse_price(price)
        except ValueError as exc:
            raise CatalogError(f"bad price for {title!r}: {exc}") from None
        path = str(image) if isinstance(image, (str, Path)) else None
        self._require_catalog(allow_empty=True).add(Product(title, category, price, path, extra),
                                                    self.encoder.embed([load_image(image)])[0], replace=replace)

    def set_price(self, title: str, price) -> None:
        self._require_catalog().set_price(title, price)

    def _require_catalog(self, allow_empty: bool = False) -> CatalogIndex:
        if self.catalog is None:
            if not allow_empty:
                raise CatalogError("no catalogue loaded; pass catalog=CSV or index directory to from_pretrained()")
            self.catalog = CatalogIndex(np.zeros((0, self.encoder.dim), np.float32), [], self.fingerprint)
        if not allow_empty and not len(self.catalog):
            raise CatalogError("the catalogue is empty; add products (add_product or a CSV) before recognising photos")
        return self.catalog

    # -- recognition --------------------------------------------------------------------------------
    def _run_batch(self, inputs: list, top_k: int | None = None, ocr: bool | None = None) -> list[ProductResult]:
        catalog = self._require_catalog()
        k = max(1, int(top_k or self.top_k))
        use_ocr = self.use_ocr if ocr is None else ocr
        images = [_open_photo(x, 1024 if use_ocr else self.encoder.preprocessing.size) for x in inputs]
        idx, sims = catalog.search(self.encoder.embed(images), RERANK_POOL if use_ocr else k)
        return [self._result(catalog, row_idx, row_sims, self._read(img) if use_ocr else None, k)
                for img, row_idx, row_sims in zip(images, idx, sims)]

    def _result(self, catalog, idx, sims, reading: OcrReading | None, k: int) -> ProductResult:
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
    adapter of `edgesight train products` merged in; int8 calibrated on sample photos"""
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
    p.add_argument("--threshold", type=float, default=None, help="similarity below which a photo is 'unknown'")


def run_cli(task: ProductRecognizer, args):
    if args.threshold is not None:
        task.threshold = check_number(args.threshold, "--threshold", -1.0, 1.0)
    out = {}
    if args.catalog:
        report = task.set_catalog(args.catalog)
        out["catalog"] = {"items": len(task.catalog), **(report.to_dict() if report else {})}
    if args.save_index:
        task._require_catalog().save(args.save_index, source=args.catalog)
        out["index"] = args.save_index
    if args.images:
        results = task(list(args.images), top_k=args.top_k, ocr=args.ocr)
        out["results"] = [dict(image=str(i), **r.to_dict()) for i, r in zip(args.images, results)]
    if not out:
        raise InputError("nothing to do: give photo paths, --catalog CSV and/or --save-index DIR")
    return out

