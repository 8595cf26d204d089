"""A product catalogue as a search index: unit vectors in faiss (one or more rows per product) + JSON metadata.

Recognition is a nearest-neighbour search, so adding a product or changing a price is an index
update, never a retraining. Ingestion reads the seeds' CSV shape (title, category3_code or category,
full_price, local_image_path; extra columns are kept) and reports bad rows instead of failing on them.
Saved as a bundle (faiss's own serialisation of the rows + items.json, sha256-verified, no pickle) tied to
the encoder that made the embeddings: searching with another encoder would silently return nonsense, so it is refused.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import Bundle, BundleWriter, sha256_file
from .errors import BundleError, CatalogError
from .limits import limit
from .record import Record

TITLE_COLUMNS = ("title", "name", "product")
CATEGORY_COLUMNS = ("category3_code", "category", "category_code")
PRICE_COLUMNS = ("full_price", "price")
IMAGE_COLUMNS = ("local_image_path", "image_path", "image")


def encoder_fingerprint(model_path, manifest: dict) -> dict:
    """What ties a catalogue index to the encoder that embedded it (the ONNX file's sha256)."""
    return {"name": manifest.get("name"), "precision": manifest.get("precision"), "sha256": sha256_file(Path(model_path)),
            "dim": manifest.get("outputs", {}).get("embedding")}


@dataclass
class Product(Record):
    title: str
    category: str | None
    price: float | None
    image: str | None = None            # path of the catalogue photo (absolute, or as given)
    extra: dict = field(default_factory=dict)


@dataclass
class RowIssue(Record):
    row: int          # 1-based line in the CSV (header = line 1)
    title: str
    problem: str


@dataclass
class IngestReport:
    rows: int
    added: int
    issues: list[RowIssue]
    lines: dict = field(default_factory=dict, repr=False)   # title -> CSV line of the products added

    def to_dict(self) -> dict:
        return {"rows": self.rows, "added": self.added, "issues": [i.to_dict() for i in self.issues]}

    def skip(self, title: str, problem: str) -> None:
        """A product added from the CSV turned out unusable later (its image does not decode): report its row."""
        self.issues.append(RowIssue(self.lines.get(title, 0), title, problem))
        self.added -= 1


# A price: optional currency sign or code, digits with one kind of thousands separator (",", ".", "'",
# space) in groups of three, and at most one decimal separator ("," or ".") with 1-2 digits after it.
_CURRENCY = re.compile(r"^(?:[$€£¥₹]|[A-Za-z]{3})?\s*(.*?)\s*(?:[$€£¥₹]|[A-Za-z]{3})?$", re.S)
_AMOUNT = re.compile(r"^(\d{1,3}(?:([,.' \u00a0\u202f])\d{3})*|\d+)(?:([.,])(\d{1,2}))?$")


def parse_price(value) -> float | None:
    """'$1,299.00', '1.299,00 €', '12,5', '1299', 12.5 -> float; '' or None -> None; anything else
    (scientific notation, mixed separators, negative, NaN) -> ValueError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a price")
    if isinstance(value, (int, float)):
        try:
            price = float(value)
        except OverflowError:
            raise ValueError("the price is too large a number") from None
    elif isinstance(value, str):
        text = _CURRENCY.match(value.strip()).group(1)
        m = _AMOUNT.match(text)
        if not m or (m.group(2) and m.group(2) == m.group(3)):
            raise ValueError(f"{value[:40]!r} is not a price such as 129.99, 1,299.00 or 1.299,00")
        whole = re.sub(r"\D", "", m.group(1))
        price = float(f"{whole}.{m.group(4)}" if m.group(4) else whole)
    else:
        raise ValueError(f"a price must be a number or text, not {type(value).__name__}")
    if not math.isfinite(price) or price < 0:
        raise ValueError(f"{value!r} is not a non-negative price")
    return price


def _column(header: list[str], names: tuple[str, ...]) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    return next((lower[n] for n in names if n in lower), None)


def _readable_image(path: Path) -> bool:
    """Header check only (cheap for big catalogues): a format PIL knows, with a size."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.width > 0 and im.height > 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # UnidentifiedImageError is an OSError
        return False


def _read_text(path: Path) -> tuple[str, str | None]:
    """The CSV's text: UTF-8 (with or without BOM), else Windows-1252 / Latin-1 (spreadsheet exports), noted."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        where = f"byte {exc.start} is not UTF-8"
    for encoding in ("cp1252", "latin-1"):
        try:
            return data.decode(encoding), (f"the file is not UTF-8 ({where}); read it as {encoding} — "
                                           "save it as UTF-8 so accented titles come out as intended")
        except UnicodeDecodeError:
            continue
    raise CatalogError(f"{path}: not a text file ({where})")   # latin-1 decodes any bytes: not reached


def _csv_next(step, path: Path, line: int, field_limit: int):
    """One csv step, its csv.Error (a cell over the size limit, a NUL byte) as a CatalogError at its line."""
    try:
        return step()
    except csv.Error as exc:
        raise CatalogError(f"{path}: line {line}: unreadable CSV ({exc}; cells may hold at most {field_limit} "
                           "characters, raise EDGESIGHT_MAX_CSV_FIELD); fix or re-export the file") from None


def read_catalog_csv(path, *, require_image: bool = True) -> tuple[list[Product], IngestReport]:
    """Valid products of a catalogue CSV + a report of the rows skipped and why (never fatal per row).

    Image paths are resolved against the CSV's folder. Raises CatalogError only when the file itself
    is unusable (missing, no title column) or no row survives."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: catalogue CSV not found; pass a CSV with columns title, category, full_price, local_image_path")
    text, note = _read_text(path)
    products, issues, first_row, rows = [], [], {}, 0
    if note:
        issues.append(RowIssue(1, "", note))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    field_limit = limit("csv_field_bytes")
    old_limit = csv.field_size_limit(field_limit)
    try:
        header = _csv_next(lambda: reader.fieldnames, path, 1, field_limit) or []
        cols = {k: _column(header, names) for k, names in
                (("title", TITLE_COLUMNS), ("category", CATEGORY_COLUMNS), ("price", PRICE_COLUMNS), ("image", IMAGE_COLUMNS))}
        if cols["title"] is None:
            raise CatalogError(f"{path}: no title column (header: {', '.join(header) or 'empty'}); "
                               f"expected one of {', '.join(TITLE_COLUMNS)}")
        if require_image and cols["image"] is None:
            raise CatalogError(f"{path}: no image column; expected one of {', '.join(IMAGE_COLUMNS)} "
                               "(a path to each product's photo, relative to the CSV)")
        line = 1
        while (row := _csv_next(lambda: next(reader, None), path, line + 1, field_limit)) is not None:
            line, rows = reader.line_num, rows + 1
            title = (row.get(cols["title"]) or "").strip()
            if not title:
                issues.append(RowIssue(line, "", "empty title; every product needs a title"))
                continue
            if title in first_row:
                issues.append(RowIssue(line, title, f"duplicate title (first at line {first_row[title]}); kept the first — "
                                                    "make titles unique (add size, colour or SKU) or merge the rows"))
                continue
            try:
                price = parse_price(row.get(cols["price"])) if cols["price"] else None
            except ValueError:
                issues.append(RowIssue(line, title, f"bad price {row.get(cols['price'])!r}; use a number such as 129.99"))
                continue
            image = (row.get(cols["image"]) or "").strip() if cols["image"] else ""
            if image:
                image_path = Path(image) if Path(image).is_absolute() else path.parent / image
                try:
                    found = image_path.is_file()
                except (OSError, ValueError):   # a NUL byte or a name too long for the file system
                    found = False
                if not found:
                    issues.append(RowIssue(line, title, f"image not found on disk: {image_path}; fix the path or add the file"))
                    continue
                if not _readable_image(image_path):
                    issues.append(RowIssue(line, title, f"not a readable image: {image_path}; re-save it as JPEG or PNG"))
                    continue
                image = str(image_path)
            elif require_image:
                issues.append(RowIssue(line, title, "no image path; the product cannot be recognised without a photo"))
                continue
            first_row[title] = line
            used = {c for c in cols.values() if c}
            extra = {k: v for k, v in row.items() if k not in used and k is not None}
            category = (row.get(cols["category"]) or "").strip() or None if cols["category"] else None
            products.append(Product(title, category, price, image or None, extra))
    finally:
        csv.field_size_limit(old_limit)
    report = IngestReport(rows, len(products), issues, dict(first_row))
    if not products:
        detail = "; ".join(f"line {i.row}: {i.problem}" for i in issues[:3])
        raise CatalogError(f"{path}: the catalogue is empty ({rows} rows, none usable{': ' + detail if detail else ''}); "
                           "add rows with a title, a price and an existing image")
    return products, report


