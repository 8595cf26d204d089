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
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from edgesight.tasks.products import jpeg_roundtrip

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
    return jpeg_roundtrip(img, rng.randint(35, 80))


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


# -- the fine-grained apparel catalogue -------------------------------------------------------------
# One silhouette in several colourways, one colour in several patterns (the seeds' Burberry case: a trench
# coat in beige, black and navy, plain or checked). Catalogue photos are studio shots on a light background;
# queries are re-shoots: crops of 70-95 % of the item, +-12 deg tilt, blur, brightness 0.7-1.3, JPEG quality 35-75.
# Unlisted products are mostly look-alikes: a listed silhouette in a listed pattern with another listed
# colour, or in a colour the catalogue does not carry; plus whole silhouettes that are not listed.

GARMENT_COLOURS = [("Beige", (200, 178, 138)), ("Black", (28, 28, 32)), ("Navy", (30, 42, 84)), ("Burgundy", (112, 28, 44)),
                   ("Olive", (96, 102, 52)), ("Grey", (132, 132, 136)), ("Camel", (178, 128, 74)), ("Cream", (232, 224, 204)),
                   ("Red", (186, 34, 42)), ("Forest", (34, 84, 54)), ("Sky", (124, 170, 214)), ("Mustard", (208, 166, 44))]
PATTERNS = ["Solid", "Stripe", "Pinstripe", "Check", "Gingham", "Dot"]
# silhouette, category, base price, outline polygon on a 256 px canvas
SILHOUETTES = [
    ("T-Shirt", "apparel/tops", 29, [(70, 40), (100, 30), (128, 45), (156, 30), (186, 40), (225, 80), (200, 105), (180, 90),
                                     (180, 220), (76, 220), (76, 90), (56, 105), (31, 80)]),
    ("Shirt", "apparel/tops", 59, [(75, 35), (105, 25), (128, 40), (151, 25), (181, 35), (215, 150), (195, 158), (172, 90),
                                   (172, 232), (84, 232), (84, 90), (61, 158), (41, 150)]),
    ("Hoodie", "apparel/tops", 69, [(78, 55), (104, 45), (152, 45), (178, 55), (222, 170), (200, 178), (176, 110), (176, 232),
                                    (80, 232), (80, 110), (56, 178), (34, 170)]),
    ("Trench Coat", "apparel/outerwear", 189, [(80, 22), (128, 34), (176, 22), (205, 58), (222, 176), (201, 182), (186, 92),
                                               (194, 244), (62, 244), (70, 92), (55, 182), (34, 176), (51, 58)]),
    ("Dress", "apparel/dresses", 89, [(100, 24), (128, 36), (156, 24), (162, 60), (152, 100), (212, 236), (44, 236),
                                      (104, 100), (94, 60)]),
    ("Skirt", "apparel/bottoms", 49, [(86, 48), (170, 48), (216, 222), (40, 222)]),
    ("Trousers", "apparel/bottoms", 69, [(80, 22), (176, 22), (192, 244), (140, 244), (128, 92), (116, 244), (64, 244)]),
    ("Shorts", "apparel/bottoms", 39, [(70, 62), (186, 62), (206, 184), (138, 184), (128, 122), (118, 184), (50, 184)]),
    ("Scarf", "accessories/scarves", 45, [(92, 14), (164, 14), (164, 240), (92, 240)]),
    ("Tote Bag", "accessories/bags", 79, [(56, 92), (200, 92), (212, 232), (44, 232)]),
    ("Cap", "accessories/hats", 25, [(64, 150), (70, 112), (92, 82), (128, 70), (164, 82), (186, 112), (192, 150),
                                     (236, 168), (232, 180), (64, 170)]),
    ("Sneaker", "footwear/sneakers", 99, [(28, 170), (40, 120), (90, 110), (130, 82), (168, 86), (200, 128), (228, 148),
                                          (232, 178), (28, 184)]),
    ("Vest", "apparel/tops", 49, [(84, 40), (110, 30), (128, 72), (146, 30), (172, 40), (182, 104), (182, 222), (74, 222),
                                  (74, 104)]),
    ("Mini Skirt", "apparel/bottoms", 39, [(78, 84), (178, 84), (204, 176), (52, 176)]),
]


