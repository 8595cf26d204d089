"""Run an image-encoder bundle: preprocess as its manifest says, then one ONNX pass that gives an
L2-normalised `embedding` (catalogue search) and `logits` (ImageNet class names + probabilities).

Shared by product recognition and the default captioner; no torch, only numpy, PIL and onnxruntime.

    enc = ImageEncoder.from_bundle(bundle, threads=2)      # or .from_task(task): the task's runtime and device
    enc.embed([img])          # (1, 1280) float32, unit rows
    enc.classify([img], 3)    # [[("Egyptian cat", 0.76), ...]]
"""
from __future__ import annotations

import numpy as np

from . import runtime
from .errors import BundleError
from .images import Preprocessing, load_image


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
        if labels is not None and self.num_classes and len(labels) != self.num_classes:
            raise BundleError(f"the encoder has {self.num_classes} classes but its labels list has {len(labels)} "
                              "names; re-export the bundle (labels.txt must match the classifier head)")

    @classmethod
    def from_file(cls, path, preprocessing: Preprocessing, threads: int = 1, labels=None) -> "ImageEncoder":
        return cls(runtime.open_graph(path, threads=threads), preprocessing, labels)

    @classmethod
    def from_bundle(cls, bundle, threads: int = 1, device: str = "cpu", backend: str | None = None) -> "ImageEncoder":
        if bundle.kind != "image-encoder":
            raise BundleError(f"{bundle.path}: not an image-encoder bundle (kind {bundle.kind!r}); "
                              "export one with edgesight.export.image_encoder")
        labels = bundle.file("labels").read_text(encoding="utf-8").splitlines() if bundle.has("labels") else None
        session = runtime.open_session(bundle, "model", threads=threads, device=device, backend=backend)
        return cls(session, Preprocessing.from_manifest(bundle.manifest), labels)

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
