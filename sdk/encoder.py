"""Run an image-encoder bundle: preprocess as its manifest says, then one ONNX pass that gives an
L2-normalised `embedding` (catalogue search) and `logits` (ImageNet class names + probabilities).

Shared by product recognition and the default captioner; no torch, only numpy, PIL and onnxruntime.

    enc = ImageEncoder.from_bundle(bundle, threads=2)      # or .from_task(task): the task's runtime and device
    enc.embed([img])          # (1, 1280) float32, unit rows
    enc.classify([img], 3)    # [[("Egyptian cat", 0.76), ...]]
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from . import runtime
from .errors import BundleError
from .images import load_image

RESIZE_MODES = ("center-crop", "squash", "letterbox")


@dataclass(frozen=True)
class Preprocessing:
    """How a PIL RGB image becomes the model's NCHW float input."""

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: str = "center-crop"   # center-crop: shorter side to size/crop_pct, centre crop; squash; letterbox
    crop_pct: float = 0.875

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise BundleError(f"unknown resize mode {self.resize!r}; expected one of {RESIZE_MODES}")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(size=int(d["size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   resize=d.get("resize", "center-crop"), crop_pct=float(d.get("crop_pct", 0.875)))

    def to_dict(self) -> dict:
        return asdict(self)

    def resized(self, img: Image.Image) -> Image.Image:
        s = self.size
        if self.resize == "squash":
            return img.resize((s, s), Image.BILINEAR)
        w, h = img.size
        if self.resize == "letterbox":
            scale = s / max(w, h)
            inner = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            canvas = Image.new("RGB", (s, s), tuple(int(m * 255) for m in self.mean))
            canvas.paste(inner, ((s - inner.width) // 2, (s - inner.height) // 2))
            return canvas
        short = s / self.crop_pct
        scale = short / min(w, h)
        img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
        left, top = (img.width - s) // 2, (img.height - s) // 2
        return img.crop((left, top, left + s, top + s))

    def apply(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image -> (1, 3, size, size) float32."""
        x = np.asarray(self.resized(img), dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


class ImageEncoder:
    """An ONNX image encoder with outputs `embedding` and (optionally) `logits`."""

    def __init__(self, session, preprocessing: Preprocessing, labels: list[str] | None = None):
        self.session, self.preprocessing, self.labels = session, preprocessing, labels
        outputs = session.outputs
        if "embedding" not in outputs:
            raise BundleError(f"image encoder has no 'embedding' output (outputs: {', '.join(outputs)}); "
                              "re-export it with edgesight.export.image_encoder")
        self.dim = int(outputs["embedding"][-1])
        self.num_classes = int(outputs["logits"][-1]) if "logits" in outputs else 0

    @classmethod
    def from_file(cls, path, preprocessing: Preprocessing, threads: int = 1, labels=None) -> "ImageEncoder":
        return cls(runtime.open_graph(path, threads=threads), preprocessing, labels)

    @classmethod
    def from_bundle(cls, bundle, threads: int = 1, device: str = "cpu", backend: str | None = None) -> "ImageEncoder":
        if bundle.kind != "image-encoder" or "preprocessing" not in bundle.manifest:
            raise BundleError(f"{bundle.path}: not an image-encoder bundle (kind {bundle.kind!r}); "
                              "export one with edgesight.export.image_encoder")
        labels = bundle.file("labels").read_text(encoding="utf-8").splitlines() if bundle.has("labels") else None
        session = runtime.open_session(bundle, "model", threads=threads, device=device, backend=backend)
        return cls(session, Preprocessing.from_dict(bundle.manifest["preprocessing"]), labels)

    @classmethod
    def from_task(cls, task) -> "ImageEncoder":
        return cls.from_bundle(task.bundle, task.threads, task.device, task.backend)

    def run(self, images: list) -> tuple[np.ndarray, np.ndarray | None]:
        """Images (anything load_image takes) -> (unit embeddings (N, dim), logits (N, classes) or None)."""
        batch = np.concatenate([self.preprocessing.apply(load_image(im)) for im in images])
        names = ["embedding"] + (["logits"] if self.num_classes else [])
        out = self.session.run({"pixel_values": batch}, names)
        emb = out[0].astype(np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb, (out[1] if self.num_classes else None)

    def embed(self, images: list) -> np.ndarray:
        return self.run(images)[0]

    def classify(self, images: list, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class name, softmax probability) per image."""
        _, logits = self.run(images)
        if logits is None or not self.labels:
            raise BundleError("this encoder bundle has no classifier head or no labels.txt")
        z = logits - logits.max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        top = np.argsort(-probs, axis=1)[:, :top_k]
        return [[(self.labels[j], float(p[j])) for j in row] for p, row in zip(probs, top)]
