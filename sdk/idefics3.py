"""Idefics3 / SmolVLM image preprocessing and prompt expansion in numpy + PIL (issue 15): what transformers'
`Idefics3ImageProcessor` (the slow one, as training uses) and `Idefics3Processor` do, without transformers, for
the ONNX runtime of a VLM bundle (runtime/onnx_vlm.py). tests/test_vlm_onnx.py checks pixel tensors and token
ids against transformers on several image shapes.

    prep = Idefics3Preprocessing.from_dict(bundle.get("vlm")["preprocessing"])
    pixels, rows, cols = prep(image)             # (tiles, 3, S, S) float32; rows x cols tiles (0 x 0: one image)
    text = expand_image(prompt_text, rows, cols, image_seq_len)   # "<image>" -> the tile layout's image tokens

Steps, as the slow processor: resize the longest edge to `longest_edge` (aspect kept, the short edge made even),
resize both edges up to multiples of the tile, cut rows x cols tiles and append the whole image resized to one
tile (the overview), RGB, x / 255 in float64 -> float32, (x - mean) / std, channels first. Every resize is PIL's
on the uint8 image with the processor's filter (LANCZOS unless the config says otherwise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import BundleError

MAX_IMAGE_SIZE = 4096     # transformers' absolute cap on the resized longest edge
IMAGE_TOKEN, FAKE_TOKEN, GLOBAL_TOKEN = "<image>", "<fake_token_around_image>", "<global-img>"


@dataclass(frozen=True)
class Idefics3Preprocessing:
    longest_edge: int          # size.longest_edge: the resized image's longest edge
    tile: int                  # max_image_size.longest_edge: the vision tower's input size
    splitting: bool = True     # do_image_splitting
    resample: int = 1          # PIL filter (1 = LANCZOS)
    rescale: float = 1 / 255
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, d: dict) -> "Idefics3Preprocessing":
        """From a preprocessor_config.json (Idefics3ImageProcessor's keys) or the dict `to_dict` wrote."""
        if not isinstance(d, dict):
            raise BundleError(f"Idefics3 preprocessing must be a JSON object, not {type(d).__name__}; re-export")
        try:
            edge = d["size"]["longest_edge"] if "size" in d else d["longest_edge"]
            tile = d["max_image_size"]["longest_edge"] if "max_image_size" in d else d["tile"]
            return cls(int(edge), int(tile), bool(d.get("do_image_splitting", d.get("splitting", True))),
                       int(d.get("resample", 1)), float(d.get("rescale_factor", d.get("rescale", 1 / 255))),
                       tuple(float(x) for x in d.get("image_mean", d.get("mean", (0.5,) * 3))),
                       tuple(float(x) for x in d.get("image_std", d.get("std", (0.5,) * 3))))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"Idefics3 preprocessing settings are incomplete or malformed ({exc!r}); re-export") from exc

    def to_dict(self) -> dict:
        return {"longest_edge": self.longest_edge, "tile": self.tile, "splitting": self.splitting,
                "resample": self.resample, "rescale": self.rescale, "mean": list(self.mean), "std": list(self.std)}

    def __call__(self, image) -> tuple[np.ndarray, int, int]:
        """A PIL RGB image -> (pixel values (tiles, 3, tile, tile) float32, rows, cols)."""
        img = image.convert("RGB") if image.mode != "RGB" else image
        img = self._resize(img, *_longest_edge_size(img.height, img.width, self.longest_edge))
        if self.splitting:
            img = self._resize(img, *_tile_multiple_size(img.height, img.width, self.tile))
            frames, rows, cols = self._split(img)
        else:
            frames, rows, cols = [self._resize(img, self.tile, self.tile)], 0, 0
        mean, std = np.array(self.mean, np.float32), np.array(self.std, np.float32)
        out = [(((np.asarray(f, dtype=np.uint8).astype(np.float64) * self.rescale).astype(np.float32) - mean) / std)
               .transpose(2, 0, 1) for f in frames]
        return np.ascontiguousarray(np.stack(out), dtype=np.float32), rows, cols

    def _resize(self, img, height: int, width: int):
        return img.resize((width, height), resample=self.resample)

    def _split(self, img):
        h, w, t = img.height, img.width, self.tile
        if h <= t and w <= t:
            return [img], 0, 0
        rows, cols = math.ceil(h / t), math.ceil(w / t)
        oh, ow = math.ceil(h / rows), math.ceil(w / cols)
        frames = [img.crop((c * ow, r * oh, min(c * ow + ow, w), min(r * oh + oh, h)))
                  for r in range(rows) for c in range(cols)]
        frames.append(img if (h, w) == (t, t) else self._resize(img, t, t))
        return frames, rows, cols


def _longest_edge_size(height: int, width: int, max_len: int) -> tuple[int, int]:
    """transformers' get_resize_output_image_size: longest edge -> max_len, the other even, then <= 4096."""
    aspect = width / height
    if width >= height:
        width, height = max_len, int(max_len / aspect)
        height += height % 2
    else:
        height, width = max_len, int(max_len * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def _tile_multiple_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """transformers' resize_for_vision_encoder: both edges up to multiples of the tile, aspect roughly kept."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def image_prompt(rows: int, cols: int, image_seq_len: int) -> str:
    """The image tokens Idefics3Processor writes for one image of rows x cols tiles + overview (0 x 0: one image)."""
    tokens = IMAGE_TOKEN * image_seq_len
    glob = f"{FAKE_TOKEN}{GLOBAL_TOKEN}{tokens}{FAKE_TOKEN}"
    if rows == 0 and cols == 0:
        return glob
    grid = "".join("".join(f"{FAKE_TOKEN}<row_{r + 1}_col_{c + 1}>{tokens}" for c in range(cols)) + "\n"
                   for r in range(rows))
    return f"{grid}\n{glob}"


def expand_image(text: str, rows: int, cols: int, image_seq_len: int) -> str:
    """`text` with its one "<image>" replaced by the image's tokens (as Idefics3Processor does)."""
    head, sep, tail = text.partition(IMAGE_TOKEN)
    if not sep:
        raise BundleError(f"the VLM prompt template has no {IMAGE_TOKEN} marker; re-export the bundle")
    return head + image_prompt(rows, cols, image_seq_len) + tail
