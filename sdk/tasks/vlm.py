"""Generative vision-language path (issue 15): a bundle of kind "vlm" on the runtime its format names
(runtime.open_vlm): GGUF text + mmproj through llama.cpp's libmtmd (runtime/mtmd.py), or ONNX graphs through
onnxruntime and the numpy generation loop (runtime/onnx_vlm.py).

    vlm = VLMModel.from_pretrained(bundle)                     # backend= / device= / threads= as every task
    vlm.generate(image, "What is this product?")               # greedy
    vlm.generate(image, prompt, temperature=0.7, seed=3)         # seeded sampling (reproducible)
    vlm.generate(image, prompt, grammar=product_grammar(vlm))    # constrained (GBNF on gguf, Lark on onnx)

Beam search is not available on llama.cpp's Python binding: greedy and sampling only (the same on ONNX).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..bundle import Bundle
from ..errors import BundleError, InputError, VLMPairError  # noqa: F401  (VLMPairError: raised by the GGUF runtime)
from ..images import load_image
from ..runtime import Generation, open_vlm
from .products import ProductResult


def is_vlm_bundle(path) -> bool:
    """Whether `path` is a bundle directory of kind "vlm" (ProductRecognizer and Captioner hand those to this module)."""
    return path is not None and (Path(path) / "edgesight.json").is_file() and Bundle.load(path, verify=False).kind == "vlm"


class VLMModel:
    """A loaded VLM bundle: `generate(image, prompt, ...) -> Generation` on the bundle's runtime (`engine`)."""

    def __init__(self, bundle: Bundle, *, threads: int | None = None, backend: str | None = None, device: str = "cpu",
                 **kw):
        if bundle.kind != "vlm":
            raise BundleError(f"{bundle.path}: bundle kind {bundle.kind!r} is not 'vlm'")
        self.bundle = bundle
        self.engine = open_vlm(bundle, backend=backend, threads=threads, device=device, **kw)
        self.backend, self.supports_grammar = self.engine.backend, self.engine.supports_grammar
        self.grammar_syntax = self.engine.grammar_syntax
        self.max_new_tokens = self.engine.max_new_tokens

    @classmethod
    def from_pretrained(cls, path, **kw) -> "VLMModel":
        return cls(Bundle.load(path), **kw)

    def generate(self, image, prompt: str, **kw) -> Generation:
        return self.engine.generate(image, prompt, **kw)


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
# The same answer for llguidance (the ONNX runtime): it lexes a character-only rule greedily, so a GBNF title
# of "[^\n]" characters would swallow ", Category: " and never end; the lazy title ends at the first
# ", Category: " (as parse_answer reads it) and may hold commas, like the GBNF one.
PRODUCT_LARK = r"""%llguidance {}
start: " "? "Product: " title CODE ", Full Price: " PRICE
title[lazy]: /[^\n]{1,120}, Category: /
CODE: /[A-Za-z0-9_ \/&-]{1,40}/
PRICE: /[0-9]{1,6}(\.[0-9]{1,2})?/
"""

TITLE_MAX, CODE_RE, PRICE_MAX = 120, re.compile(r"[A-Za-z0-9_ /&-]{1,40}"), 999_999.99
ANSWER_MAX_TOKENS = 192


def product_grammar(model) -> str | None:
    """The seed-answer grammar in the syntax `model` (a VLMModel or runtime) takes; None if it takes none."""
    if not model.supports_grammar:
        return None
    return PRODUCT_LARK if model.grammar_syntax == "lark" else PRODUCT_GRAMMAR


def format_price(price: float) -> str:
    """12.0 -> "12", 12.5 -> "12.5", 129.99 -> "129.99" (what the grammar's price can write)."""
    return f"{round(float(price), 2):.2f}".rstrip("0").rstrip(".")


def answer_problem(title: str, category: str, price: float) -> str | None:
    """Why (title, category, price) cannot be the generated answer under PRODUCT_GRAMMAR, or None."""
    if not title or "\n" in title or len(title) > TITLE_MAX:
        return f"title must be one line of 1-{TITLE_MAX} characters"
    if ", Category: " in title:   # the answer would parse at the first one (and the Lark twin ends the title there)
        return "title must not contain ', Category: '"
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
    """ProductRecognizer's VLM path: the seed's answer string, generated under the product grammar (GBNF on GGUF,
    its Lark twin on ONNX: it always parses unless max_new_tokens cuts it), parsed into title / category / price,
    the raw text kept; an answer that does not parse is `unknown`. A free-form prompt (e.g. "what is the price in
    6.5?") is answered without the grammar (raw text; parsed fields when it happens to follow the format)."""

    def __init__(self, model: VLMModel):
        self.model = model

    @classmethod
    def from_pretrained(cls, path, **kw):
        return cls(VLMModel.from_pretrained(path, **kw))

    def __call__(self, image, prompt: str | None = None, *, temperature: float = 0.0, seed: int | None = None,
                 max_new_tokens: int | None = None) -> VLMProductResult | list[VLMProductResult]:
        if isinstance(image, (list, tuple)):   # a batch (edgesight batch, serve): one generation per photo
            images = [load_image(i) for i in image]   # every photo checked before any generation (a bad one costs none)
            return [self(i, prompt, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens) for i in images]
        # under the grammar the answer is at most ~180 tokens (a 120-character title, a 40-character code, a
        # price); a trained model ends it far earlier, but a cut answer would not parse
        gen = self.model.generate(image, prompt or SEED_PROMPT, grammar=product_grammar(self.model) if prompt is None else None,
                                  temperature=temperature, seed=seed,
                                  max_new_tokens=max_new_tokens or (ANSWER_MAX_TOKENS if prompt is None else 64))
        parsed = parse_answer(gen.text)
        if parsed is None:
            return VLMProductResult(None, None, None, 0.0, True, [], raw=gen.text, prompt=prompt or SEED_PROMPT,
                                    unknown_reason="the answer does not follow 'Product: ..., Category: ..., Full Price: ...'")
        return VLMProductResult(parsed["title"], parsed["category"], parsed["price"], 0.0, False, [], raw=gen.text,
                                prompt=prompt or SEED_PROMPT)

    RETRIEVAL_OPTIONS = ("catalog", "save_index", "ocr", "threshold", "views", "colour_weight", "texture", "adapt",
                         "query_photos", "calibration_photos", "vlm")

    def run_cli(self, args) -> dict:
        """`edgesight products --model VLM_BUNDLE photo.jpg [--prompt TEXT]`: one result per photo."""
        given = [f"--{n.replace('_', '-')}" for n in self.RETRIEVAL_OPTIONS if getattr(args, n, None) not in (None, False)]
        if given:
            raise InputError(f"{', '.join(given)}: catalogue options; a vlm bundle answers from the photo alone "
                             "(the cascade: edgesight products --catalog CSV --vlm VLM_BUNDLE photo.jpg)")
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
        return self.after(image, self.retrieval(image), prompt, **kw)

    def after(self, image, r: ProductResult, prompt: str | None = None, **kw) -> VLMProductResult:
        """The cascade's answer for `image` given the catalogue's result `r` (a batch retrieved first: the CLI)."""
        if not r.unknown:
            return VLMProductResult(**{f.name: getattr(r, f.name) for f in fields(ProductResult)}, path="retrieval",
                                    retrieval=r)
        out = self.vlm(image, prompt, **kw)
        out.retrieval = r
        return out
