"""The generative VLM path at real SmolVLM-256M size: llama.cpp (GGUF Q8_0 / Q4_K_M text + f16 mmproj) and
onnxruntime (ONNX fp32 / dynamic int8 vision + decoder graphs, export/vlm_onnx.py), the edgesight runtimes, vs
transformers fp32 (the seed path) on the same model, same image, same run.

SmolVLM-256M-Instruct's shape (Idefics3: SigLIP-B/16 at 512 px, 12 layers, pixel shuffle 4 -> 64 tokens per
tile; Llama text model hidden 576, 30 layers, 9/3 heads, MLP 1536; SmolLM2's 49k vocabulary + the image
tokens) with random weights: no SmolVLM weights exist offline and speed does not depend on the values. The
EOS row of the tied embeddings is zeroed so greedy answers always run the full `--tokens`.

Per runtime x threads x image setting, each in a fresh process (peak RSS is the process's own):
  image_encode_s   the vision tower + connector over every tile (mtmd_encode_chunk / vision.onnx / get_image_features),
                   preprocessing excluded
  first_token_s    image + prompt in, the first answer token out (encode + prefill + 1 step)
  full_answer_s    the same with `--tokens` answer tokens
  decode_tokens_per_s  answer tokens per second of the one-token decode steps alone (timed around each step;
                   full - first is no rate: the encode's run-to-run noise is larger than the whole decode)
Each figure is the median of `--repeats` calls in the same process (the first call's warm-up drops out).
Image settings: `longest_edge` of the processor (SmolVLM's own 2048 -> 4x4 tiles + overview = 17 x 64 image
tokens for a square photo; 1024 -> 2x2 + overview = 5 x 64). All runtimes tile the same way at these sizes.
`--prepare` builds the model and every bundle (ONNX: exported per image setting, its greedy answer on the photo
compared with transformers and kept in the result's `onnx_fidelity`); the measurements reuse them with --work.

    python -m benchmarks.vlm_realsize --threads 1 2 --edges 1024 --out benchmarks/results/vlm_realsize_1024.json
    python -m benchmarks.vlm_realsize --threads 2 --edges 2048 --out benchmarks/results/vlm_realsize_2048.json
"""
from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import header, write_json

REPO = Path(__file__).resolve().parents[1]
PROMPT = "What is shown in this image?"
# gguf-TEXT is the text GGUF at TEXT with the export's default f16 mmproj; gguf-TEXT+mmproj_q8_0 the same text
# model with a Q8_0 mmproj (the vision tower quantised too). "+grammar": the answer generated under the product
# grammar, as ProductRecognizer does (GBNF on llama.cpp, its Lark twin through llguidance on ONNX).
RUNTIMES = ("torch-fp32", "gguf-q8_0", "gguf-q4_k_m", "gguf-q8_0+mmproj_q8_0", "gguf-q4_k_m+mmproj_q8_0",
            "onnx-fp32", "onnx-int8", "onnx-int8-vision", "gguf-q8_0+grammar", "onnx-int8+grammar",
            "onnx-int8-vision+grammar")


def base_runtime(runtime: str) -> str:
    """The runtime without "+grammar" (the same bundle)."""
    return runtime.removesuffix("+grammar")


def gguf_types(runtime: str) -> tuple[str, str]:
    """"gguf-q4_k_m+mmproj_q8_0" -> ("q4_k_m", "q8_0"); "gguf-q8_0" -> ("q8_0", "f16")."""
    text, _, mmproj = base_runtime(runtime).split("-", 1)[1].partition("+mmproj_")
    return text, mmproj or "f16"


class _StepClock:
    """Wall time of the single-token decode steps only: the decode rate without the image encoding and prefill,
    whose run-to-run noise is larger than the whole decode (so (full - first) / tokens is no rate)."""

    def __init__(self):
        self.n, self.s = 0, 0.0

    def wrap(self, fn, one_token=lambda *a, **k: True):
        @functools.wraps(fn)   # generate() reads forward's signature (logits_to_keep)
        def timed(*a, **k):
            if not one_token(*a, **k):
                return fn(*a, **k)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            self.s += time.perf_counter() - t0
            self.n += 1
            return out
        return timed

    def rate(self):
        return round(self.n / self.s, 1) if self.s > 0 else None


