"""A product catalogue as a search index: unit embeddings (numpy matrix) + JSON metadata per item.

Recognition is a nearest-neighbour search, so adding a product or changing a price is an index
update, never a retraining. Ingestion reads the seeds' CSV shape (title, category3_code or category,
full_price, local_image_path; extra columns are kept) and reports bad rows instead of failing on them.
Saved as a bundle (embeddings.npy + items.json, sha256-verified, no pickle) tied to the encoder that
made the embeddings: searching with another encoder would silently return nonsense, so it is refused.
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
_CURRENCY = re.compile(r"^(?:[$€£¥₹]|[A-Za-z]{3})?\s*(.*?)\s*(?:[$€£¥₹]|[A-Za-z]{3})?$")
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


IVF_MIN_ITEMS = 20_000   # below this an exact scan is already a few milliseconds


def _top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a (Q, N) similarity matrix, best first."""
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(np.arange(sims.shape[1]), (len(sims), 1))
    order = np.take_along_axis(sims, top, 1).argsort(axis=1)[:, ::-1]
    idx = np.take_along_axis(top, order, 1)
    return idx, np.take_along_axis(sims, idx, 1)


def _top_k_rows(q: np.ndarray, embeddings: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k among candidate `rows` only, padded with the best of the rest if the lists held fewer than k."""
    if len(rows) < k:
        rows = np.concatenate([rows, np.setdiff1d(np.arange(len(embeddings)), rows)[:k - len(rows)]])
    idx, sims = _top_k((embeddings[rows] @ q)[None], k)
    return rows[idx[0]], sims[0]


@dataclass
class InvertedFile:
    """Spherical k-means lists over unit embeddings: centroids (L, dim), the list of every row, and the
    rows grouped by list (order/offsets) so a probe is a slice, not a scan."""
    centroids: np.ndarray
    assign: np.ndarray
    order: np.ndarray = None
    offsets: np.ndarray = None

    @classmethod
    def train(cls, x: np.ndarray, lists: int | None = None, iters: int = 8, sample: int = 20_000, seed: int = 0):
        rng = np.random.default_rng(seed)
        lists = lists or int(np.sqrt(len(x)))
        train = x[rng.choice(len(x), min(sample, len(x)), replace=False)]
        c = train[rng.choice(len(train), lists, replace=False)].copy()
        for _ in range(iters):
            a = (train @ c.T).argmax(1)
            sums = np.zeros_like(c)
            np.add.at(sums, a, train)
            empty = np.bincount(a, minlength=lists) == 0
            sums[empty] = train[rng.choice(len(train), int(empty.sum()))]  # re-seed empty lists
            c = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        ivf = cls(c.astype(np.float32), np.zeros(0, np.int32))
        ivf.assign = np.concatenate([ivf.nearest(x[i:i + 8192]) for i in range(0, len(x), 8192)])
        ivf.reorder()
        return ivf

    def nearest(self, x: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(x) @ self.centroids.T).argmax(1).astype(np.int32)

    def reorder(self) -> None:
        self.order = np.argsort(self.assign, kind="stable")
        self.offsets = np.searchsorted(self.assign[self.order], np.arange(len(self.centroids) + 1))

    def candidates(self, q: np.ndarray, nprobe: int) -> np.ndarray:
        probe = np.argpartition(-(self.centroids @ q), min(nprobe, len(self.centroids)) - 1)[:nprobe]
        return np.concatenate([self.order[self.offsets[p]:self.offsets[p + 1]] for p in probe])


class CatalogIndex:
    """Unit embeddings (N, dim) float32 + one metadata dict per row; search is one matrix-vector product."""

    def __init__(self, embeddings: np.ndarray, products: list[Product], encoder: dict):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(products):
            raise CatalogError(f"{len(products)} products but embeddings of shape {embeddings.shape}")
        self.embeddings, self.products, self.encoder = embeddings, list(products), dict(encoder)
        self._ivf: InvertedFile | None = None
        self.nprobe = 16
        self._rows = {p.title: i for i, p in enumerate(self.products)}
        if len(self._rows) != len(self.products):
            dupes = sorted({p.title for p in self.products if sum(q.title == p.title for q in self.products) > 1})
            raise CatalogError(f"duplicate titles in the catalogue: {', '.join(dupes[:5])}; make titles unique")

    def __len__(self) -> int:
        return len(self.products)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def __contains__(self, title: str) -> bool:
        return title in self._rows

    def get(self, title: str) -> Product:
        return self.products[self._row(title)]

    def _row(self, title: str) -> int:
        try:
            return self._rows[title]
        except KeyError:
            raise CatalogError(f"no product titled {title!r} in the catalogue ({len(self)} products)") from None

    def search(self, queries: np.ndarray, k: int = 5, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by cosine similarity for unit query rows (Q, dim): (indices (Q, k), similarities (Q, k)).

        Up to IVF_MIN_ITEMS items: exact, one BLAS matrix product + argpartition (only the k winners are
        sorted). Above: an inverted file (spherical k-means, ~sqrt(N) lists) built on first use; a query
        scans only the `nprobe` lists nearest to it (sub-linear). exact=True forces the full scan."""
        if not len(self):
            raise CatalogError("the catalogue is empty; add products before searching")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise CatalogError(f"query embedding has {queries.shape[1]} dims, the catalogue {self.dim}: "
                               "it was built with another encoder; rebuild the index with this one")
        k = min(k, len(self))
        if exact or (exact is None and len(self) < IVF_MIN_ITEMS):
            return _top_k(queries @ self.embeddings.T, k)
        ivf = self.ivf()
        rows, sims = zip(*(_top_k_rows(q, self.embeddings, ivf.candidates(q, self.nprobe), k) for q in queries))
        return np.stack(rows), np.stack(sims)

    def ivf(self) -> "InvertedFile":
        if self._ivf is None:
            self._ivf = InvertedFile.train(self.embeddings)
        return self._ivf

    # -- updates: no retraining, just rows --------------------------------------------------------
    def add(self, product: Product, embedding: np.ndarray, *, replace: bool = False) -> None:
        """Add a product (or replace one with the same title when replace=True)."""
        emb = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        if emb.shape[1] != self.dim:
            raise CatalogError(f"embedding has {emb.shape[1]} dims, the catalogue {self.dim}")
        emb /= max(float(np.linalg.norm(emb)), 1e-12)
        if product.title in self._rows:
            if not replace:
                raise CatalogError(f"a product titled {product.title!r} already exists; pass replace=True to update it "
                                   "or give the new product a distinct title")
            row = self._rows[product.title]
            self.products[row], self.embeddings[row] = product, emb[0]
            if self._ivf is not None:
                self._ivf.assign[row] = self._ivf.nearest(emb)[0]
                self._ivf.reorder()
            return
        self._rows[product.title] = len(self.products)
        self.products.append(product)
        self.embeddings = np.concatenate([self.embeddings, emb])
        if self._ivf is not None:  # the new row joins its nearest list; centroids stay as trained
            self._ivf.assign = np.append(self._ivf.assign, self._ivf.nearest(emb))
            self._ivf.reorder()

    def set_price(self, title: str, price) -> None:
        try:
            self.products[self._row(title)].price = parse_price(price)
        except ValueError as exc:
            raise CatalogError(f"bad price for {title!r}: {exc}") from None

    def remove(self, title: str) -> None:
        row = self._row(title)
        del self.products[row]
        self.embeddings = np.delete(self.embeddings, row, axis=0)
        self._rows = {p.title: i for i, p in enumerate(self.products)}
        if self._ivf is not None:
            self._ivf.assign = np.delete(self._ivf.assign, row)
            self._ivf.reorder()

    # -- persistence --------------------------------------------------------------------------------
    def save(self, out, *, source: str | None = None) -> Bundle:
        """Write the index as a bundle directory (atomic; replaces an older index only when complete)."""
        with BundleWriter(out, task="products", format="onnx", precision=self.encoder.get("precision", "fp32"),
                          kind="catalog-index", encoder=self.encoder, items=len(self), source=source) as w:
            self.write_into(w)
        return Bundle.load(out)

    def write_into(self, w: BundleWriter, prefix: str = "") -> None:
        """Add embeddings.npy + items.json to a bundle being written (roles catalog_embeddings, catalog_items)."""
        path = w.dir / f"{prefix}embeddings.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, self.embeddings, allow_pickle=False)
        w.set_role("catalog_embeddings", f"{prefix}embeddings.npy")
        w.add_json({"encoder": self.encoder, "products": [p.to_dict() for p in self.products]},
                   f"{prefix}items.json", role="catalog_items")
        if self._ivf is not None:  # a trained inverted file is kept: retraining it at 100k items takes ~30 s
            for name, arr in (("ivf_centroids", self._ivf.centroids), ("ivf_assign", self._ivf.assign)):
                np.save(w.dir / f"{prefix}{name}.npy", arr, allow_pickle=False)
                w.set_role(f"catalog_{name}", f"{prefix}{name}.npy")

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "CatalogIndex":
        import json

        if not (bundle.has("catalog_embeddings") and bundle.has("catalog_items")):
            raise BundleError(f"{bundle.path}: bundle carries no catalogue index; pass catalog=CSV or an index directory")
        emb = np.load(bundle.file("catalog_embeddings"), allow_pickle=False)
        meta = json.loads(bundle.file("catalog_items").read_text(encoding="utf-8"))
        index = cls(emb, [Product(**p) for p in meta["products"]], meta["encoder"])
        if bundle.has("catalog_ivf_centroids"):
            index._ivf = InvertedFile(np.load(bundle.file("catalog_ivf_centroids"), allow_pickle=False),
                                      np.load(bundle.file("catalog_ivf_assign"), allow_pickle=False))
            index._ivf.reorder()
        return index

    @classmethod
    def load(cls, path) -> "CatalogIndex":
        return cls.from_bundle(Bundle.load(path))
