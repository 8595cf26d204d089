"""Bundles: a directory with an `edgesight.json` manifest and the files it lists with sha256.

Loading verifies every hash before a file is handed to a backend; writing happens in a temporary
sibling directory that is renamed into place, so a failed export never leaves half a bundle.
Only safetensors, ONNX, GGUF, JSON and text files are ever read: nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BundleError, BundleNotFoundError, InputError, IntegrityError
from .limits import parse_json

MANIFEST = "edgesight.json"
SCHEMA = 1
# Files a bundle may carry. Pickle-based formats (.bin, .pt, .pth, .pkl) are refused outright.
ALLOWED_SUFFIXES = {".onnx", ".data", ".gguf", ".safetensors", ".json", ".txt", ".model", ".npy", ".jinja", ".csv", ".jsonl",
                    ".png", ".jpg",   # images: sample inputs and catalogue photos (decoded by PIL, never unpickled)
                    ".faiss"}         # catalogue rows: faiss's own binary serialisation (no code, no pickle)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# The manifest's typed fields: key -> (type(s), required). Values of other keys are read by the task
# that needs them and checked there.
MANIFEST_FIELDS = {
    "schema": (int, True), "task": (str, True), "format": (str, True), "files": (dict, True),
    "components": (dict, True), "precision": (str, False), "kind": (str, False), "name": (str, False),
    "generation": (dict, False), "prompt": (dict, False), "labels": (list, False), "vocab": (dict, False),
    "preprocessing": (dict, False), "provenance": (dict, False), "fidelity": (dict, False), "created": (str, False),
}
_SHA256 = frozenset("0123456789abcdef")


def _known_formats() -> list[str]:
    from .runtime import RUNTIMES   # a bundle format is one a runtime reads

    return [f for spec in RUNTIMES.values() for f in spec.formats]


def check_manifest(manifest, where) -> dict:
    """The manifest's structure and field types (BundleError naming the field), before anything uses it."""
    def bad(what: str):
        raise BundleError(f"{where}: {what}; re-export the bundle")

    if not isinstance(manifest, dict):
        bad(f"the manifest must be a JSON object, not {type(manifest).__name__}")
    for key, (types, required) in MANIFEST_FIELDS.items():
        if key not in manifest:
            if required:
                bad(f"manifest lacks '{key}'")
            continue
        value = manifest[key]
        if value is None and not required:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            bad(f"manifest field '{key}' must be {names}, not {type(value).__name__}")
    if manifest["schema"] > SCHEMA:
        raise BundleError(f"{where}: schema {manifest['schema']} is newer than this edgesight "
                          f"understands ({SCHEMA}); upgrade edgesight")
    if manifest["format"] not in _known_formats():
        bad(f"unknown bundle format {manifest['format']!r}; this edgesight reads {', '.join(_known_formats())}")
    for rel, meta in manifest["files"].items():
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and len(meta["sha256"]) == 64
                and set(meta["sha256"]) <= _SHA256 and isinstance(meta.get("bytes"), int)
                and not isinstance(meta["bytes"], bool) and meta["bytes"] >= 0):
            bad(f"files[{rel[:80]!r}] must be {{\"sha256\": 64 hex digits, \"bytes\": size}}")
    for role, rel in manifest["components"].items():
        if not isinstance(rel, str) or not rel:
            bad(f"components[{role[:40]!r}] must be a path inside the bundle, not {rel!r}"[:300])
    if manifest.get("labels") is not None and not all(isinstance(x, str) for x in manifest["labels"]):
        bad("manifest field 'labels' must be a list of strings")
    return manifest