@dataclass
class Garment:
    title: str
    silhouette: str
    colour: str
    pattern: str
    category: str
    price: float
    listed: bool
    look_alike: str | None = None    # for an unlisted product: how it relates to the listed ones

    @property
    def brand(self) -> str:          # write_catalog's brand column
        return "EDGEWEAR"


def garment_catalogue(seed: int = 0, listed_silhouettes: int = 12) -> list[Garment]:
    """Listed garments (6 per listed silhouette: 3 solid colourways + one colour in two patterns + a second
    colour in the first pattern) and unlisted ones (2 look-alikes per listed silhouette, 2 products of each
    silhouette that is not listed). Seeded: the same seed gives the same catalogue on every machine."""
    rng = random.Random(seed)
    shapes = SILHOUETTES[:]
    rng.shuffle(shapes)
    out = []
    for n, (name, category, base, _) in enumerate(shapes):
        colours = rng.sample(GARMENT_COLOURS, 5)
        p0, p1 = rng.sample(PATTERNS[1:], 2)
        listed = n < listed_silhouettes
        combos = [(colours[0], "Solid", None), (colours[1], "Solid", None), (colours[2], "Solid", None),
                  (colours[0], p0, None), (colours[0], p1, None), (colours[3], p0, None)] if listed else \
                 [(colours[0], "Solid", "silhouette not listed"), (colours[1], p0, "silhouette not listed")]
        if listed:
            combos += [(colours[1], p0, "listed colour, listed pattern, new combination"),
                       (colours[4], "Solid", "new colourway of a listed silhouette")]
        for (cname, _), pattern, how in combos:
            price = base * (1.15 if pattern != "Solid" else 1.0) * rng.uniform(0.95, 1.1)
            title = f"{name} {cname}" + ("" if pattern == "Solid" else f" {pattern}")
            out.append(Garment(title, name, cname, pattern, category, round(price) - 0.01, how is None, how))
    return out


def _bands(rgb, second, size: int, period: int, width: int, alpha: float) -> Image.Image:
    """Bands of the second colour both ways, blended over the ground: a check."""
    overlay = Image.new("RGB", (size, size), rgb)
    od = ImageDraw.Draw(overlay)
    for v in range(0, size, period):
        od.rectangle((v, 0, v + width, size), fill=second)
        od.rectangle((0, v, size, v + width), fill=second)
    return Image.blend(Image.new("RGB", (size, size), rgb), overlay, alpha)


def _pattern_fill(size: int, pattern: str, rgb) -> Image.Image:
    """A size x size swatch of the pattern: the ground colour with a contrasting secondary colour."""
    dark = sum(rgb) < 330
    second = (232, 224, 204) if dark else (34, 34, 40)
    img = Image.new("RGB", (size, size), rgb)
    d = ImageDraw.Draw(img)
    if pattern == "Stripe":          # breton: bold horizontal bands
        for y in range(0, size, 22):
            d.rectangle((0, y, size, y + 8), fill=second)
    elif pattern == "Pinstripe":     # thin vertical lines
        for x in range(0, size, 11):
            d.line((x, 0, x, size), fill=second, width=2)
    elif pattern == "Check":         # tartan: wide translucent bands both ways + a thin red line
        img = _bands(rgb, second, size, period=40, width=12, alpha=0.55)
        d = ImageDraw.Draw(img)
        for v in range(26, size, 40):
            d.line((v, 0, v, size), fill=(180, 30, 36), width=2)
            d.line((0, v, size, v), fill=(180, 30, 36), width=2)
    elif pattern == "Gingham":       # small even checks
        img = _bands(rgb, second, size, period=16, width=7, alpha=0.5)
    elif pattern == "Dot":           # polka dots on a staggered grid
        for j, y in enumerate(range(6, size, 18)):
            for x in range((j % 2) * 9 + 6, size, 18):
                d.ellipse((x - 4, y - 4, x + 4, y + 4), fill=second)
    return img


