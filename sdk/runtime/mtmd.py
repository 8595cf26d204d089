"""llama.cpp's multimodal path (libmtmd through llama-cpp-python's MTMDChatHandler) for bundles of kind "vlm",
format "gguf" (export/vlm.py: text GGUF + mmproj GGUF). runtime/llamacpp.py's `load_vlm` opens it.

    vlm = MtmdVLM(bundle, threads=2)
    vlm.generate(image, "What is this product?")               # greedy
    vlm.generate(image, prompt, temperature=0.7, seed=3)         # seeded sampling (reproducible)
    vlm.generate(image, prompt, grammar=GBNF)                    # constrained

Beam search is not available on llama.cpp's Python binding: greedy and sampling only. The mmproj and the text
GGUF must carry the pair id the manifest records (check_pair), else VLMPairError.
"""
from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

from ..errors import BackendError, BundleError, InputError, VLMPairError
from ..images import load_image
from . import Generation

PAIR_PREFIX = "edgesight-vlm-"


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


def check_pair(bundle) -> None:
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


class MtmdVLM:
    """A loaded GGUF VLM bundle. One llama.cpp context, guarded by a lock (calls are serialised)."""

    backend = "gguf"
    supports_grammar, grammar_syntax = True, "gbnf"

    def __init__(self, bundle, *, threads: int, device: str = "cpu", n_ctx: int = 2048):
        if bundle.kind != "vlm":
            raise BundleError(f"{bundle.path}: bundle kind {bundle.kind!r} is not 'vlm'")
        check_pair(bundle)
        from .._optional import require

        require("llama_cpp", "gguf")
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import MTMDChatHandler

        self.bundle = bundle
        gpu = device != "cpu"
        try:
            self.handler = MTMDChatHandler(clip_model_path=str(bundle.file("mmproj")), verbose=False, use_gpu=gpu)
            self.llm = Llama(model_path=str(bundle.file("model")), chat_handler=self.handler, n_ctx=n_ctx,
                             n_threads=threads, n_threads_batch=threads, verbose=False, seed=0,
                             n_gpu_layers=-1 if gpu else 0)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{bundle.path}: llama.cpp could not load the VLM ({exc})") from exc
        self.max_new_tokens = int((bundle.get("generation") or {}).get("max_new_tokens", 48))
        self._lock = threading.Lock()
        self._grammars: dict[str, object] = {}

    def _grammar(self, text: str):
        if text not in self._grammars:
            import llama_cpp

            from .llamacpp import gbnf_grammar
            self._grammars[text] = gbnf_grammar(llama_cpp.llama_model_get_vocab(self.llm.model), text)
        return self._grammars[text]

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
            kw["grammar"] = self._grammar(grammar)
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