ANN_MIN_ROWS = 20_000    # below this an exact scan is already a few milliseconds


def _faiss():
    import faiss   # a core dependency, imported on first search so `import edgesight` stays light

    return faiss


class CatalogIndex:
    """Catalogue rows in faiss: one or more unit vectors per product (views of its photo; embedding, or
    embedding fused with a colour descriptor) + one metadata record per product. A product's score is its
    best row's inner product (cosine for unit rows).

    The rows live in an exact faiss `IndexFlatIP` (the source of truth, saved with faiss's own serialisation);
    from ANN_MIN_ROWS rows an approximate index (`IndexIVFScalarQuantizer`, 8-bit codes, ~sqrt(rows) lists) is
    trained on first use and finds candidates, which the exact rows then re-score. `features` says how the
    rows were made (the recogniser builds queries the same way) and `calibration` holds the catalogue's own
    "unknown" threshold."""

    def __init__(self, embeddings: np.ndarray, products: list[Product], encoder: dict, *, items: np.ndarray | None = None,
                 features: dict | None = None, calibration: dict | None = None):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        items = np.arange(len(products), dtype=np.int32) if items is None else np.asarray(items, dtype=np.int32)
        if embeddings.ndim != 2 or len(embeddings) != len(items) or (len(items) and not 0 <= items.min() <= items.max() < len(products)):
            raise CatalogError(f"{len(products)} products but {len(items)} row labels and rows of shape {embeddings.shape}")
        self.products, self.encoder = list(products), dict(encoder)
        self.features, self.calibration = dict(features or {}), dict(calibration or {})
        self.items = items                                   # row -> product
        self._dim = embeddings.shape[1]
        self._flat = _faiss().IndexFlatIP(self._dim)
        if len(embeddings):
            self._flat.add(embeddings)
        self._row_ids = np.arange(len(items), dtype=np.int64)   # stable ids of the rows in the approximate index
        self._ann, self._views, self._by_item = None, None, None
        self.nprobe, self.threads = 16, None
        self.rerank = 1     # approximate search: candidate rows re-scored exactly = rerank x the rows k products need (2 k views;
                            # more did not change recall@1 at 100k or 1M rows, docs/products.md)
        self._rows = {p.title: i for i, p in enumerate(self.products)}
        if len(self._rows) != len(self.products):
            dupes = sorted({p.title for p in self.products if sum(q.title == p.title for q in self.products) > 1})
            raise CatalogError(f"duplicate titles in the catalogue: {', '.join(dupes[:5])}; make titles unique")

    def __len__(self) -> int:
        return len(self.products)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def embeddings(self) -> np.ndarray:
        """The rows (R, dim) as a read-only view of the exact index's storage (no copy)."""
        n = self._flat.ntotal
        if not n:
            return np.zeros((0, self._dim), np.float32)
        view = _faiss().rev_swig_ptr(self._flat.get_xb(), n * self._dim).reshape(n, self._dim)
        view.flags.writeable = False
        return view

    @property
    def views(self) -> int:
        """Rows per product (the most any product has)."""
        if self._views is None:
            self._views = int(np.bincount(self.items).max()) if len(self.items) else 1
        return self._views

    def item_rows(self, item: int) -> np.ndarray:
        """Positions of one product's rows: a product -> rows map built once per change of `items` (a mask over every
        row per lookup cost ~1 ms at 1M rows)."""
        if self._by_item is None or self._by_item[0] is not self.items or len(self._by_item[2]) != len(self.products) + 1:
            order = np.argsort(self.items, kind="stable")
            self._by_item = (self.items, order, np.searchsorted(self.items[order], np.arange(len(self.products) + 1)))
        _, order, bounds = self._by_item
        return order[bounds[item]:bounds[item + 1]]

    def __contains__(self, title: str) -> bool:
        return title in self._rows

    def get(self, title: str) -> Product:
        return self.products[self._row(title)]

    def _row(self, title: str) -> int:
        try:
            return self._rows[title]
        except KeyError:
            raise CatalogError(f"no product titled {title!r} in the catalogue ({len(self)} products)") from None

    # -- search -------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 5, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k products for unit query rows (Q, dim): (product indices (Q, k), scores (Q, k)), best first; a
        product scores its best row. Exact below ANN_MIN_ROWS rows (or exact=True); above, the approximate
        index proposes candidates (`nprobe` lists) and the exact rows score them."""
        if not len(self):
            raise CatalogError("the catalogue is empty; add products before searching")
        queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if queries.shape[1] != self.dim:
            raise CatalogError(f"query vector has {queries.shape[1]} dims, the catalogue {self.dim}: "
                               "it was built with another encoder; rebuild the index with this one")
        faiss = _faiss()
        if self.threads:
            faiss.omp_set_num_threads(int(self.threads))
        k = min(k, len(self))
        rows_k = min(self._flat.ntotal, k * self.views * 2)   # enough rows to hold k distinct products
        if exact or (exact is None and self._flat.ntotal < ANN_MIN_ROWS):
            sims, rows = self._flat.search(queries, rows_k)
        else:
            ann = self.ann()
            ann.nprobe = self.nprobe
            _, ids = ann.search(queries, min(self._flat.ntotal, rows_k * max(1, int(self.rerank))))
            rows = np.searchsorted(self._row_ids, np.where(ids < 0, self._row_ids[-1], ids))
            sims = np.einsum("qd,qkd->qk", queries, self.embeddings[rows])   # exact scores of the candidates
            order = np.argsort(-sims, axis=1)[:, :rows_k]
            rows, sims = np.take_along_axis(rows, order, 1), np.take_along_axis(sims, order, 1)
        return self._per_product(rows, sims, k)

    def _per_product(self, rows: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row hits (best first) -> the first k distinct products with their best score (padded with the
        lowest-scored other products when the hits held fewer than k)."""
        out_i, out_s = np.zeros((len(rows), k), np.int64), np.zeros((len(rows), k), np.float32)
        for q, (r, s) in enumerate(zip(rows, sims)):
            valid = r >= 0
            items = self.items[r[valid]]
            _, first = np.unique(items, return_index=True)
            first = np.sort(first)[:k]
            got_i, got_s = items[first], s[valid][first]
            if len(got_i) < k:
                rest = np.setdiff1d(np.arange(len(self)), got_i)[:k - len(got_i)]
                got_i, got_s = np.concatenate([got_i, rest]), np.concatenate([got_s, np.full(len(rest), -1.0, np.float32)])
            out_i[q], out_s[q] = got_i, got_s
        return out_i, out_s

    def ann(self):
        """The approximate index (faiss IVF, 8-bit scalar-quantised codes, inner product), trained on first use."""
        if self._ann is None:
            faiss = _faiss()
            x = self.embeddings
            lists = max(1, int(np.sqrt(len(x))))
            ann = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(self.dim), self.dim, lists,
                                                faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(0).choice(len(x), min(len(x), 64 * lists), replace=False)
            ann.train(x[np.sort(sample)])
            for i in range(0, len(x), 65_536):
                ann.add_with_ids(x[i:i + 65_536], self._row_ids[i:i + 65_536])
            self._ann = ann
        return self._ann

    # -- updates: no retraining, just rows --------------------------------------------------------
    def add(self, product: Product, embedding: np.ndarray, *, replace: bool = False) -> None:
        """Add a product with its row(s) (dim,) or (views, dim); replace=True updates the product with that title."""
        rows = np.array(embedding, dtype=np.float32, ndmin=2)
        if rows.shape[1] != self.dim:
            raise CatalogError(f"embedding has {rows.shape[1]} dims, the catalogue {self.dim}")
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        if product.title in self._rows:
            if not replace:
                raise CatalogError(f"a product titled {product.title!r} already exists; pass replace=True to update it "
                                   "or give the new product a distinct title")
            item = self._rows[product.title]
            self._drop_rows(self.items == item)
            self.products[item] = product
        else:
            item = len(self.products)
            self._rows[product.title] = item
            self.products.append(product)
        self.add_rows(rows, np.full(len(rows), item, np.int32))

    def add_rows(self, rows: np.ndarray, items: np.ndarray) -> None:
        """Bulk rows (unit vectors) for products already listed (items: their product indices)."""
        rows, items = np.ascontiguousarray(rows, dtype=np.float32), np.asarray(items, dtype=np.int32)
        if rows.ndim != 2 or rows.shape[1] != self.dim or len(rows) != len(items) or \
                (len(items) and not 0 <= items.min() <= items.max() < len(self)):
            raise CatalogError(f"add_rows: {len(rows)} rows of {rows.shape[1:]} dims for {len(items)} labels of "
                               f"{len(self)} products (dim {self.dim})")
        ids = (self._row_ids[-1] + 1 if len(self._row_ids) else 0) + np.arange(len(rows), dtype=np.int64)
        self._flat.add(rows)
        self.items, self._row_ids, self._views = np.concatenate([self.items, items]), np.concatenate([self._row_ids, ids]), None
        if self._ann is not None:   # new rows join their nearest lists; the lists stay as trained
            self._ann.add_with_ids(rows, ids)

    def _drop_rows(self, mask: np.ndarray) -> None:
        faiss = _faiss()
        self._flat.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(mask).astype(np.int64)))   # positions shift like np.delete
        if self._ann is not None:
            self._ann.remove_ids(faiss.IDSelectorBatch(self._row_ids[mask]))
        self.items, self._row_ids, self._views = self.items[~mask], self._row_ids[~mask], None

    def set_price(self, title: str, price) -> None:
        try:
            self.products[self._row(title)].price = parse_price(price)
        except ValueError as exc:
            raise CatalogError(f"bad price for {title!r}: {exc}") from None

    def remove(self, title: str) -> None:
        item = self._row(title)
        self._drop_rows(self.items == item)
        self.items = self.items - (self.items > item)
        del self.products[item]
        self._rows = {p.title: i for i, p in enumerate(self.products)}

    # -- persistence --------------------------------------------------------------------------------
    def save(self, out, *, source: str | None = None) -> Bundle:
        """Write the index as a bundle directory (atomic; replaces an older index only when complete)."""
        with BundleWriter(out, task="products", format="onnx", precision=self.encoder.get("precision", "fp32"),
                          kind="catalog-index", encoder=self.encoder, items=len(self), source=source) as w:
            self.write_into(w)
        return Bundle.load(out)

    def write_into(self, w: BundleWriter, prefix: str = "") -> None:
        """Add the index to a bundle being written: rows.faiss (faiss's own serialisation of the exact rows),
        row_items.npy, items.json, and ann.faiss when the approximate index was trained (retraining it at 1M
        rows takes minutes). The bundle records every file's sha256; nothing is pickled."""
        faiss = _faiss()
        (w.dir / prefix).mkdir(parents=True, exist_ok=True)
        faiss.serialize_index(self._flat).tofile(w.dir / f"{prefix}rows.faiss")
        w.set_role("catalog_rows", f"{prefix}rows.faiss")
        np.save(w.dir / f"{prefix}row_items.npy", self.items, allow_pickle=False)
        w.set_role("catalog_row_items", f"{prefix}row_items.npy")
        w.add_json({"encoder": self.encoder, "features": self.features, "calibration": self.calibration,
                    "products": [p.to_dict() for p in self.products]}, f"{prefix}items.json", role="catalog_items")
        if self._ann is not None:
            faiss.serialize_index(self._ann).tofile(w.dir / f"{prefix}ann.faiss")
            w.set_role("catalog_ann", f"{prefix}ann.faiss")
            np.save(w.dir / f"{prefix}row_ids.npy", self._row_ids, allow_pickle=False)
            w.set_role("catalog_row_ids", f"{prefix}row_ids.npy")

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "CatalogIndex":
        import json

        if not bundle.has("catalog_items") or not (bundle.has("catalog_rows") or bundle.has("catalog_embeddings")):
            raise BundleError(f"{bundle.path}: bundle carries no catalogue index; pass catalog=CSV or an index directory")
        meta = json.loads(bundle.file("catalog_items").read_text(encoding="utf-8"))
        products = [Product(**p) for p in meta["products"]]
        kw = dict(features=meta.get("features"), calibration=meta.get("calibration"))
        if bundle.has("catalog_rows"):   # the saved faiss index becomes the index's storage (no copy)
            flat = _read_faiss(bundle, "catalog_rows", "IndexFlatIP")
            items = np.load(bundle.file("catalog_row_items"), allow_pickle=False).astype(np.int32)
            if len(items) != flat.ntotal or (len(items) and not 0 <= items.min() <= items.max() < len(products)):
                raise BundleError(f"{bundle.path}: {len(items)} row labels for {flat.ntotal} rows of {len(products)} products")
            index = cls(np.zeros((0, flat.d), np.float32), products, meta["encoder"], items=np.zeros(0, np.int32), **kw)
            index._flat, index.items, index._row_ids, index._views = flat, items, np.arange(len(items), dtype=np.int64), None
        else:   # an index saved before faiss: one embedding per product in embeddings.npy
            index = cls(np.load(bundle.file("catalog_embeddings"), allow_pickle=False), products, meta["encoder"], **kw)
        if bundle.has("catalog_ann"):
            ann = _read_faiss(bundle, "catalog_ann", "IndexIVFScalarQuantizer")
            ids = np.load(bundle.file("catalog_row_ids"), allow_pickle=False)
            if ann.d != index.dim or ann.ntotal != len(ids) or len(ids) != len(index.items):
                raise BundleError(f"{bundle.path}: ann.faiss does not match the catalogue rows; delete it and save the index again")
            index._ann, index._row_ids = ann, ids.astype(np.int64)
        return index

    @classmethod
    def load(cls, path) -> "CatalogIndex":
        return cls.from_bundle(Bundle.load(path))


def _read_faiss(bundle: Bundle, role: str, kind: str):
    """A faiss index from its serialised bytes (sha256 already verified by Bundle.load), of the expected type."""
    faiss = _faiss()
    path = bundle.file(role)
    try:
        base = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
    except RuntimeError as exc:
        raise BundleError(f"{path}: not a readable faiss index ({str(exc).splitlines()[0][:120]})") from None
    index = faiss.downcast_index(base)
    index.referenced_objects = [base]   # the typed proxy must keep the owning one alive
    if type(index).__name__ != kind:
        raise BundleError(f"{path}: a faiss {type(index).__name__}, expected {kind}")
    return index