def build_smolvlm_256m(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration

    sys.path.insert(0, str(REPO / "tests"))
    from kit_vlm import smollm2_vlm_tokenizer   # tests/kit_vlm.py: SmolLM2's tokenizer + the Idefics3 tokens

    smollm2_vlm_tokenizer(out_dir)
    tok = AutoTokenizer.from_pretrained(out_dir)
    cfg = Idefics3Config(
        text_config=dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=len(tok), hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16),
        scale_factor=4, image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.model.text_model.embed_tokens.weight[tok.eos_token_id].zero_()
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def set_edge(model_dir: Path, edge: int) -> None:
    from edgesight.export.vlm import write_preprocessor_config

    write_preprocessor_config(model_dir, 512, tiles=edge // 512)


def _image():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea()).resize((640, 640))   # a square photo: 4x4 tiles at 2048


def _after(fn, hook):
    def wrapped(*a, **k):
        out = fn(*a, **k)
        hook()
        return out
    return wrapped


def _median(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3), out


def one_torch(model_dir: Path, threads: int, tokens: int, repeats: int) -> dict:
    import torch

    from edgesight.export.vlm import load_vlm
    from edgesight.training.vlm import load_processor

    torch.set_num_threads(threads)
    model = load_vlm(model_dir).eval()
    processor, tok = load_processor(model_dir)
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    head = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[head], images=[[_image()]], add_special_tokens=False, return_tensors="pt")
    gen = dict(do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.no_grad():   # no separate warm-up: medians of `repeats` calls drop the first call's extra cost
        res = {"image_tokens": int((enc["input_ids"] == model.config.image_token_id).sum()),
               "tiles": int(enc["pixel_values"].shape[1])}
        res["first_token_s"], _ = _median(lambda: model.generate(**enc, max_new_tokens=1, **gen), repeats)
        res["image_encode_s"], _ = _median(lambda: model.model.get_image_features(enc["pixel_values"]), repeats)
        res["full_answer_s"], out = _median(lambda: model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens,
                                                                    **gen), repeats)
        # decode rate: the model's forward on one new token with the KV cache (logits included), as generate calls it
        clock = _StepClock()
        model.forward = clock.wrap(model.forward, lambda *a, **k: k.get("input_ids") is not None
                                   and k["input_ids"].shape[1] == 1)
        model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, **gen)
    res["answer_tokens"] = int(out.shape[1] - enc["input_ids"].shape[1])
    res["decode_tokens_per_s"] = clock.rate()
    return res


