"""edgesight.images.load_image and the HF-identical preprocessing, on real photos (scikit-image)."""
import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from edgesight.errors import ImageError
from edgesight.images import decode_base64, load_image
from edgesight.images import preprocess


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(data.astronaut())


def test_every_input_kind_gives_the_same_rgb_image(astronaut, tmp_path):
    path = tmp_path / "a.png"
    astronaut.save(path)
    ref = np.asarray(astronaut)
    for x in (path, str(path), path.read_bytes(), bytearray(path.read_bytes()), astronaut, ref):
        out = load_image(x)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), ref)


def test_float_and_gray_arrays(astronaut):
    ref = np.asarray(astronaut)
    np.testing.assert_array_equal(np.asarray(load_image(ref / 255.0)), ref)
    gray = load_image(ref[..., 0])
    assert gray.mode == "RGB" and np.array_equal(np.asarray(gray)[..., 2], ref[..., 0])
    with pytest.raises(ImageError, match="channels last"):
        load_image(ref.transpose(2, 0, 1))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(ref.astype(np.float32))


def test_exif_orientation_is_applied(astronaut):
    small = astronaut.resize((64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(_encode(small, "JPEG", exif=exif))
    assert out.size == (32, 64)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "1", "I;16"])
def test_any_mode_becomes_rgb(astronaut, mode):
    img = astronaut.convert("L").convert(mode) if mode != "I;16" else \
        Image.fromarray((np.asarray(astronaut.convert("L")).astype(np.uint16) * 257))
    out = load_image(img)
    assert out.mode == "RGB" and out.size == astronaut.size
    if mode == "I;16":  # 16-bit is rescaled, not clipped to white
        np.testing.assert_array_equal(np.asarray(out)[..., 0], np.asarray(astronaut.convert("L")))


def test_truncated_corrupt_and_non_images_say_why(astronaut):
    good = _encode(astronaut, "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(good[: len(good) // 2])
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(b"%PDF-1.4 this is not an image")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="no such image file"):
        load_image("/nonexistent/photo.jpg")
    with pytest.raises(ImageError, match="unsupported image input"):
        load_image(3.5)


def test_pixel_limit_is_checked_before_decoding():
    bomb = _encode(Image.new("L", (8000, 6250)))        # 50 MP, ~60 KB of PNG
    with pytest.raises(ImageError, match="50.0 MP, over the 40 MP limit"):
        load_image(bomb)
    assert load_image(bomb, max_pixels=60_000_000).size == (8000, 6250)
    with pytest.raises(ImageError, match="over the 1 MP limit"):
        load_image(np.zeros((2000, 1000, 3), np.uint8), max_pixels=1_000_000)


def test_base64():
    assert decode_base64("data:image/png;base64,aGVsbG8=") == b"hello"
    for bad in ("not base64 !!", "", None):
        with pytest.raises(ImageError):
            decode_base64(bad)


def test_preprocessing_is_identical_to_the_hf_processors():
    from transformers import BlipImageProcessor, CLIPImageProcessor

    from edgesight.export.captioning import _processor_settings

    procs = [BlipImageProcessor(size={"height": 384, "width": 384}), CLIPImageProcessor()]
    for photo in (data.astronaut(), data.chelsea(), data.coffee()[:, :300]):   # square, wide, tall
        img = load_image(photo)
        for proc in procs:
            ref = proc(images=img, return_tensors="np").pixel_values
            got = preprocess(img, _processor_settings(proc))
            assert got.shape == ref.shape and got.dtype == np.float32
            np.testing.assert_array_equal(got, ref)
