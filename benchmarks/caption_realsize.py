"""The seed's full captioning response at real BLIP-base size: PyTorch fp32 vs ONNX fp32 vs quantized.

BlipConfig() defaults (ViT-B/16 at 384 px + BERT-base decoder, 224M params) with random weights:
no BLIP weights exist offline, and speed does not depend on weight values. The end-of-sentence
token is suppressed so every caption runs the full `--tokens`, as the reference timings assume.

Per image, "full response" = the beam caption (3 beams) + `--samples` nucleus captions (top_p 0.9):
- torch: transformers' generate() twice, as the seed did (the vision encoder runs in each call);
- onnx:  edgesight.Captioner on our bundles (encoder once, cross K/V shared, samples batched).

    python -m benchmarks.caption_realsize --threads 2 --repeats 3 --out caption_realsize.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.report import header, write_json

PRECISIONS = ("fp32", "int8", "int4")


def build_blip_base(out_dir: Path, seed: int = 0) -> Path:
    """Random-weight BLIP-base with a 30524-entry WordPiece vocabulary laid out like BERT's ([DEC] = 30522)."""
    import torch
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"w{i}" for i in range(30522 - len(vocab))] + ["[DEC]", "[EXTRA]"]
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(out_dir / "vocab.txt"), bos_token="[DEC]")
    torch.manual_seed(seed)
    config = BlipConfig()
    config.text_config.bos_token_id = tok.bos_token_id
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # never end early: every caption decodes the full token budget
        model.text_decoder.cls.predictions.bias[config.text_config.sep_token_id] = -1e4
    model.save_pretrained(out_dir, safe_serialization=True)
    BlipProcessor(BlipImageProcessor(size={"height": 384, "width": 384}), tok).save_pretrained(out_dir)
    return out_dir


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


def bench_torch(model_dir: Path, image, tokens: int, samples: int, threads: int, repeats: int) -> dict:
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    torch.set_num_threads(threads)
    model = BlipForConditionalGeneration.from_pretrained(str(model_dir)).eval()
    pixels = BlipProcessor.from_pretrained(str(model_dir))(images=image, return_tensors="pt").pixel_values
    beam = dict(num_beams=3, max_new_tokens=tokens, min_length=0)
    sample = dict(do_sample=True, top_p=0.9, top_k=0, num_return_sequences=samples, max_new_tokens=tokens, min_length=0)
    with torch.no_grad():
        model.generate(pixel_values=pixels, max_new_tokens=2)   # warm-up
        parts = {"vision_encoder_s": _median(lambda: model.vision_model(pixel_values=pixels), repeats),
                 "beam3_s": _median(lambda: model.generate(pixel_values=pixels, **beam), repeats),
                 "samples_s": _median(lambda: model.generate(pixel_values=pixels, **sample), repeats)}
        parts["full_response_s"] = _median(lambda: (model.generate(pixel_values=pixels, **beam),
                                                    model.generate(pixel_values=pixels, **sample)), repeats)
    return parts


def bench_onnx(bundle, image, samples: int, threads: int, repeats: int) -> dict:
    from edgesight.generation import GenerationConfig
    from edgesight.images import load_image
    from edgesight.images import preprocess
    from edgesight.tasks.captioning import Captioner

    cap = Captioner(bundle, threads=threads, num_samples=samples)
    img = load_image(image)
    cap(img)   # warm-up
    enc = cap.model.encoder
    pixels = preprocess(img, cap.model.settings)
    sample = GenerationConfig.from_dict({**cap.sample.to_dict(), "num_return_sequences": samples})
    return {"vision_encoder_s": _median(lambda: enc.run({"pixel_values": pixels}), repeats),
            "encoder_plus_beam3_s": _median(lambda: cap.model.captions(img, [cap.beam]), repeats),
            "encoder_plus_samples_s": _median(lambda: cap.model.captions(img, [sample]), repeats),
            "full_response_s": _median(lambda: cap(img), repeats),
            "bundle_mb": round(bundle.size_bytes() / 1e6, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                   help="fp32 is always exported first (the quantized bundles derive from it)")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--work", default=None, help="keep the model and bundles here (default: a temp dir)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    args = p.parse_args(argv)

    from skimage import data

    from edgesight.export.captioning import export_blip, requantize

    image = data.chelsea()
    result = header("caption-realsize", vars(args)) | {"model": "BLIP-base (BlipConfig() defaults, random weights)", "threads": args.threads,
              "tokens": args.tokens, "samples": args.samples, "repeats": args.repeats, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="es-blip-base-") as tmp:
        work = Path(args.work or tmp)
        model_dir = build_blip_base(work / "blip-base")
        if not args.skip_torch:
            result["runs"]["torch-fp32"] = bench_torch(model_dir, image, args.tokens, args.samples, args.threads, args.repeats)
            print(json.dumps({"torch-fp32": result["runs"]["torch-fp32"]}), flush=True)
        fp32 = None
        for precision in dict.fromkeys(["fp32", *args.precisions]):   # fp32 is traced and checked against PyTorch; int8/int4 derive from it
            t0 = time.perf_counter()
            if fp32 is None:
                fp32 = export_blip(model_dir, work / "bundle-fp32", precision="fp32", max_new_tokens=args.tokens,
                                   validation_images=[image], threads=args.threads, strict=False, progress=False)
            bundle = fp32 if precision == "fp32" else requantize(fp32.path, work / f"bundle-{precision}", precision,
                                                                  validation_images=[image], threads=args.threads)
            run = bench_onnx(bundle, image, args.samples, args.threads, args.repeats)
            run["export_s"], run["fidelity"] = round(time.perf_counter() - t0, 1), bundle.get("fidelity")
            result["runs"][f"onnx-{precision}"] = run
            print(json.dumps({f"onnx-{precision}": run}), flush=True)
    torch_full = result["runs"].get("torch-fp32", {}).get("full_response_s")
    if torch_full:
        result["speedup_vs_torch"] = {k: round(torch_full / v["full_response_s"], 2) for k, v in result["runs"].items()}
    if args.out:
        write_json(result, Path(args.out))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
