"""Captioning: image -> a beam-search caption, nucleus-sampled captions, and tags scored by CLIP.

    cap = edgesight.Captioner.from_pretrained("bundles/blip-int8")
    cap("photo.jpg")  # CaptionResult(caption="a cat on a couch", samples=[...5...], tags=[("cat", 0.61), ...])

The flow reads top to bottom (the seed's service, rebuilt for an edge CPU):
1. `load_image` (edgesight.images): path, bytes, PIL or numpy -> upright RGB, size-guarded;
2. `Preprocessing` (edgesight.images): resize / crop / rescale / normalise exactly as the Hugging Face
   image processor;
3. the caption model (bundle kind):
   - "blip": the vision encoder runs once per image and also yields every decoder layer's
     cross-attention K/V; the beam caption and the sampled captions then decode from it with the
     shared numpy loop (edgesight.generation), in lockstep: one decoder batch per token for all rows;
   - "vision-encoder-decoder": ViT+GPT2 and kin, exported by optimum, same flow;
   - "image-encoder": the offline default, a real ImageNet classifier (EfficientNet-Lite0) whose top
     classes are the tags and whose caption is a template over them (no captioning weights exist here);
4. `caption_words`: the words of all captions, stop-words removed, plurals singularised;
5. CLIP scores the words against the image (softmax over the words, as the seed did); the
   vocabulary's text embeddings ship in the bundle and new words are cached, so a request encodes
   only the image. Without CLIP in the bundle, a word's score is its share of the captions.
"""
from __future__ import annotations

import argparse
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BundleError, InputError
from ..generation import GenerationConfig, generate_ids
from ..images import Preprocessing, decode_base64, load_image
from ..inflect import singular
from ..tokenizer import TextTokenizer
from .base import Task
from .vlm import VLMCaptioner, is_vlm_bundle

DEFAULT_SAMPLES = 5  # the seed's total_captions_number


@dataclass
class CaptionResult:
    caption: str                                    # beam search: deterministic, usually the most accurate
    samples: list[str] = field(default_factory=list)  # nucleus sampling: varied wording (the tags' source)
    tags: list[tuple[str, float]] = field(default_factory=list)  # (word, score), best first

    def to_dict(self) -> dict:
        return {"caption": self.caption, "samples": list(self.samples), "tags": [[t, round(s, 6)] for t, s in self.tags]}

    def to_seed_dict(self) -> dict:
        """The seed service's response shape: tags, captions (the beam caption), english_captions."""
        return {"tags": [[t, round(s, 6)] for t, s in self.tags], "captions": [self.caption],
                "english_captions": list(self.samples)}


# ----------------------------------------------------------------------------- 3. caption models
class _BlipDecoder:
    """BLIP's decoder.onnx behind the generation loop's Decoder protocol. The image's cross K/V
    have batch 1 and are broadcast by the graph over all rows (beams, samples). `run` replaces the
    session call, so a _Lockstep member can route its calls into the shared batch."""

    def __init__(self, session, cross: dict[str, np.ndarray], meta: dict, run=None):
        self.session, self.cross, self.meta = session, cross, meta
        self.past_names = [f"past_{kv}_{i}" for i in range(meta["num_layers"]) for kv in ("key", "value")]
        self.empty = np.zeros((1, meta["num_heads"], 0, meta["head_dim"]), np.float32)
        self.run = run or self.run_session

    def run_session(self, ids: np.ndarray, past: list[np.ndarray]):
        out = self.session.run({"input_ids": ids, **dict(zip(self.past_names, past)), **self.cross})
        return out[0], out[1:]

    def prefill(self, prompts):
        ids = np.asarray(prompts, dtype=np.int64)   # every row starts from the same [bos] + prompt
        return self.run(ids, [np.repeat(self.empty, len(ids), axis=0)] * len(self.past_names))

    def step(self, tokens, state):
        return self.run(tokens.astype(np.int64)[:, None], state)

    def select(self, state, rows):
        return [p[rows] for p in state]


