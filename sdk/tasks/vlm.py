"""Generative vision-language path (issue 15): a bundle of kind "vlm" (export/vlm.py: text GGUF + mmproj
GGUF) run by llama-cpp-python's MTMDChatHandler over libmtmd.

    vlm = VLMModel.from_pretrained(bundle)
    vlm.generate(image, "What is this product?")               # greedy
    vlm.generate(image, prompt, temperature=0.7, seed=3)         # seeded sampling (reproducible)
    vlm.generate(image, prompt, grammar=PRODUCT_GRAMMAR)         # constrained

Beam search is not available on llama.cpp's Python binding: greedy and sampling only.
"""
from __future__ import annotations

import base64
import io
import re
import threading
from dataclasses import dataclass, fields
from pathlib import Path

from ..bundle import Bundle
from ..errors import BackendError, BundleError, InputError
from ..images import load_image
from ..runtime import default_threads
from .products import ProductResult

PAIR_PREFIX = "edgesight-vlm-"


class VLMPairError(BundleError):
    """The bundle's mmproj (vision tower + connector) does not belong to its text model."""


def is_vlm_bundle(path) -> bool:
    """Whether `path` is a bundle directory of kind "vlm" (ProductRecognizer and Captioner hand those to this module)."""
    return path is not None and (Path(path) / "edgesight.json").is_file() and Bundle.load(path, verify=False).kind == "vlm"


# GGUF key/value types: (struct format, size) of the fixed-size ones; 8 = string, 9 = array
_GGUF_FIXED = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
               7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}


def _gguf_meta(path: Path, keys: tuple[str, ...]) -> dict:
    """The scalar / string values of `keys` from a GGUF header, read directly (gguf.GGUFReader parses every
    field, the 49k-entry vocabulary too: ~4 s per read for a SmolLM2-sized vocabulary). A header that
    cannot be read gives {} (check_pair then refuses the bundle)."""
    import mmap
    import struct

    want, out = set(keys), {}
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"GGUF":
                return {}
            n_kv = struct.unpack_from("<Q", m, 16)[0]
            pos = 24

            def string(pos):
                n = struct.unpack_from("<Q", m, pos)[0]
                return m[pos + 8:pos + 8 + n].decode("utf-8", "replace"), pos + 8 + n

            def skip(vtype, pos):
                if vtype in _GGUF_FIXED:
                    return pos + _GGUF_FIXED[vtype][1]
                if vtype == 8:
                    return pos + 8 + struct.unpack_from("<Q", m, pos)[0]
                if vtype == 9:
                    itype, count = struct.unpack_from("<IQ", m, pos)
                    pos += 12
                    if itype in _GGUF_FIXED:
                        return pos + count * _GGUF_FIXED[itype][1]
                    for _ in range(count):
                        pos = skip(itype, pos)
                    return pos
                raise ValueError(f"GGUF value type {vtype}")

            for _ in range(n_kv):
                key, pos = string(pos)
                vtype = struct.unpack_from("<I", m, pos)[0]
                pos += 4
                if key in want and vtype in _GGUF_FIXED:
                    out[key] = struct.unpack_from(_GGUF_FIXED[vtype][0], m, pos)[0]
                elif key in want and vtype == 8:
                    out[key] = string(pos)[0]
                pos = skip(vtype, pos)
                if len(out) == len(want):
                    break
    except (OSError, ValueError, struct.error):
        return {}
    return out


