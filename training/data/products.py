"""The synthetic product catalogue: the default products bundle's sample catalogue and calibration
photos (edgesight.training.products.build_default), the training demo and `edgesight eval products`.

No product-photo data set can be downloaded here, so the catalogue is drawn: packages (can, box,
bottle, jar, bag, tin) in brand colours with a printed brand name, a logo mark and a price tag.
Several brands share a package shape and colour, so telling them apart needs the printed name —
which is what OCR re-ranking is for. Queries are "photos" of catalogue items: augmented views
(crop, rotation, scale, brightness, JPEG, partial occlusion, another background).
Only PIL and numpy are used here, so `edgesight eval products` can render without torch.
"""
from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

BRANDS = ["NORDA", "KIVO", "LUMEX", "ZAPPA", "ORBIT", "PELLA", "MOXI", "TERRA", "VANTA", "QUILL", "BRISK", "SOLA"]
# product type, category (category3_code style), package shape, base price
TYPES = [("Cola", "beverages/soft-drinks", "can", 1.49), ("Cereal", "food/breakfast", "box", 4.29),
         ("Shampoo", "beauty/hair-care", "bottle", 6.99), ("Coffee", "food/coffee", "jar", 8.49),
         ("Chips", "snacks/crisps", "bag", 2.99), ("Tea", "beverages/tea", "tin", 5.49),
         ("Detergent", "home/laundry", "box", 11.99), ("Juice", "beverages/juice", "bottle", 3.29)]
COLOURS = [("Red", (196, 32, 38)), ("Blue", (30, 80, 180)), ("Green", (40, 140, 60)), ("Yellow", (235, 190, 30)),
           ("Purple", (110, 50, 150)), ("Black", (30, 30, 30)), ("Orange", (235, 120, 20))]
MARKS = ["circle", "star", "triangle", "diamond", "ring", "bars"]
SIZE = 256


@dataclass
class SyntheticProduct:
    title: str
    brand: str
    category: str
    price: float
    shape: str
    colour: tuple[int, int, int]
    mark: str


def catalog_products(n: int, seed: int = 0) -> list[SyntheticProduct]:
    """`n` distinct products; brands repeat shapes and colours on purpose (look-alikes)."""
    rng = random.Random(seed)
    combos = [(b, t, c) for b in BRANDS for t in TYPES for c in COLOURS]
    rng.shuffle(combos)
    out, seen = [], set()
    for brand, (kind, category, shape, base), (cname, rgb) in combos:
        if (brand, kind) in seen:  # one colour per brand and type keeps titles readable
            continue
        seen.add((brand, kind))
        factor = 0.7 + 0.15 * (BRANDS.index(brand) % 5)  # premium brands cost more
        price = round(base * factor * rng.uniform(0.9, 1.2)) + 0.99 if base * factor > 2 else round(base * factor, 1) + 0.09
        out.append(SyntheticProduct(f"{brand} {cname} {kind}", brand, category, round(price, 2), shape, rgb,
                                    MARKS[BRANDS.index(brand) % len(MARKS)]))
        if len(out) == n:
            return out
    raise ValueError(f"at most {len(out)} distinct synthetic products; asked for {n}")


def _font(size: int):
    return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font: same glyphs on every machine


def _text_colour(rgb) -> tuple[int, int, int]:
    return (20, 20, 20) if sum(rgb) > 450 else (250, 250, 250)