class _Lockstep:
    """Several generation loops (the beam caption and the sampled captions) run in threads and their
    decoder calls are merged into one batch per token: decoding here is memory-bandwidth-bound, so
    reading the weights once for 3 + 5 rows costs little more than once for 3. All loops advance one
    token per call from the same prompt, so their caches have equal lengths and concatenate."""

    def __init__(self, decoder: _BlipDecoder, members: int):
        self.decoder, self.active, self.cond = decoder, members, threading.Condition()
        self.pending, self.results, self.round = {}, {}, 0

    def member(self, who: int) -> _BlipDecoder:
        d = self.decoder
        return _BlipDecoder(d.session, d.cross, d.meta, run=lambda ids, past: self._call(who, ids, past))

    def _call(self, who, ids, past):
        with self.cond:
            self.pending[who] = (ids, past)
            current = self.round
            if len(self.pending) == self.active:
                self._run_pending()
            while self.round == current:
                self.cond.wait()
            result = self.results.pop(who)
        if isinstance(result, Exception):
            raise result
        return result

    def leave(self) -> None:
        """A loop finished (or failed): the others no longer wait for it."""
        with self.cond:
            self.active -= 1
            if self.pending and len(self.pending) == self.active:
                self._run_pending()

    def _run_pending(self) -> None:
        order = sorted(self.pending)
        parts = [self.pending[w] for w in order]
        try:
            logits, present = self.decoder.run_session(np.concatenate([ids for ids, _ in parts]),
                                                [np.concatenate(layer) for layer in zip(*(past for _, past in parts))])
            bounds = np.cumsum([0] + [len(ids) for ids, _ in parts])
            for w, a, b in zip(order, bounds[:-1], bounds[1:]):
                self.results[w] = (logits[a:b], [p[a:b] for p in present])
        except Exception as exc:             # hand the failure to every waiting loop
            for w in order:
                self.results[w] = exc
        self.pending.clear()
        self.round += 1
        self.cond.notify_all()


class _Blip:
    def __init__(self, task: Task):
        bundle = task.bundle
        self.meta, self.settings = bundle.manifest["blip"], Preprocessing.from_manifest(bundle.manifest)
        self.encoder, self.decoder = task.session("encoder"), task.session("decoder")
        # transformers' BertTokenizer decode: skip specials, then clean_up_tokenization spaces
        self.tokenizer = TextTokenizer.from_file(bundle.file("tokenizer"), clean_up_spaces=True)
        self.cross_names = list(self.encoder.outputs)

    def captions(self, image: Image.Image, configs: list[GenerationConfig]) -> list[list[str]]:
        """Encode once, then decode once per config (beam, samples) from the shared cross K/V."""
        cross = dict(zip(self.cross_names, self.encoder.run({"pixel_values": self.settings.apply(image)})))
        dec = _BlipDecoder(self.decoder, cross, self.meta)
        prompt = [self.meta["bos_token_id"], *self.meta.get("prompt_ids", [])]
        eos = [self.meta["eos_token_id"]]
        if len(configs) == 1:
            seqs = [generate_ids(dec, [prompt], configs[0], eos_token_ids=eos)[0]]
        else:
            seqs = self._lockstep(dec, prompt, configs, eos)
        return [[self.decode(prompt[1:] + s) for s in group] for group in seqs]

    @staticmethod
    def _lockstep(dec, prompt, configs, eos) -> list:
        group, results = _Lockstep(dec, len(configs)), [None] * len(configs)

        def run(i):
            try:
                results[i] = generate_ids(group.member(i), [prompt], configs[i], eos_token_ids=eos)[0]
            except Exception as exc:         # re-raised below, in the caller's thread
                results[i] = exc
            finally:
                group.leave()
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(configs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids).strip()


class _VisionEncoderDecoder:
    """optimum's image-to-text-with-past export (encoder_model + decoder[_merged]) on the ONNX
    backend's seq2seq model, started from the image encoder's output."""

    def __init__(self, task: Task):
        self.lm, self.settings = task.text_model(), Preprocessing.from_manifest(task.bundle.manifest)

    def captions(self, image: Image.Image, configs: list[GenerationConfig]) -> list[list[str]]:
        hidden = self.lm.sessions["encoder"].run({"pixel_values": self.settings.apply(image)})[0]
        start = int(self.lm.tokens["decoder_start"])
        return [[self.lm.decode(s) for s in generate_ids(self.lm.from_encoder_output(hidden), [[start]], cfg,
                                                          eos_token_ids=self.lm.eos, decoder_start_token_id=start)[0]]
                for cfg in configs]


class _Classifier:
    """The offline default: an ImageNet classifier (edgesight.encoder) -> top classes; the caption is
    a template over them. Clearly not a captioning model: the bundle and /v1/models say so."""

    def __init__(self, task: Task):
        from ..encoder import ImageEncoder

        bundle = task.bundle
        self.encoder = ImageEncoder.from_task(task)
        self.template = bundle.get("caption_template", "a photo of {article} {label}")

    def top(self, image: Image.Image, k: int) -> list[tuple[str, float]]:
        return self.encoder.classify([image], k)[0]

    def sentence(self, label: str) -> str:
        return self.template.format(article="an" if label[:1].lower() in "aeiou" else "a", label=label)