def render_garment(g: Garment, size: int = SIZE) -> Image.Image:
    """A studio catalogue photo: the garment's silhouette filled with its colourway and pattern, seams
    and a soft fold shading, on a light background."""
    shape = next(s for s in SILHOUETTES if s[0] == g.silhouette)
    rgb = dict(GARMENT_COLOURS)[g.colour]
    s = size / 256
    poly = [(x * s, y * s) for x, y in shape[3]]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    fill = _pattern_fill(size, g.pattern, rgb)
    shade = Image.linear_gradient("L").resize((size, size)).rotate(90)   # light from the left
    fill = Image.composite(fill, Image.eval(fill, lambda v: int(v * 0.82)), shade)
    img = Image.new("RGB", (size, size), (246, 246, 243))
    img.paste(fill, (0, 0), mask)
    d = ImageDraw.Draw(img)
    seam = tuple(max(0, int(c * 0.6)) for c in rgb)
    d.polygon(poly, outline=(70, 70, 70))
    cx = size // 2
    if g.silhouette in ("Shirt", "Trench Coat"):      # placket and buttons
        d.line((cx, 40 * s, cx, 228 * s), fill=seam, width=2)
        for y in range(60, 220, 28):
            d.ellipse((cx + 5 * s, y * s, cx + 11 * s, (y + 6) * s), fill=(60, 50, 40))
    if g.silhouette == "Trench Coat":                  # belt
        d.rectangle((70 * s, 128 * s, 186 * s, 140 * s), fill=seam)
    if g.silhouette == "Hoodie":                       # hood and pocket
        d.ellipse((100 * s, 22 * s, 156 * s, 70 * s), fill=seam)
        d.rectangle((100 * s, 170 * s, 156 * s, 205 * s), outline=seam, width=2)
    if g.silhouette == "Tote Bag":                     # handles
        d.arc((84 * s, 36 * s, 172 * s, 140 * s), 180, 360, fill=seam, width=int(7 * s))
    if g.silhouette == "Sneaker":                      # sole and laces
        d.rectangle((28 * s, 176 * s, 232 * s, 190 * s), fill=(240, 240, 240), outline=(90, 90, 90))
        for x in range(104, 160, 12):
            d.line((x * s, 96 * s, (x + 8) * s, 112 * s), fill=(240, 240, 240), width=2)
    if g.silhouette in ("Trousers", "Shorts", "Skirt", "Mini Skirt"):   # waistband
        y0 = min(y for _, y in poly)
        d.line((min(x for x, _ in poly) + 4, y0 + 10 * s, max(x for x, _ in poly) - 4, y0 + 10 * s), fill=seam, width=3)
    if g.silhouette == "Scarf":                        # fringe
        for x in range(94, 164, 6):
            d.line((x * s, 240 * s, x * s, 252 * s), fill=rgb, width=2)
    return img


def reshoot(img: Image.Image, rng: random.Random) -> Image.Image:
    """A query photo of a catalogue item as the fine-grained benchmark defines it: tilt +-12 deg, a square
    crop of 70-95 % of the item's extent (so edges of the silhouette are cut and the fabric dominates), blur
    (radius 0-1.5), brightness x0.7-1.3, JPEG quality 35-75."""
    from PIL import ImageChops, ImageFilter

    w, h = img.size
    bg = img.getpixel((0, 0))
    img = img.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, fillcolor=bg)
    diff = ImageChops.difference(img, Image.new("RGB", img.size, bg)).convert("L").point(lambda v: 255 if v > 12 else 0)
    x0, y0, x1, y1 = diff.getbbox() or (0, 0, w, h)
    side = max(8, int(rng.uniform(0.70, 0.95) * max(x1 - x0, y1 - y0)))
    cx, cy = rng.randint(x0 + side // 2, max(x0 + side // 2, x1 - side // 2)), rng.randint(y0 + side // 2, max(y0 + side // 2, y1 - side // 2))
    img = img.crop((cx - side // 2, cy - side // 2, cx + side // 2, cy + side // 2)).resize((w, h), Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    return jpeg_roundtrip(img, rng.randint(35, 75))


def garment_queries(garments: list[Garment], views: int, seed: int) -> list:
    """(photo, garment) pairs: `views` re-shoots of each garment, seeded."""
    rng = random.Random(seed)
    return [(reshoot(render_garment(g), rng), g) for g in garments for _ in range(views)]


def write_garment_catalog(out_dir, garments: list[Garment], size: int = SIZE) -> Path:
    """Render the listed garments + catalog.csv (title, category3_code, full_price, local_image_path, colour, pattern)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    with open(out_dir / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["title", "category3_code", "full_price", "local_image_path", "colour", "pattern"])
        for i, g in enumerate(garments):
            rel = f"images/{i:04d}.png"
            render_garment(g, size).save(out_dir / rel)
            w.writerow([g.title, g.category, f"{g.price:.2f}", rel, g.colour, g.pattern])
    return out_dir / "catalog.csv"