def render(p: SyntheticProduct, size: int = SIZE) -> Image.Image:
    """A catalogue photo: the package centred on white, brand name, logo mark and a price tag."""
    img = Image.new("RGB", (size, size), (245, 245, 242))
    d = ImageDraw.Draw(img)
    s = size / 256
    box = {"can": (78, 40, 178, 220), "box": (58, 30, 198, 226), "bottle": (88, 30, 168, 228), "jar": (63, 70, 193, 220),
           "bag": (48, 50, 208, 220), "tin": (48, 90, 208, 210)}[p.shape]
    x0, y0, x1, y1 = (int(v * s) for v in box)
    light = tuple(min(255, c + 70) for c in p.colour)
    if p.shape in ("can", "tin", "jar"):
        d.rounded_rectangle((x0, y0, x1, y1), radius=int(18 * s), fill=p.colour, outline=(60, 60, 60), width=2)
        d.rectangle((x0, y0 + int(12 * s), x1, y0 + int(24 * s)), fill=light)
    elif p.shape == "bottle":
        d.rounded_rectangle((x0 + int(22 * s), y0 - int(10 * s), x1 - int(22 * s), y0 + int(30 * s)), radius=6, fill=(220, 220, 220))
        d.rounded_rectangle((x0, y0 + int(25 * s), x1, y1), radius=int(20 * s), fill=p.colour, outline=(60, 60, 60), width=2)
    elif p.shape == "bag":
        d.polygon([(x0, y0), (x1, y0), (x1 - int(12 * s), y1), (x0 + int(12 * s), y1)], fill=p.colour, outline=(60, 60, 60))
        for i in range(x0, x1, int(8 * s)):
            d.line((i, y0, i + int(4 * s), y0 + int(8 * s)), fill=light, width=2)
    else:
        d.rectangle((x0, y0, x1, y1), fill=p.colour, outline=(60, 60, 60), width=2)
        d.rectangle((x0, y1 - int(40 * s), x1, y1), fill=light)
    cx, cy, r = (x0 + x1) // 2, (y0 + y1) // 2 + int(18 * s), int(18 * s)
    mark = {"circle": lambda: d.ellipse((cx - r, cy - r, cx + r, cy + r), fill="white"),
            "ring": lambda: d.ellipse((cx - r, cy - r, cx + r, cy + r), outline="white", width=int(6 * s)),
            "triangle": lambda: d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill="white"),
            "diamond": lambda: d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill="white"),
            "star": lambda: d.regular_polygon((cx, cy, r), 5, rotation=0, fill="white"),
            "bars": lambda: [d.rectangle((cx - r + i * r // 2, cy - r, cx - r + i * r // 2 + r // 4, cy + r), fill="white") for i in range(4)]}
    mark[p.mark]()
    font = _font(int(24 * s))
    tw = d.textlength(p.brand, font=font)
    d.text(((x0 + x1 - tw) / 2, y0 + int(36 * s)), p.brand, font=font, fill=_text_colour(p.colour),
           stroke_width=1, stroke_fill=(0, 0, 0) if sum(p.colour) > 450 else (255, 255, 255))
    tag = f"${p.price:.2f}"
    tf = _font(int(20 * s))
    d.rounded_rectangle((int(150 * s), int(206 * s), int(250 * s), int(246 * s)), radius=6, fill=(255, 250, 200), outline=(90, 90, 90))
    d.text((int(158 * s), int(214 * s)), tag, font=tf, fill=(10, 10, 10))
    return img


def augment(img: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    """A "photo" of a catalogue item: other background, scale, rotation, crop, brightness, occlusion, JPEG."""
    w, h = img.size
    bg = tuple(rng.randint(150, 235) for _ in range(3))
    # Replace the white studio background (keeps the package), then rotate and rescale like a hand-held shot.
    mask = Image.eval(img.convert("L"), lambda v: 0 if v >= 240 else 255)
    canvas = Image.new("RGB", (w, h), bg)
    canvas.paste(img, (0, 0), mask)
    img = canvas.rotate(rng.uniform(-15, 15) * strength, resample=Image.BILINEAR, fillcolor=bg)
    scale = 1 + rng.uniform(-0.25, 0.15) * strength
    sw, sh = int(w * scale), int(h * scale)
    img = img.resize((sw, sh), Image.BILINEAR)
    canvas = Image.new("RGB", (max(w, sw), max(h, sh)), bg)
    canvas.paste(img, ((canvas.width - sw) // 2, (canvas.height - sh) // 2))
    crop = rng.uniform(0.8, 1.0) if strength else 1.0
    cw, ch = int(canvas.width * crop), int(canvas.height * crop)
    left, top = rng.randint(0, canvas.width - cw), rng.randint(0, canvas.height - ch)
    img = canvas.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(1 + rng.uniform(-0.3, 0.3) * strength)
    if strength and rng.random() < 0.5:  # partial occlusion: a hand or shelf edge over 10-20 % of the photo
        ow, oh = int(w * rng.uniform(0.25, 0.45)), int(h * rng.uniform(0.25, 0.45))
        ox, oy = rng.choice([0, w - ow]), rng.randint(0, h - oh)
        ImageDraw.Draw(img).rectangle((ox, oy, ox + ow, oy + oh), fill=tuple(rng.randint(60, 200) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(35, 80))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def write_catalog(out_dir, products: list[SyntheticProduct], size: int = SIZE) -> Path:
    """Render products as PNGs + catalog.csv in the seeds' column layout (plus a brand column); returns the CSV path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    with open(out_dir / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["title", "category3_code", "full_price", "local_image_path", "brand"])
        for i, p in enumerate(products):
            rel = f"images/{i:04d}.png"
            render(p, size).save(out_dir / rel)
            w.writerow([p.title, p.category, f"{p.price:.2f}", rel, p.brand])
    return out_dir / "catalog.csv"


def queries(products: list[SyntheticProduct], views: int = 3, seed: int = 1, size: int = SIZE):
    """(image, product) pairs: `views` augmented photos of each product (seeded, reproducible)."""
    rng = random.Random(seed)
    return [(augment(render(p, size), rng), p) for p in products for _ in range(views)]