# ----------------------------------------------------------------------------- 4. words of the captions
STOP_WORDS = frozenset("""a an the and or but of in on at to for from with without by over under into onto
up down out off near next top front back side this that these those there here it its is are was were be
been being has have had do does did some any each two three four five several many few one other another
very while as than then who whom which what where when his her their our your my him them they we you she
he i me us picture image photo photograph shot view close closeup""".split())


def lemma(word: str) -> str:
    """Plural -> singular ('cats' -> 'cat', 'buses' -> 'bus', 'berries' -> 'berry'): edgesight.inflect."""
    return singular(word)


def caption_words(captions: list[str]) -> list[str]:
    """Distinct content words of the captions in order of first appearance."""
    words = (lemma(w) for c in captions for w in re.findall(r"[a-z]+", c.lower()))
    return list(dict.fromkeys(w for w in words if w not in STOP_WORDS and len(w) > 1))


# ----------------------------------------------------------------------------- 5. CLIP tag scores
def clip_text_embeddings(session, tokenizer, words: list[str]) -> np.ndarray:
    """L2-normalised CLIP text embeddings (len(words), dim); export and SDK share this function."""
    encs = tokenizer.encode_batch(words)
    width = max(len(e.ids) for e in encs)
    pad = encs[0].ids[-1]                           # CLIP pads with its end-of-text token
    ids = np.full((len(encs), width), pad, np.int64)
    mask = np.zeros((len(encs), width), np.int64)
    for i, e in enumerate(encs):
        ids[i, :len(e.ids)], mask[i, :len(e.ids)] = e.ids, 1
    emb = session.run({"input_ids": ids, "attention_mask": mask})[0]
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


class _Clip:
    def __init__(self, task: Task):
        bundle = task.bundle
        meta = bundle.manifest["clip"]
        self.settings, self.scale = Preprocessing.from_manifest(meta), float(meta["logit_scale"])
        self.image, self.text = task.session("clip_image"), task.session("clip_text")
        self.tokenizer = TextTokenizer.from_file(bundle.file("clip_tokenizer"), clean_up_spaces=False).tokenizer
        vocab = json.loads(bundle.file("tag_vocab").read_text(encoding="utf-8"))
        self.cache = dict(zip(vocab, np.load(bundle.file("tag_embeds"), allow_pickle=False)))
        self.lock = threading.Lock()                # the server calls from several threads

    def scores(self, image: Image.Image, words: list[str]) -> list[tuple[str, float]]:
        if not words:
            return []
        with self.lock:
            new = [w for w in words if w not in self.cache]
        if new:
            emb = clip_text_embeddings(self.text, self.tokenizer, new)
            with self.lock:
                self.cache.update(zip(new, emb))
        img = self.image.run({"pixel_values": self.settings.apply(image)})[0][0]
        img = img / np.linalg.norm(img)
        logits = self.scale * np.stack([self.cache[w] for w in words]) @ img
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return sorted(zip(words, map(float, p)), key=lambda t: -t[1])


def frequency_scores(words: list[str], captions: list[str]) -> list[tuple[str, float]]:
    """Without CLIP: a word's score is the share of captions that contain it (normalised to sum 1)."""
    counts = [sum(w in caption_words([c]) for c in captions) for w in words]
    total = sum(counts) or 1
    return sorted(((w, c / total) for w, c in zip(words, counts)), key=lambda t: -t[1])