def check_pair(bundle: Bundle) -> None:
    """The mmproj and the text GGUF carry the same pair id as the manifest, and the projector's output
    width is the text model's width; otherwise VLMPairError."""
    want = (bundle.get("vlm") or {}).get("pair")
    if not isinstance(want, str) or not want:
        raise VLMPairError(f"{bundle.path}: manifest lacks vlm.pair (the id tying mmproj to text model); re-export")
    text = _gguf_meta(bundle.file("model"), ("general.name", "general.architecture"))
    arch = text.get("general.architecture", "")
    text.update(_gguf_meta(bundle.file("model"), (f"{arch}.embedding_length",)))
    proj = _gguf_meta(bundle.file("mmproj"), ("general.name", "clip.vision.projection_dim", "general.type"))
    if proj.get("general.type") != "mmproj":
        raise VLMPairError(f"{bundle.file('mmproj')}: not an mmproj GGUF (general.type={proj.get('general.type')!r})")
    got_text, got_proj = text.get("general.name", ""), proj.get("general.name", "")
    if got_text != PAIR_PREFIX + want or got_proj != PAIR_PREFIX + want:
        raise VLMPairError(f"{bundle.path}: the mmproj does not belong to this text model (pair id: manifest {want}, "
                           f"text {got_text or '-'}, mmproj {got_proj or '-'}); export text model and mmproj together "
                           "with `edgesight export`")
    width = text.get(f"{arch}.embedding_length")
    if width is not None and proj.get("clip.vision.projection_dim") not in (None, width):
        raise VLMPairError(f"{bundle.path}: mmproj projects to {proj['clip.vision.projection_dim']} but the text model "
                           f"is {width} wide")


@dataclass
class Generation:
    text: str
    tokens: int
    finish_reason: str = ""


class VLMModel:
    """A loaded VLM bundle. One llama.cpp context, guarded by a lock (calls are serialised)."""

    def __init__(self, bundle: Bundle, *, threads: int | None = None, n_ctx: int = 2048):
        if bundle.kind != "vlm":
            raise BundleError(f"{bundle.path}: bundle kind {bundle.kind!r} is not 'vlm'")
        check_pair(bundle)
        from .._optional import require

        require("llama_cpp", "gguf")
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import MTMDChatHandler

        self.bundle = bundle
        n = default_threads(threads)
        try:
            self.handler = MTMDChatHandler(clip_model_path=str(bundle.file("mmproj")), verbose=False, use_gpu=False)
            self.llm = Llama(model_path=str(bundle.file("model")), chat_handler=self.handler, n_ctx=n_ctx,
                             n_threads=n, n_threads_batch=n, verbose=False, seed=0)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{bundle.path}: llama.cpp could not load the VLM ({exc})") from exc
        self.max_new_tokens = int((bundle.get("generation") or {}).get("max_new_tokens", 48))
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path, **kw) -> "VLMModel":
        return cls(Bundle.load(path), **kw)

    def image_url(self, image) -> str:
        """Any image edgesight accepts (path, bytes, PIL, array) -> a PNG data URL; bad input -> ImageError."""
        img = load_image(image)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def generate(self, image, prompt: str, *, max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, grammar: str | None = None) -> Generation:
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, not {type(prompt).__name__}")
        url = self.image_url(image)
        kw = {}
        if grammar:
            from llama_cpp import LlamaGrammar

            kw["grammar"] = LlamaGrammar.from_string(grammar, verbose=False)
        greedy = temperature <= 0
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                              {"type": "text", "text": prompt}]}]
        with self._lock:
            self.llm.reset()
            try:
                out = self.llm.create_chat_completion(
                    messages=msgs, max_tokens=max_new_tokens or self.max_new_tokens,
                    temperature=0.0 if greedy else temperature, top_k=1 if greedy else top_k, top_p=1.0 if greedy else top_p,
                    min_p=0.0, repeat_penalty=1.0, seed=seed if seed is not None else 0, **kw)
            except ValueError as exc:
                raise BackendError(f"llama.cpp VLM generation failed: {exc}") from exc
        choice = out["choices"][0]
        return Generation(text=choice["message"]["content"] or "", tokens=int(out["usage"]["completion_tokens"]),
                          finish_reason=choice.get("finish_reason") or "")


# --- products: the seed's answer format -------------------------------------------------------------------