def one_gguf(bundle: Path, threads: int, tokens: int, repeats: int, grammar: bool = False) -> dict:
    import ctypes

    from llama_cpp import mtmd_cpp as M

    from edgesight.tasks.vlm import VLMModel, product_grammar

    vlm = VLMModel.from_pretrained(bundle, threads=threads)
    g = product_grammar(vlm) if grammar else None
    image = _image()
    first_token_s, _ = _median(lambda: vlm.generate(image, PROMPT, max_new_tokens=1), repeats)   # creates the mtmd context
    ctx = vlm.engine.handler.mtmd_ctx
    rgb = image.convert("RGB")
    buf = (ctypes.c_uint8 * (rgb.width * rgb.height * 3)).from_buffer(bytearray(rgb.tobytes()))
    bitmap = M.mtmd_bitmap_init(rgb.width, rgb.height, buf)
    text = M.mtmd_input_text()
    marker = M.mtmd_default_marker()
    text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
    chunks = M.mtmd_input_chunks_init()
    assert M.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (M.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
    images = [M.mtmd_input_chunks_get(chunks, i) for i in range(M.mtmd_input_chunks_size(chunks))]
    images = [c for c in images if M.mtmd_input_chunk_get_type(c) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE]

    def encode():
        for c in images:
            assert M.mtmd_encode_chunk(ctx, c) == 0

    res = {"image_tokens": sum(M.mtmd_input_chunk_get_n_tokens(c) for c in images), "tiles": len(images)}
    res["first_token_s"] = first_token_s
    res["image_encode_s"], _ = _median(encode, repeats)
    res["full_answer_s"], out = _median(lambda: vlm.generate(image, PROMPT, max_new_tokens=tokens, grammar=g), repeats)
    res["answer_tokens"], res["answer"] = out.tokens, out.text
    # Llama.generate feeds each sampled token back through eval([token]); evals before the first sample are the
    # prompt's (mtmd's text chunks can be one token long too)
    llm, clock, sampled = vlm.engine.llm, _StepClock(), [False]
    llm.eval = clock.wrap(llm.eval, lambda tokens: sampled[0])
    llm.sample = _after(llm.sample, lambda: sampled.__setitem__(0, True))
    llm.reset = _after(llm.reset, lambda: sampled.__setitem__(0, False))
    vlm.generate(image, PROMPT, max_new_tokens=tokens, grammar=g)
    res["decode_tokens_per_s"] = clock.rate()
    M.mtmd_input_chunks_free(chunks)
    M.mtmd_bitmap_free(bitmap)
    res["bundle_mb"] = round(sum(f.stat().st_size for f in Path(bundle).iterdir()) / 1e6, 1)
    return res


def one_onnx(bundle: Path, threads: int, tokens: int, repeats: int, grammar: bool = False) -> dict:
    from edgesight.tasks.vlm import VLMModel, product_grammar

    vlm = VLMModel.from_pretrained(bundle, threads=threads)
    g = product_grammar(vlm) if grammar else None
    image = _image()
    first_token_s, _ = _median(lambda: vlm.generate(image, PROMPT, max_new_tokens=1), repeats)
    pixels, _, _ = vlm.engine.preprocessing(image)
    res = {"image_tokens": len(pixels) * vlm.engine.image_seq_len, "tiles": len(pixels), "first_token_s": first_token_s}
    res["image_encode_s"], _ = _median(lambda: vlm.engine.vision.run({"pixel_values": pixels}), repeats)
    res["full_answer_s"], out = _median(lambda: vlm.generate(image, PROMPT, max_new_tokens=tokens, grammar=g), repeats)
    res["answer_tokens"], res["answer"] = out.tokens, out.text
    clock = _StepClock()   # the generation loop's one-token step with the KV cache (OnnxCausalLM.step)
    vlm.engine.step = clock.wrap(vlm.engine.step)
    vlm.generate(image, PROMPT, max_new_tokens=tokens, grammar=g)
    res["decode_tokens_per_s"] = clock.rate()
    res["bundle_mb"] = round(sum(f.stat().st_size for f in Path(bundle).iterdir()) / 1e6, 1)
    return res


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (reset at exec), not ru_maxrss, which a child started by fork + exec
    inherits from its parent (a parent that exported the ONNX bundles would lend it several GB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _child(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    if args.runtime == "torch-fp32":
        res = one_torch(Path(args.model_dir), args.one_threads, args.tokens, args.repeats)
    elif args.runtime.startswith("onnx-"):
        res = one_onnx(Path(args.bundle), args.one_threads, args.tokens, args.repeats, args.runtime.endswith("+grammar"))
    else:
        res = one_gguf(Path(args.bundle), args.one_threads, args.tokens, args.repeats, args.runtime.endswith("+grammar"))
    res["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(res), flush=True)


def _onnx_bundles(model_dir: Path, work: Path, edge: int, precisions: dict, threads: int, result: dict) -> dict:
    """{runtime: bundle dir} of the ONNX runtimes at this image setting, exported unless --work holds them. The
    export compares each bundle's greedy answer on the benchmark photo with transformers fp32 (not required to
    match: random weights put near-ties everywhere); the figures go to result["onnx_fidelity"]."""
    from edgesight.bundle import Bundle
    from edgesight.export.vlm_onnx import export_vlm_onnx_bundles

    dirs = {p: work / f"bundle-onnx-{p}-{edge}" for p in precisions}
    if not all((d / "edgesight.json").is_file() for d in dirs.values()):
        t0 = time.perf_counter()
        export_vlm_onnx_bundles(model_dir, dirs, images=[_image()], probe_tokens=8, threads=threads, exact=())
        result.setdefault("onnx_export_s", {})[str(edge)] = round(time.perf_counter() - t0, 1)
    for p, d in dirs.items():
        result.setdefault("onnx_fidelity", {})[f"{precisions[p]} edge{edge}"] = Bundle.load(d, verify=False).get("fidelity")
    return {precisions[p]: d for p, d in dirs.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--edges", type=int, nargs="+", default=[2048, 1024], help="processor longest_edge settings (multiples of 512)")
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    p.add_argument("--tokens", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3, help="calls per figure; the median is reported")
    p.add_argument("--work", default=None, help="keep the model and bundles here (default: a temp dir)")
    p.add_argument("--out", default=None)
    p.add_argument("--prepare", action="store_true", help="build the model and bundles in --work, measure nothing")
    p.add_argument("--one", dest="runtime", default=None, help=argparse.SUPPRESS)   # child process
    p.add_argument("--one-threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--bundle", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runtime:
        return _child(args)

    from edgesight.export.vlm import convert_vlm, export_vlm_bundle

    result = header("vlm-realsize", vars(args)) | {"model": "SmolVLM-256M shape (Idefics3, random weights)", "runs": {}}
    with tempfile.TemporaryDirectory(prefix="es-smolvlm-") as tmp:
        work = Path(args.work or tmp)
        model_dir = work / "smolvlm-256m"
        if not (model_dir / "model.safetensors").exists():
            build_smolvlm_256m(model_dir)
        pairs = {r: gguf_types(r) for r in dict.fromkeys(map(base_runtime, args.runtimes)) if r.startswith("gguf-")}
        texts = tuple(dict.fromkeys(t for t, _ in pairs.values()))
        mmprojs = tuple(dict.fromkeys(m for _, m in pairs.values()))
        onnx = {r.split("-", 1)[1]: r for r in dict.fromkeys(map(base_runtime, args.runtimes)) if r.startswith("onnx-")}
        text_conv = None
        for edge in args.edges:
            set_edge(model_dir, edge)
            bundles = {r: work / f"bundle-{t}-{m}-{edge}" for r, (t, m) in pairs.items()}
            if not all((b / "edgesight.json").is_file() for b in bundles.values()):   # else kept from a run before
                # text GGUFs once; the mmproj records the image setting, so it is converted per edge
                t0 = time.perf_counter()
                conv = convert_vlm(model_dir, work / f"gguf-{edge}", () if text_conv else texts, mmprojs,
                                   threads=max(args.threads))
                text_conv = text_conv or conv["text"]
                conv["text"] = text_conv
                for r, (t, m) in pairs.items():
                    export_vlm_bundle(model_dir, bundles[r], text_type=t, mmproj_type=m, converted=conv)
                result.setdefault("convert_s", {})[str(edge)] = round(time.perf_counter() - t0, 1)
            bundles.update(_onnx_bundles(model_dir, work, edge, onnx, max(args.threads), result))
            for threads in [] if args.prepare else args.threads:
                for rt in args.runtimes:
                    cmd = [sys.executable, "-m", "benchmarks.vlm_realsize", "--one", rt, "--one-threads", str(threads),
                           "--tokens", str(args.tokens), "--repeats", str(args.repeats), "--model-dir", str(model_dir)]
                    if base_runtime(rt) in bundles:
                        cmd += ["--bundle", str(bundles[base_runtime(rt)])]
                    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                    run = json.loads(line[-1][7:]) if line else {"error": out.stderr[-2000:]}
                    key = f"{rt} t{threads} edge{edge}"
                    result["runs"][key] = run
                    print(json.dumps({key: run}), flush=True)
    speed = {}
    for key, run in result["runs"].items():
        ref = result["runs"].get("torch-fp32 " + key.split(" ", 1)[1], {})
        if not key.startswith("torch") and "full_answer_s" in run and "full_answer_s" in ref:
            speed[key] = {m: round(ref[m] / run[m], 2) for m in ("image_encode_s", "first_token_s", "full_answer_s")}
    result["speedup_vs_torch_fp32"] = speed
    if args.out:
        write_json(result, Path(args.out))
    print(json.dumps(result["speedup_vs_torch_fp32"], indent=1))
    return result


if __name__ == "__main__":
    main()