# ----------------------------------------------------------------------------- the task
class Captioner(Task):
    """Image -> CaptionResult. `num_samples` nucleus captions (default 5) with a fixed `seed`."""

    name = "caption"

    @classmethod
    def from_pretrained(cls, path=None, *args, **kwargs):
        """A bundle of kind "vlm" (issue 15) captions by prompt: edgesight.tasks.vlm.VLMCaptioner (greedy + sampling)."""
        if is_vlm_bundle(path):
            keep = {k: kwargs[k] for k in ("num_samples", "seed") if k in kwargs}
            return VLMCaptioner.from_pretrained(path, threads=kwargs.get("threads"), **keep)
        return super().from_pretrained(path, *args, **kwargs)

    def __init__(self, bundle, backend=None, threads=None, device: str | None = "cpu", num_samples: int = DEFAULT_SAMPLES,
                 seed: int | None = 0):
        super().__init__(bundle, backend, threads, device)
        if bundle.kind == "blip":
            self.model = _Blip(self)
        elif bundle.kind == "vision-encoder-decoder":
            self.model = _VisionEncoderDecoder(self)
        elif bundle.kind == "image-encoder":
            self.model = _Classifier(self)
        else:
            raise BundleError(f"{bundle.path}: caption bundle kind {bundle.kind!r} is not supported "
                              "(expected 'blip', 'vision-encoder-decoder' or 'image-encoder'); re-export with edgesight.export.captioning")
        self.clip = _Clip(self) if bundle.has("clip_image") else None
        self.num_samples, self.seed = num_samples, seed
        gen = bundle.get("generation", {})
        self.beam = GenerationConfig.from_dict(gen.get("beam", {"num_beams": 3, "max_new_tokens": 20}))
        self.sample = GenerationConfig.from_dict(gen.get("sample", {"do_sample": True, "top_p": 0.9, "max_new_tokens": 20}))

    def generate_captions(self, image, **generation) -> list[str]:
        """Captions for one image with explicit generation settings (BLIP / vision encoder-decoder bundles)."""
        if isinstance(self.model, _Classifier):
            raise BundleError(f"{self.bundle.path}: generate_captions needs a captioning model, this bundle is "
                              f"an ImageNet classifier ({self.bundle.kind!r})")
        return self.model.captions(load_image(image), [GenerationConfig(**generation)])[0]

    def _run_batch(self, inputs: list, num_samples: int | None = None, seed: int | None = None, tags: bool = True) -> list:
        n = self.num_samples if num_samples is None else int(num_samples)
        if n < 0:
            raise InputError(f"num_samples must be >= 0, got {n}")
        seed = self.seed if seed is None else seed
        images = [load_image(x) for x in inputs]          # all inputs checked before any model runs
        return [self._one(img, n, seed, tags) for img in images]

    def _one(self, image: Image.Image, n: int, seed, tags: bool) -> CaptionResult:
        if isinstance(self.model, _Classifier):
            top = self.model.top(image, max(n, 5))
            samples = [self.model.sentence(label) for label, _ in top[:n]]
            return CaptionResult(self.model.sentence(top[0][0]), samples, top[:5] if tags else [])
        configs = [self.beam]
        if n:
            configs.append(GenerationConfig.from_dict({**self.sample.to_dict(), "num_return_sequences": n, "seed": seed}))
        outs = self.model.captions(image, configs)
        caption, samples = outs[0][0], (outs[1] if n else [])
        if not tags:
            return CaptionResult(caption, samples, [])
        words = caption_words([caption, *samples])
        scored = self.clip.scores(image, words) if self.clip else frequency_scores(words, [caption, *samples])
        return CaptionResult(caption, samples, scored)

    def info(self) -> dict:
        return super().info() | {"model": self.bundle.kind, "tag_scorer": "clip" if self.clip else
                                 ("classifier" if self.bundle.kind == "image-encoder" else "caption-frequency"),
                                 "num_samples": self.num_samples, **({"note": self.bundle.get("note")} if self.bundle.get("note") else {})}


# ----------------------------------------------------------------------------- CLI, demo, HTTP hooks
def _sample_inputs() -> list:
    """Real photos from scikit-image when installed (CC0), else a synthetic gradient."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec and spec.submodule_search_locations:
        data = Path(list(spec.submodule_search_locations)[0]) / "data"
        found = [str(data / f) for f in ("chelsea.png", "coffee.png") if (data / f).is_file()]
        if found:
            return found
    return [np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))]


SAMPLE_INPUTS = _sample_inputs()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--samples", type=int, default=None, help=f"nucleus-sampled captions (default {DEFAULT_SAMPLES})")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default 0)")
    parser.add_argument("--seed-format", action="store_true", help="print the seed service's JSON shape")


def run_cli(task: Captioner, args) -> list[dict]:
    results = task(list(args.images), num_samples=args.samples, seed=args.seed)
    return [r.to_seed_dict() if args.seed_format else r.to_dict() for r in results]


def from_json(payload) -> bytes:
    """HTTP body {"image": base64} (the seed's request) -> image bytes for the task."""
    if not isinstance(payload, dict) or "image" not in payload:
        raise InputError('caption request must be a JSON object {"image": "<base64 of the image file>"}')
    return decode_base64(payload["image"])