# Seeds 002/004's question and answer (`edgesight train products --family vlm` trains on exactly these).
SEED_PROMPT = "What is shown in this image?"
ANSWER_FORMAT = "Product: {title}, Category: {category}, Full Price: {price}"
_ANSWER_RE = re.compile(r"Product: (?P<title>.*?), Category: (?P<category>[^,]*?), Full Price: (?P<price>[0-9]+(?:\.[0-9]+)?)\s*$",
                        re.S)
# llama.cpp GBNF: the generated answer always has the seed's shape (a title on one line, a category code
# without commas, a decimal price), so it always parses; an optional leading space (chat templates that
# write "Assistant: " before the answer).
PRODUCT_GRAMMAR = r"""
root ::= " "? "Product: " title ", Category: " code ", Full Price: " price
title ::= [^\n] [^\n]{0,119}
code ::= [A-Za-z0-9_ /&-]{1,40}
price ::= [0-9]{1,6} ("." [0-9]{1,2})?
"""
TITLE_MAX, CODE_RE, PRICE_MAX = 120, re.compile(r"[A-Za-z0-9_ /&-]{1,40}"), 999_999.99
ANSWER_MAX_TOKENS = 192


def format_price(price: float) -> str:
    """12.0 -> "12", 12.5 -> "12.5", 129.99 -> "129.99" (what the grammar's price can write)."""
    return f"{round(float(price), 2):.2f}".rstrip("0").rstrip(".")


def answer_problem(title: str, category: str, price: float) -> str | None:
    """Why (title, category, price) cannot be the generated answer under PRODUCT_GRAMMAR, or None."""
    if not title or "\n" in title or len(title) > TITLE_MAX:
        return f"title must be one line of 1-{TITLE_MAX} characters"
    if not CODE_RE.fullmatch(category or ""):
        return "category3_code must be 1-40 characters of letters, digits, space and _ / & -"
    if price is None or not 0 <= price <= PRICE_MAX:
        return f"full_price must be a number from 0 to {PRICE_MAX}"
    return None


def format_answer(title: str, category: str, price: float) -> str:
    return ANSWER_FORMAT.format(title=title, category=category, price=format_price(price))


def parse_answer(text: str) -> dict | None:
    m = _ANSWER_RE.search(text.strip())
    if not m:
        return None
    return {"title": m.group("title").strip(), "category": m.group("category").strip(), "price": float(m.group("price"))}


@dataclass
class VLMProductResult(ProductResult):
    """A ProductResult answered by the VLM (path "vlm"), or by the catalogue in a ProductCascade (path
    "retrieval"). A generated answer has no similarity (score 0.0) and no matches; `raw` is the generated
    text (None when the catalogue answered), `retrieval` the catalogue's result when it was asked first."""
    path: str = "vlm"
    raw: str | None = None
    prompt: str | None = None
    retrieval: ProductResult | None = None

    def to_dict(self) -> dict:
        return {**super().to_dict(), "path": self.path, "raw": self.raw, "prompt": self.prompt,
                "retrieval": self.retrieval.to_dict() if self.retrieval is not None else None}


