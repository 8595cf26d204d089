"""Images for every image task: `load_image` turns a path, encoded bytes, a PIL image or a numpy array
into an upright RGB PIL image, or raises ImageError saying why; `Preprocessing` turns that image into a
model's NCHW float input, as a bundle's manifest ("preprocessing") says.

Guards: the pixel count is checked from the header *before* decoding (decompression-bomb safe),
truncated or corrupt files are reported instead of half-decoded, EXIF orientation is applied so a
phone photo is upright, and any mode (L, P, RGBA, CMYK, 16-bit, ...) comes out as RGB.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BundleError, ImageError
from .limits import check_pixels, limit as _limit


def max_pixels_default() -> int:
    """The pixel limit: EDGESIGHT_MAX_IMAGE_PIXELS if set, else 40 MP (edgesight.limits)."""
    return _limit("image_pixels")


def load_image(image, *, max_pixels: int | None = None, min_side: int | None = None) -> Image.Image:
    """Path, bytes, PIL image or numpy array (HxW, HxWx1/3/4; uint8, or float in [0, 1]) -> RGB PIL image.

    `min_side`: a JPEG may be decoded at 1/2..1/8 scale in the DCT domain (PIL draft) while both sides
    stay >= min_side (a 12 MP photo decodes ~6x faster); the pixel limit applies to the full size first."""
    limit = max_pixels or max_pixels_default()
    if isinstance(image, Image.Image):
        _check_size(image.size, limit, "image")
        img = image
    elif isinstance(image, np.ndarray):
        img = _from_array(image, limit)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        if not len(image):
            raise ImageError("image bytes are empty; send the encoded file (JPEG, PNG, ...)")
        img = _decode(io.BytesIO(bytes(image)), limit, "image bytes", min_side)
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            exists = path.is_file()
        except (OSError, ValueError):  # e.g. base64 text passed as a path: name too long
            exists = False
        if not exists:
            raise ImageError(f"{str(path)[:200]}: no such image file; pass an existing path, bytes, "
                             "a PIL image or a numpy array (base64 text: decode it first)")
        with open(path, "rb") as f:
            img = _decode(f, limit, str(path), min_side)
    else:
        raise ImageError(f"unsupported image input of type {type(image).__name__}; "
                         "pass a file path, encoded bytes, a PIL image or a numpy array")
    return _to_rgb(ImageOps.exif_transpose(img))


def decode_base64(text: str, *, what: str = "image") -> bytes:
    """Base64 (optionally a `data:image/...;base64,` URL) -> bytes, or ImageError saying it is not base64."""
    if not isinstance(text, str) or not text.strip():
        raise ImageError(f"'{what}' must be a non-empty base64 string")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"'{what}' is not valid base64 ({exc}); send the file's bytes base64-encoded") from None
    if not data:
        raise ImageError(f"'{what}' decodes to zero bytes; send a non-empty image")
    return data


def _check_size(size: tuple[int, int], limit: int, what: str) -> None:
    check_pixels(size[0], size[1], what, limit)


def _decode(fp, limit: int, what: str, min_side: int | None = None) -> Image.Image:
    """Read the header, check the pixel count, then decode fully (so truncation surfaces here)."""
    try:
        with warnings.catch_warnings():
            # Our own limit applies; PIL's global bomb warning would only add noise (its hard error still counts).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
            _check_size(img.size, limit, what)
            if min_side and img.format == "JPEG":
                img.draft("RGB", (min_side, min_side))
            img.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{what}: not a recognised image format (JPEG, PNG, WebP, BMP, GIF, TIFF, ...)") from None
    except Image.DecompressionBombError as exc:   # PIL's own check (at twice its limit) fires inside open()
        raise ImageError(f"{what}: over the {limit / 1e6:.0f} MP limit ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{what}: corrupt or truncated image data ({exc}); re-encode or re-upload the file") from None
    return img


def _from_array(arr: np.ndarray, limit: int) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"numpy image must be HxW, HxWx1, HxWx3 or HxWx4 (channels last), got shape {arr.shape}"
                         + ("; transpose channels-first arrays with arr.transpose(1, 2, 0)" if arr.ndim == 3 else ""))
    _check_size((arr.shape[1], arr.shape[0]), limit, "numpy image")
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ImageError("float numpy images must hold values in [0, 1]; scale them or pass uint8")
        arr = np.round(arr * 255).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    else:
        raise ImageError(f"numpy image dtype {arr.dtype} is not supported; pass uint8 (0-255) or float (0-1)")
    return Image.fromarray(np.ascontiguousarray(arr))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # convert("RGB") would clip 16-bit values at 255 (a white image); rescale to 8 bits instead.
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if img.mode == "F" and top <= 1.0:
            arr = arr * 255.0          # float image in [0, 1]
        elif top > 255:
            arr = arr / 257.0          # 16-bit range -> 8-bit
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's warning; alpha is then dropped like the HF processors do
    return img.convert("RGB")


# ----------------------------------------------------------------------------- preprocessing

RESIZE_MODES = ("center-crop", "squash", "letterbox")


@dataclass(frozen=True)
class Preprocessing:
    """How a PIL RGB image becomes the model's NCHW float input. Two specs, one manifest key:
    edgesight's own (size, resize mode, mean/std on x/255; image encoders) and a Hugging Face image
    processor's settings (`hf`: size dict, resample, centre crop, rescale factor; BLIP, CLIP, ViT),
    reproduced bit for bit."""

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: str = "center-crop"   # center-crop: shorter side to size/crop_pct, centre crop; squash; letterbox
    crop_pct: float = 0.875
    hf: dict | None = None        # a Hugging Face image processor's settings: they win when given

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise BundleError(f"unknown resize mode {self.resize!r}; expected one of {RESIZE_MODES}")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        if not isinstance(d, dict) or "size" not in d:
            raise BundleError(f"preprocessing settings must be an object with 'size', got {d!r}; re-export the bundle")
        if isinstance(d["size"], dict):   # HF image processor settings
            return cls(mean=tuple(d["mean"]), std=tuple(d["std"]), hf=dict(d))
        return cls(size=int(d["size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   resize=d.get("resize", "center-crop"), crop_pct=float(d.get("crop_pct", 0.875)))

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Preprocessing":
        """`preprocessing` of a manifest (or of its "clip" section); `preprocess` is what bundles
        written before edgesight 0.1.1 call it."""
        settings = manifest.get("preprocessing") or manifest.get("preprocess")
        if settings is None:
            raise BundleError("the manifest has no 'preprocessing' settings; re-export the bundle")
        return cls.from_dict(settings)

    def to_dict(self) -> dict:
        return dict(self.hf) if self.hf is not None else {k: v for k, v in asdict(self).items() if k != "hf"}

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
        """RGB PIL image -> (1, 3, H, W) float32."""
        if self.hf is not None:
            return _hf_apply(img, self.hf)
        x = np.asarray(self.resized(img), dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _hf_apply(image: Image.Image, settings: dict) -> np.ndarray:
    """RGB PIL image -> float32 (1, 3, H, W), identical to transformers' (slow) image processors:
    PIL resize on uint8, optional centre crop, rescale in float64 then float32, normalise."""
    size, w, h = settings["size"], *image.size
    if "shortest_edge" in size:                     # CLIP-style: keep the aspect ratio
        short, long = (w, h) if w <= h else (h, w)
        s = size["shortest_edge"]
        new_long = int(s * long / short)
        target = (s, new_long) if w <= h else (new_long, s)
    else:
        target = (size["width"], size["height"])
    arr = np.asarray(image.resize(target, resample=Image.Resampling(settings["resample"]), reducing_gap=None))
    if settings.get("do_center_crop"):
        ch, cw = settings["crop_size"]["height"], settings["crop_size"]["width"]
        top, left = (arr.shape[0] - ch) // 2, (arr.shape[1] - cw) // 2
        arr = arr[max(top, 0):max(top, 0) + ch, max(left, 0):max(left, 0) + cw]
    arr = (arr.astype(np.float64) * settings["rescale_factor"]).astype(np.float32)
    arr = (arr - np.asarray(settings["mean"], np.float32)) / np.asarray(settings["std"], np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def preprocess(image: Image.Image, settings) -> np.ndarray:
    """`settings` (a Preprocessing or its dict) applied to an RGB PIL image -> (1, 3, H, W) float32."""
    return (settings if isinstance(settings, Preprocessing) else Preprocessing.from_dict(settings)).apply(image)
