"""What runs inside a worker: the edgesight SDK and its peers, each behind the same small surface.

A factory takes JSON params and returns a `Runner`: `call()` runs the next input (cycling through
`inputs`, so prefix caches see realistic traffic, not one repeated prompt), `batch()` runs the first
`batch_size` inputs through the implementation's list API (peers without one loop), `outputs()`
runs the eval inputs. `items()` counts what the last call produced (tokens), outside the timing.

Peers: the seeds' path (transformers fp32, + PeftModel when there is an adapter), optimum's
ORTModel* on the same ONNX files, raw llama-cpp-python on the same GGUF. At task level the peers
replay exactly the prompts and generation settings the SDK task sent to its model (recorded once at
load), so SDK / peer is the cost of everything the SDK adds around the same model work.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable


class Runner:
    def __init__(self, run: Callable[[list], tuple[list, int | None]], params: dict,
                 count: Callable[[list], int] = len):
        self.run = run      # inputs -> (outputs, generated items, or None: count them from the outputs)
        self.count = count  # e.g. len: one item per output (an image, a sentence)
        self.inputs = params["inputs"]
        self.eval_inputs = params.get("eval_inputs", self.inputs)
        self.batch_size = params.get("batch_size", 4)
        self.i, self.last = 0, ([], 0)

    def call(self) -> None:
        x = self.inputs[self.i % len(self.inputs)]
        self.i += 1
        self.last = self.run([x])

    def items(self) -> int:
        outputs, n = self.last
        return self.count(outputs) if n is None else n

    def batch(self) -> int:
        batch = (self.inputs * self.batch_size)[:self.batch_size]
        self.run(batch)
        return len(batch)

    def outputs(self) -> list:
        return self.run(self.eval_inputs)[0]


def _loop(gen) -> Callable[[list], tuple[list, int]]:
    """Run `gen(prompt) -> (text, tokens)` over a list, one at a time (as the seeds do)."""
    def run(prompts):
        done = [gen(p) for p in prompts]
        return [t for t, _ in done], sum(n for _, n in done)
    return run


# --- the backends' own generation, shared by model-level and task-level peers -------------------

def _hf_kwargs(config) -> dict:
    kw = dict(max_new_tokens=config.max_new_tokens, num_beams=config.num_beams, do_sample=config.do_sample,
              no_repeat_ngram_size=config.no_repeat_ngram_size, length_penalty=config.length_penalty,
              early_stopping=config.early_stopping, repetition_penalty=config.repetition_penalty)
    if config.do_sample:
        kw.update(temperature=config.temperature, top_k=config.top_k or None, top_p=config.top_p)
    if config.eos_token_ids:
        kw["eos_token_id"] = list(config.eos_token_ids)
    return kw


def hf_generator(model, tok, seq2seq: bool = False):
    """transformers/optimum generate(): gen(prompt, config) -> (text, new tokens)."""
    import torch

    def gen(prompt, config):
        if config.do_sample and config.seed is not None:
            torch.manual_seed(config.seed)
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                 else model.generation_config.eos_token_id, **_hf_kwargs(config))
        new = out[0, 1:] if seq2seq else out[0, enc["input_ids"].shape[1]:]
        return tok.decode(new, skip_special_tokens=True).strip(), int(new.numel())
    return gen


def llama_generator(path, threads: int, n_ctx: int | None = None, lora: str | None = None, tokenizer=None):
    """Raw llama-cpp-python: tokenize, generate to EOS / the token limit, detokenize. With `tokenizer`
    (the bundle's tokenizer.json, as the SDK uses) text <-> ids go through it: llama.cpp's own tokenizer
    aborts the process on GGUFs converted from a dequantized SmolLM2 (std::out_of_range)."""
    from llama_cpp import Llama, LlamaGrammar

    llm = Llama(model_path=str(path), lora_path=lora, n_threads=threads, n_threads_batch=threads,
                n_ctx=n_ctx or 2048, n_batch=512, verbose=False, seed=0)
    grammars = {}
    tok = None
    if tokenizer:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(tokenizer))

    def gen(prompt, config):
        ids = tok.encode(prompt).ids if tok else llm.tokenize(prompt.encode(), add_bos=True, special=True)
        eos = set(config.eos_token_ids) or {llm.token_eos()}
        kw = dict(temp=0.0, top_k=1) if not config.do_sample else dict(temp=config.temperature, top_k=config.top_k,
                                                                          top_p=config.top_p)
        if config.grammar:
            kw["grammar"] = grammars.get(config.grammar) or grammars.setdefault(
                config.grammar, LlamaGrammar.from_string(config.grammar, verbose=False))
        new = []
        for token in llm.generate(ids, repeat_penalty=config.repetition_penalty, reset=True, **kw):
            if token in eos:
                break
            new.append(token)
            if len(new) == config.max_new_tokens:
                break
        text = tok.decode(new, skip_special_tokens=True) if tok else llm.detokenize(new).decode(errors="replace")
        return text.strip(), len(new)
    return gen


def seeds_generator(base, adapter, threads: int, seq2seq: bool = False):
    """The seeds' path: transformers fp32 on CPU (a .gguf base is dequantized, as training does) + PeftModel."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    torch.set_num_threads(threads)
    base = Path(base)
    where, kw = (base.parent, {"gguf_file": base.name}) if base.suffix == ".gguf" else (base, {})
    tok = AutoTokenizer.from_pretrained(where, **kw)
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(where, dtype=torch.float32, **kw)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    return hf_generator(model.eval(), tok, seq2seq)


def optimum_model(onnx_dir, threads: int, seq2seq: bool = False):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM
    from transformers import AutoTokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = threads
    cls = ORTModelForSeq2SeqLM if seq2seq else ORTModelForCausalLM
    model = cls.from_pretrained(onnx_dir, session_options=so, use_cache=True, provider="CPUExecutionProvider")
    return hf_generator(model, AutoTokenizer.from_pretrained(onnx_dir), seq2seq)


def _greedy(params):
    """Greedy up to max_new_tokens, unless the case gives its own `generation` settings (e.g. beams)."""
    from edgesight.generation import GenerationConfig
    return GenerationConfig.from_dict({"max_new_tokens": params["max_new_tokens"], **params.get("generation", {})})


# --- model level: one causal LM, the SDK and three peers ----------------------------------------

def sdk_text(params: dict) -> Runner:
    """edgesight's TextModel (ONNX numpy loop or llama.cpp) on a bundle."""
    from edgesight.runtime import open_text_model
    from edgesight.bundle import Bundle

    model = open_text_model(Bundle.load(params["bundle"]), threads=params["threads"])
    config = _greedy(params)

    def run(prompts):  # what TextModel.generate does, keeping the ids to count tokens
        ids = [seqs[0] for seqs in model.generate_ids(prompts, config)]
        return [model.decode(x) for x in ids], sum(map(len, ids))
    return Runner(run, params)


def torch_text(params: dict) -> Runner:
    """The seeds' path: transformers fp32 on CPU, with PeftModel when the case has an adapter."""
    gen = seeds_generator(params["hf_dir"], params.get("adapter"), params["threads"], params.get("seq2seq", False))
    config = _greedy(params)
    return Runner(_loop(lambda p: gen(p, config)), params)


def optimum_text(params: dict) -> Runner:
    """optimum's ORTModelForCausalLM (ORTModelForSeq2SeqLM) on the SDK bundle's ONNX files."""
    gen, config = optimum_model(params["onnx_dir"], params["threads"], params.get("seq2seq", False)), _greedy(params)
    return Runner(_loop(lambda p: gen(p, config)), params)


def llama_text(params: dict) -> Runner:
    gen = llama_generator(params["gguf"], params["threads"], params.get("n_ctx"), tokenizer=params.get("tokenizer"))
    config = _greedy(params)
    return Runner(_loop(lambda p: gen(p, config)), params)


# --- CLIP image tower: the SDK's tag scorer and its peers, on synthetic photos -------------------

def photo(seed: int, size=(640, 480)):
    """A deterministic photo-sized RGB image (smooth colour field + noise): decoding and resizing cost as a photo's."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
    base = np.stack([np.sin(x * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)], -1)
    return Image.fromarray(np.clip((base + 1) * 110 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def _clip_pixels(bundle, seeds):
    from edgesight.images import Preprocessing, preprocess
    return [preprocess(photo(s), Preprocessing.from_manifest(bundle.manifest["clip"])) for s in seeds]


def sdk_clip(params: dict) -> Runner:
    """edgesight's CLIP tag scorer (captioning._Clip): preprocess, image graph, scores against the cached
    text embeddings of the bundle's tag vocabulary."""
    import json

    from edgesight.bundle import Bundle
    from edgesight.tasks.captioning import _Clip

    bundle = Bundle.load(params["bundle"])
    clip = _Clip(bundle, params["threads"])
    vocab = json.loads(bundle.file("tag_vocab").read_text(encoding="utf-8"))
    photos = {s: photo(s) for s in params["inputs"]}
    return Runner(lambda seeds: ([clip.scores(photos[s], vocab)[:3] for s in seeds], None), params)


def ort_clip(params: dict) -> Runner:
    """The bundle's CLIP image graph alone (onnxruntime) on the SDK's preprocessed pixels."""
    import numpy as np

    from edgesight.runtime import open_session
    from edgesight.bundle import Bundle

    bundle = Bundle.load(params["bundle"])
    session = open_session(bundle, "clip_image", threads=params["threads"]).session   # the raw InferenceSession
    pixels = dict(zip(params["inputs"], _clip_pixels(bundle, params["inputs"])))
    def run(seeds):
        session.run(None, {"pixel_values": np.concatenate([pixels[s] for s in seeds])})
        return [None] * len(seeds), None
    return Runner(run, params)


def torch_clip(params: dict) -> Runner:
    """torch fp32 CLIPModel.get_image_features on the same pixels the SDK computes (model work only)."""
    import torch
    from transformers import CLIPModel

    from edgesight.bundle import Bundle

    torch.set_num_threads(params["threads"])
    model = CLIPModel.from_pretrained(params["hf_dir"], dtype=torch.float32).eval()
    pixels = {s: torch.from_numpy(p) for s, p in zip(params["inputs"], _clip_pixels(Bundle.load(params["bundle"]),
                                                                                     params["inputs"]))}

    def run(seeds):
        with torch.inference_mode():
            model.get_image_features(pixel_values=torch.cat([pixels[s] for s in seeds]))
        return [None] * len(seeds), None
    return Runner(run, params)


# --- task level: an edgesight task, and peers replaying its model calls -------------------------

def _inputs(params: dict) -> list:
    """Inputs given inline, or "module:NAME" of a task module's SAMPLE_INPUTS (images are not JSON)."""
    if "inputs_from" in params and "inputs" not in params:
        module, name = params["inputs_from"].split(":")
        return list(getattr(importlib.import_module(module), name))
    return params["inputs"]


def _task(params: dict):
    from edgesight.registry import TASKS
    return TASKS[params["task"]].load_class().from_pretrained(params["bundle"], threads=params["threads"])


# report parts that are settings, sizes or timings rather than quality
NOT_QUALITY = {"latency", "errors", "baseline", "seed_path", "speedup_vs_seed_path", "inputs", "n", "mean_ms",
               "median_ms", "p90_ms", "seconds", "catalogue", "queries", "unknown_queries", "non_product_photos",
               "threshold", "held_out", "views", "seed"}


def _numbers(tree, prefix: str = "") -> dict:
    """Numeric leaves of an eval report (quality figures), keyed by their path."""
    if isinstance(tree, dict):
        if {"bundle", "backend"} <= set(tree):  # a task's info(): where it ran, not how well
            return {}
        return {k: v for key, sub in tree.items() if key not in NOT_QUALITY
                for k, v in _numbers(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and len(tree) == 1:
        return _numbers(tree[0], prefix)
    is_number = isinstance(tree, (int, float)) and not isinstance(tree, bool)
    return {prefix.rstrip("."): round(float(tree), 4)} if is_number else {}


def task_quality(task_name: str, bundle: str, threads: int) -> dict:
    """The task's own evaluation (its registry `evaluate` module's `run_eval`, with the module's
    BENCH_OPTIONS that keep it to a minute or so) on this bundle; {} for a task without one."""
    from edgesight.registry import TASKS, load_hook

    if not TASKS[task_name].evaluate:
        return {}
    module = load_hook(TASKS[task_name].evaluate)
    report = module.run_eval(bundle, threads=threads, **module.BENCH_OPTIONS)
    # short keys: "sets.x.jsonl.model.f1" -> "x.f1", "results.category_accuracy" -> "category_accuracy"
    drop = {"sets", "model", "results", "bundles", "jsonl"}
    return {".".join(p for p in k.split(".") if p not in drop): v
            for k, v in _numbers(report).items()}


def sdk_task(params: dict) -> Runner:
    """The edgesight task class on a bundle: pre-processing, model, post-processing, typed result.
    Its outputs() is the task's own evaluation on this bundle (quality), or why that failed."""
    task = _task(params)
    inputs = _inputs(params)

    def run(xs):
        results = task(list(xs))
        return [r.to_dict() if hasattr(r, "to_dict") else r for r in results], len(xs)

    runner = Runner(run, {**params, "inputs": inputs})

    def quality():
        try:
            return {"eval": task_quality(params["task"], params["bundle"], params["threads"])}
        except Exception as exc:  # an eval that cannot run here must not lose the timings
            return {"eval_error": f"{type(exc).__name__}: {exc}"[:300]}
    runner.outputs = quality
    return runner


def _is_text_model(v) -> bool:
    return hasattr(v, "generate_ids") and hasattr(v, "backend")


def _is_session(v) -> bool:
    return type(v).__name__ == "InferenceSession"


def _find(obj, match, depth: int = 3, seen=None) -> list[tuple[object, str]]:
    """(owner, attribute) of every value under `obj` (attributes, `depth` levels) that `match`es."""
    seen = set() if seen is None else seen
    if depth == 0 or id(obj) in seen or not hasattr(obj, "__dict__") or isinstance(obj, type):
        return []
    seen.add(id(obj))
    found = []
    for name, value in list(vars(obj).items()):
        found += [(obj, name)] if match(value) else _find(value, match, depth - 1, seen)
    return found


def record_calls(task, inputs: list, match, methods: tuple[str, ...]) -> tuple[list, list[list[tuple]]]:
    """Run the task once per input with every backend object that `match`es wrapped; return those
    objects and, per input, the calls made to them: (object index, method, args, kwargs)."""
    places = _find(task, match)
    if not places:
        raise TypeError(f"{type(task).__name__} holds no backend object to replay")
    reals, calls = [getattr(o, a) for o, a in places], []

    class Recorder:
        def __init__(self, index):
            self.index = index

        def __getattr__(self, name):
            attr = getattr(reals[self.index], name)
            if name not in methods:
                return attr

            def recorded(*args, **kwargs):
                calls[-1].append((self.index, name, args, kwargs))
                return attr(*args, **kwargs)
            return recorded

    for i, (owner, attr) in enumerate(places):
        setattr(owner, attr, Recorder(i))
    try:
        for x in inputs:
            calls.append([])
            task(x)
    finally:
        for (owner, attr), real in zip(places, reals):
            setattr(owner, attr, real)
    return reals, calls


def replay_task(params: dict) -> Runner:
    """A peer doing only the backend work the SDK task did, replaying the recorded calls, by
    `params["peer"]`: "textmodel" / "onnxruntime" (the SDK's own TextModel or onnxruntime sessions,
    without the task around them), "llama-cpp-python" (same GGUF), "optimum" (same ONNX files),
    "transformers" (the seeds' path: transformers + PeftModel)."""
    from edgesight.bundle import Bundle

    task, peer, threads = _task(params), params["peer"], params["threads"]
    bundle = Bundle.load(params["bundle"], verify=False)
    text = peer != "onnxruntime"
    reals, calls = record_calls(task, _inputs(params), _is_text_model if text else _is_session,
                                ("generate", "generate_ids") if text else ("run",))
    if peer in ("textmodel", "onnxruntime"):
        def replay(i, method, args, kwargs):
            if method == "run":
                return reals[i].run(*args, **kwargs), None
            ids = reals[i].generate_ids(*args, **kwargs)  # generate() is generate_ids() + decode()
            if method == "generate":
                [[reals[i].decode(x) for x in seqs] for seqs in ids]
            return ids, sum(len(x) for seqs in ids for x in seqs)
    else:
        del task, reals  # free the SDK's copy of the weights before the peer loads its own
        seq2seq = bundle.kind == "seq2seq"
        if peer == "transformers":
            gen = seeds_generator(params["base"], params.get("adapter"), threads, seq2seq)
        elif peer == "llama-cpp-python":
            gen = llama_generator(bundle.file("model"), threads, bundle.get("context_length"),
                                  str(bundle.file("lora")) if bundle.has("lora") else None,
                                  bundle.file("tokenizer") if bundle.has("tokenizer") else None)
        else:
            gen = optimum_model(params["onnx_dir"], threads, seq2seq)

        def replay(i, method, args, kwargs):
            prompts, config = args[0], args[1] if len(args) > 1 else kwargs["config"]
            done = [gen(p, config) for p in prompts]
            return [t for t, _ in done], sum(n for _, n in done)

    def run(indices):  # outputs are not scored (raw model outputs, no task post-processing)
        n = 0
        for i in indices:
            for call in calls[i]:
                n += replay(*call)[1] or 1  # tokens generated, or 1 per session run
        return [None] * len(indices), n
    return Runner(run, {**params, "inputs": list(range(len(calls)))})
