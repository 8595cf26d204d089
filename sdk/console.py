"""The web console of `edgesight serve` (`GET /ui`; off with --no-ui): one static page, no build step, no
CDN, shipped in the wheel (sdk/static/). It calls the same `/v1/<task>` routes as any client and reads
bundle, precision and backend from `/v1/models`; the few routes here only serve what a browser cannot
get from those: the page itself, the tasks' sample inputs, and thumbnails of catalogue photos (by title,
the key a products match carries; never a local path).

    GET /ui, /ui/console.css, /ui/console.js   the page (open without the API key: it holds no data)
    GET /ui/samples                            {task: {"kind": "text"|"json"|"image", "samples": [...]}}
    GET /ui/samples/{task}/{i}                 a sample image's bytes
    GET /ui/catalog-photo?title=...            a JPEG thumbnail of that catalogue product's photo
"""
from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

from .errors import EdgesightError
from .registry import TASKS

ASSETS = {"/ui": ("console.html", "text/html; charset=utf-8"),
          "/ui/console.css": ("console.css", "text/css; charset=utf-8"),
          "/ui/console.js": ("console.js", "text/javascript; charset=utf-8")}
PAGE_ROUTES = frozenset(ASSETS)    # answered without the API key: the key is typed into this page
THUMBNAIL = 192                    # px, longest side of a catalogue thumbnail
# The page runs only its own script and talks only to this server.
HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                      "img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def asset(name: str) -> bytes:
    return resources.files("edgesight").joinpath("static", name).read_bytes()


def samples(tasks: dict) -> dict:
    """Each task's SAMPLE_INPUTS for the page: text and JSON as they are, images as names (fetched by index)."""
    out = {}
    for name, spec in TASKS.items():
        items = _images(name, tasks) if spec.inputs == "image" else list(getattr(spec.load_module(), "SAMPLE_INPUTS", []))
        out[name] = {"kind": spec.inputs, "samples": [_image_name(x, i) for i, x in enumerate(items)]
                     if spec.inputs == "image" else items}
    return out


def sample_image(name: str, tasks: dict, index: int) -> tuple[bytes, str] | None:
    """(bytes, media type) of one sample image, or None when there is none."""
    if name not in TASKS or TASKS[name].inputs != "image":
        return None
    items = _images(name, tasks)
    if not 0 <= index < len(items):
        return None
    item = items[index]
    if isinstance(item, Path):
        return item.read_bytes(), _media_type(item)
    from .images import load_image   # a synthetic array sample (no scikit-image): sent as PNG

    buf = io.BytesIO()
    load_image(item).save(buf, "PNG")
    return buf.getvalue(), "image/png"


def _images(name: str, tasks: dict) -> list:
    """The sample images of an image task: the loaded bundle's own (`sample_query`) first, then the module's."""
    items = []
    task = tasks.get(name)
    if task is not None and task.bundle.has("sample_query"):
        items.append(task.bundle.file("sample_query").resolve())
    for x in getattr(TASKS[name].load_module(), "SAMPLE_INPUTS", []):
        if not isinstance(x, (str, Path)):
            items.append(x)
        elif Path(x).is_file() and Path(x).resolve() not in items:
            items.append(Path(x).resolve())
    return items


def _image_name(item, i: int) -> str:
    return item.name if isinstance(item, Path) else f"sample-{i}.png"


def _media_type(path: Path) -> str:
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
            ".gif": "image/gif", ".bmp": "image/bmp"}.get(path.suffix.lower(), "application/octet-stream")


def catalog_photo(task, title: str) -> bytes | None:
    """A JPEG thumbnail of the catalogue photo of the product titled `title`; None when there is none."""
    catalog = getattr(task, "catalog", None)
    if catalog is None or title not in catalog or not catalog.get(title).image:
        return None
    from .images import load_image

    try:
        image = load_image(catalog.get(title).image, min_side=THUMBNAIL)
    except (EdgesightError, OSError):     # a photo that vanished or broke since indexing: no thumbnail
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def add_routes(app, tasks: dict, error) -> None:
    """The console's routes on the FastAPI `app`; `error(status, message, kind)` makes the typed error body."""
    from fastapi.responses import JSONResponse, Response

    def page(file: str, media_type: str):
        return lambda: Response(asset(file), media_type=media_type, headers=HEADERS)

    for route, (file, media_type) in ASSETS.items():
        app.add_api_route(route, page(file, media_type), methods=["GET"], include_in_schema=False)

    # Plain `def` routes: FastAPI runs them in its thread pool, so decoding a photo never blocks the loop.
    @app.get("/ui/samples", include_in_schema=False)
    def ui_samples():
        return JSONResponse(samples(tasks))

    @app.get("/ui/samples/{name}/{index}", include_in_schema=False)
    def ui_sample_image(name: str, index: str):
        found = sample_image(name, tasks, int(index)) if index.isdigit() and len(index) < 6 else None
        if found is None:
            return error(404, f"no sample image {index} for task {name[:40]!r}", "NotFound")
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/ui/catalog-photo", include_in_schema=False)
    def ui_catalog_photo(title: str = ""):
        data = catalog_photo(tasks.get("products"), title)
        if data is None:
            return error(404, f"no catalogue photo for {title[:80]!r}", "NotFound")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})