class VLMProductRecognizer:
    """ProductRecognizer's VLM path: the seed's answer string, generated under PRODUCT_GRAMMAR, parsed into
    title / category / price, the raw text kept. A free-form prompt (e.g. "what is the price in 6.5?") is
    answered without the grammar (raw text; parsed fields when it happens to follow the format)."""

    def __init__(self, model: VLMModel):
        self.model = model

    @classmethod
    def from_pretrained(cls, path, **kw):
        return cls(VLMModel.from_pretrained(path, **kw))

    def __call__(self, image, prompt: str | None = None, *, temperature: float = 0.0, seed: int | None = None,
                 max_new_tokens: int | None = None) -> VLMProductResult:
        constrained = prompt is None
        # under the grammar the answer is at most ~180 tokens (a 120-character title, a 40-character code, a
        # price); a trained model ends it far earlier, but a cut answer would not parse
        gen = self.model.generate(image, prompt or SEED_PROMPT, grammar=PRODUCT_GRAMMAR if constrained else None,
                                  temperature=temperature, seed=seed,
                                  max_new_tokens=max_new_tokens or (ANSWER_MAX_TOKENS if constrained else 64))
        parsed = parse_answer(gen.text)
        if parsed is None:
            return VLMProductResult(None, None, None, 0.0, True, [], raw=gen.text, prompt=prompt or SEED_PROMPT,
                                    unknown_reason="the answer does not follow 'Product: ..., Category: ..., Full Price: ...'")
        return VLMProductResult(parsed["title"], parsed["category"], parsed["price"], 0.0, False, [], raw=gen.text,
                                prompt=prompt or SEED_PROMPT)

    RETRIEVAL_OPTIONS = ("catalog", "save_index", "ocr", "threshold", "views", "colour_weight", "texture", "adapt")

    def run_cli(self, args) -> dict:
        """`edgesight products --model VLM_BUNDLE photo.jpg [--prompt TEXT]`: one result per photo."""
        given = [f"--{n.replace('_', '-')}" for n in self.RETRIEVAL_OPTIONS if getattr(args, n, None) not in (None, False)]
        if given:
            raise InputError(f"{', '.join(given)}: catalogue options; a vlm bundle answers from the photo alone "
                             "(ProductCascade combines the two in Python)")
        if not getattr(args, "images", None):
            raise InputError("give photo paths: edgesight products --model VLM_BUNDLE photo.jpg")
        return {"results": [dict(image=str(i), **self(i, getattr(args, "prompt", None)).to_dict()) for i in args.images]}


class VLMCaptioner:
    """Captioner's VLM path: the caption is the greedy answer to a caption prompt (llama.cpp's binding has no
    beam search, so `caption` is greedy, not beam), `samples` are nucleus samples with seeds seed, seed+1, ...
    (reproducible), tags are scored by word frequency over all of them (there is no CLIP in a VLM bundle)."""

    PROMPT = "Describe this image in one sentence."

    def __init__(self, model: VLMModel, num_samples: int = 5, seed: int | None = 0, top_p: float = 0.9,
                 temperature: float = 1.0, max_new_tokens: int = 30):
        self.model, self.num_samples, self.seed = model, num_samples, seed
        self.top_p, self.temperature, self.max_new_tokens = top_p, temperature, max_new_tokens

    @classmethod
    def from_pretrained(cls, path, threads=None, **kw):
        return cls(VLMModel.from_pretrained(path, threads=threads), **kw)

    def __call__(self, image, prompt: str | None = None, num_samples: int | None = None, seed: int | None = None,
                 tags: bool = True):
        from .captioning import CaptionResult, caption_words, frequency_scores

        n = self.num_samples if num_samples is None else int(num_samples)
        if n < 0:
            raise InputError(f"num_samples must be >= 0, got {n}")
        seed = self.seed if seed is None else seed
        image = load_image(image)          # checked once, before any generation
        prompt = prompt or self.PROMPT
        caption = self.model.generate(image, prompt, max_new_tokens=self.max_new_tokens).text.strip()
        samples = [self.model.generate(image, prompt, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                       top_p=self.top_p, seed=(seed or 0) + i).text.strip() for i in range(n)]
        scored = frequency_scores(caption_words([caption, *samples]), [caption, *samples]) if tags else []
        return CaptionResult(caption, samples, scored)


class ProductCascade:
    """Retrieval first (the catalogue: fast, exact prices); when it says `unknown`, the VLM answers.
    Both answers are a VLMProductResult whose `path` says which answered ("retrieval" | "vlm")."""

    def __init__(self, retrieval, vlm: VLMProductRecognizer):
        self.retrieval, self.vlm = retrieval, vlm

    def __call__(self, image, prompt: str | None = None, **kw) -> VLMProductResult:
        r = self.retrieval(image)
        if not r.unknown:
            return VLMProductResult(**{f.name: getattr(r, f.name) for f in fields(ProductResult)}, path="retrieval",
                                    retrieval=r)
        out = self.vlm(image, prompt, **kw)
        out.retrieval = r
        return out