def _inside(path: Path, root: Path) -> bool:
    """`path` with every symlink (file or directory) resolved lies inside `root`."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError, ValueError):   # a symlink loop, a NUL byte
        return False


@dataclass
class Bundle:
    """A verified bundle on disk. `manifest` is the parsed edgesight.json."""

    path: Path
    manifest: dict = field(repr=False)

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    @property
    def kind(self) -> str:
        """Model kind: causal-lm, seq2seq, token-classifier, image-encoder, blip, ..."""
        return self.manifest.get("kind", "")

    def get(self, key: str, default=None):
        return self.manifest.get(key, default)

    def file(self, role: str) -> Path:
        """Path of the file playing `role` (e.g. "model", "tokenizer")."""
        try:
            return self.path / self.manifest["components"][role]
        except KeyError:
            raise BundleError(f"{self.path}: manifest has no '{role}' component "
                              f"(has: {', '.join(self.manifest.get('components', {}))})") from None

    def has(self, role: str) -> bool:
        return role in self.manifest.get("components", {})

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            inside = sorted(p.name for p in path.iterdir() if (p / MANIFEST).is_file()) if path.is_dir() else []
            if inside:   # `edgesight export --out DIR` writes one bundle per format under DIR
                raise BundleNotFoundError(f"{path}: not an edgesight bundle but a folder of them; pass one: "
                                          + ", ".join(str(path / n) for n in inside))
            raise BundleNotFoundError(f"{path}: not an edgesight bundle (no {MANIFEST}); "
                                      "create one with `edgesight export` or pass a bundle directory")
        try:
            manifest = parse_json(mpath.read_bytes(), str(mpath))
        except InputError as exc:
            raise BundleError(f"{exc}; re-export the bundle") from None
        check_manifest(manifest, mpath)
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every listed file exists inside the bundle (symlinks and directories resolved), has an
        allowed type, and matches its sha256; every component is a listed file or a directory of them."""
        root = self.path.resolve()
        for rel, meta in self.manifest["files"].items():
            fpath = self.path / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts or not _inside(fpath, root):
                raise BundleError(f"{self.path}: manifest lists a path outside the bundle: {rel} "
                                  "(a symlink or directory leading out of the bundle is refused)")
            if fpath.suffix not in ALLOWED_SUFFIXES:
                raise BundleError(f"{fpath}: file type {fpath.suffix or '(none)'} is not allowed in a bundle "
                                  "(pickle-based weights are never loaded; use safetensors, ONNX or GGUF)")
            if not fpath.is_file():
                raise BundleError(f"{fpath}: listed in the manifest but missing; re-export the bundle")
            if fpath.stat().st_size != meta["bytes"]:
                raise IntegrityError(fpath, meta["sha256"], f"size {fpath.stat().st_size} != {meta['bytes']}")
            actual = sha256_file(fpath)
            if actual != meta["sha256"]:
                raise IntegrityError(fpath, meta["sha256"], actual)
        files = self.manifest["files"]
        for role, rel in self.manifest["components"].items():
            cpath = self.path / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts or not _inside(cpath, root):
                raise BundleError(f"{self.path}: component '{role}' -> {rel} leads outside the bundle")
            if rel in files:
                continue
            if not cpath.is_dir():
                raise BundleError(f"{self.path}: component '{role}' -> {rel} is not a listed file")
            for f in cpath.rglob("*"):   # a directory component: each file in it listed (so hashed) like any other
                if f.is_file() and str(f.relative_to(self.path)) not in files:
                    raise BundleError(f"{self.path}: component '{role}' holds {f.relative_to(self.path)}, which the "
                                      "manifest does not list (so it is not verified); re-export the bundle")

    def size_bytes(self) -> int:
        return sum(meta["bytes"] for meta in self.manifest["files"].values())


class BundleWriter:
    """Build a bundle in a temporary sibling directory; `commit()` hashes, writes the manifest
    and renames it into place (replacing an older bundle only once the new one is complete).

        with BundleWriter(out, task="keywords", format="gguf", precision="q8_0", kind="causal-lm") as w:
            w.add_file(src, "model.gguf", role="model")
            w.manifest["generation"] = {...}
        # on success the bundle exists at `out`; on any exception nothing is left behind
    """

    def __init__(self, out: str | os.PathLike, *, task: str, format: str, precision: str, kind: str, **fields):
        known = _known_formats()
        if format not in known:
            raise BundleError(f"unknown bundle format {format!r}; expected one of {', '.join(known)}")
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self.manifest = {"schema": SCHEMA, "task": task, "format": format, "precision": precision,
                         "kind": kind, "components": {}, "files": {}, **fields}

    @property
    def dir(self) -> Path:
        return self.tmp

    def add_file(self, src: str | os.PathLike, name: str | None = None, role: str | None = None, move: bool = False) -> Path:
        src = Path(src)
        dst = self.tmp / (name or src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.resolve() != dst.resolve():
            (shutil.move if move else shutil.copy2)(src, dst)
        if role:
            self.manifest["components"][role] = str(dst.relative_to(self.tmp))
        return dst

    def add_json(self, obj, name: str, role: str | None = None) -> Path:
        dst = self.tmp / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
        if role:
            self.manifest["components"][role] = name
        return dst

    def set_role(self, role: str, name: str) -> None:
        self.manifest["components"][role] = name

    def commit(self) -> Bundle:
        files = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                rel = str(p.relative_to(self.tmp))
                files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        self.manifest["files"] = files
        self.manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (self.tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        replace_dir(self.tmp, self.out)
        return Bundle(self.out, self.manifest)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Rename the finished directory `tmp` onto `out`, replacing an older `out` only at the end."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file through a temporary sibling and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class staging_dir:
    """`with staging_dir(out) as tmp:` — fill the temporary sibling directory `tmp`; it is renamed onto
    `out` on success and deleted on failure."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        replace_dir(self.tmp, self.out)
        return False


class staging_file(staging_dir):
    """`with staging_file(dst) as tmp:` — write the file `tmp` (in a temporary sibling directory); on
    success it (and an ONNX external-data `.data` companion, moved first) replaces `dst`."""

    def __enter__(self) -> Path:
        super().__enter__()
        return self.tmp / self.out.name

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                data = self.tmp / (self.out.name + ".data")
                if data.exists():
                    os.replace(data, self.out.with_name(data.name))
                os.replace(self.tmp / self.out.name, self.out)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False
