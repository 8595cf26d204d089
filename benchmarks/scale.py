"""Batch jobs at scale: `edgesight batch` on the local engine against Ray Data with 1 and 2 workers
(1 thread each), per task, on >= 2,000 inputs (synthetic prompts and detector outputs; photos from the
sample sets with random augmentations), with the default bundles.

    python -m benchmarks.scale --n 2000 --json benchmarks/results/scale.json

Each configuration runs the whole job (bundle loading included) into a fresh output; for Ray, `ray.init`
is timed on its own (the start-up overhead) and Ray is shut down between configurations. Wall times,
not ratios of interleaved rounds: run it on an otherwise idle machine (`heavy --quiet`) and note the load.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

TASKS = ("keywords", "caption", "products", "describe")   # the slow one last
CONFIGS = (("local", 1), ("ray", 1), ("ray", 2))


def make_inputs(task: str, n: int, work: Path, seed: int = 0) -> Path:
    if task == "keywords":
        from edgesight.training.data.keywords import build
        prompts = [ex["input"] for ex in build(n, 1, seed=seed)["train"]][:n]
        path = work / "prompts.jsonl"
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
        return path
    if task == "describe":
        from edgesight.tasks.descriptions import Vocabulary
        from edgesight.training.data.descriptions import synthetic_inputs
        path = work / "detections.jsonl"
        rows = synthetic_inputs(n, Vocabulary.from_dict(None), seed=seed)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    folder = work / "photos"
    if not folder.is_dir():
        augmented_photos(folder, n, seed)
    return folder


def augmented_photos(folder: Path, n: int, seed: int) -> None:
    """n JPEGs: scikit-image's sample photos, randomly cropped, rotated, flipped, recoloured and resized."""
    import skimage.data
    from PIL import Image, ImageEnhance, ImageOps
    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry", "retina"]
    sources = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names if hasattr(skimage.data, name)]
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        img = rng.choice(sources)
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x, y, x + cw, y + ch)).rotate(rng.uniform(-20, 20), expand=True)
        img = ImageOps.mirror(img) if rng.random() < 0.5 else img
        img = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))).enhance(rng.uniform(0.6, 1.4))
        side = rng.choice([256, 384, 512, 640])
        img.thumbnail((side, side))
        img.save(folder / f"{i:05d}.jpg", quality=rng.randint(70, 95))


def run(task: str, source: Path, out: Path, engine: str, workers: int, batch_size: int) -> dict:
    from edgesight.batch import run_batch
    init_s = None
    if engine == "ray":
        import ray
        t = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        init_s = time.perf_counter() - t
    t = time.perf_counter()
    try:
        s = run_batch(task, source, out, engine=engine, workers=workers, threads=1, batch_size=batch_size, progress=False)
    finally:
        if engine == "ray":
            ray.shutdown()
    wall = time.perf_counter() - t + (init_s or 0)
    return {"task": task, "engine": engine, "workers": workers, "threads": 1, "n": s.done, "errors": s.errors,
            "wall_s": round(wall, 2), "ray_init_s": None if init_s is None else round(init_s, 2),
            "first_output_s": s.first_output_s, "items_per_s": round(s.done / wall, 2),
            "steady_items_per_s": round(s.done / max(1e-9, s.seconds - (s.first_output_s or 0)), 2)}


def _num(x) -> str:
    return "" if x is None else f"{x:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| task | engine | workers x threads | inputs | wall s | Ray init s | to first output s | inputs/s | vs local |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    local = {r["task"]: r["items_per_s"] for r in rows if r["engine"] == "local"}
    for r in rows:
        ratio = r["items_per_s"] / local[r["task"]] if local.get(r["task"]) else float("nan")
        lines.append(f"| {r['task']} | {r['engine']} | {r['workers']} x 1 | {r['n']} | {r['wall_s']:.1f} | "
                     f"{_num(r['ray_init_s'])} | {r['first_output_s']:.1f} | "
                     f"{r['items_per_s']:.1f} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="inputs per task")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--batch-size", type=int, default=64, help="rows per Ray / local batch")
    p.add_argument("--configs", default=",".join(f"{e}:{w}" for e, w in CONFIGS),
                   help="engine:workers in the order to run (a long task may put ray:2 first)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="edgesight-scale-"))
    rows = []
    try:
        for task in args.tasks.split(","):
            source = make_inputs(task, args.n, work)
            for engine, workers in configs:
                out = work / f"{task}-{engine}-{workers}.jsonl"
                rows.append(run(task, source, out, engine, workers, args.batch_size))
                print(json.dumps(rows[-1]), flush=True)
                out.unlink()
                if args.json:   # after every configuration: a long run keeps what it measured
                    Path(args.json).write_text(json.dumps({"rows": rows, "loadavg": os.getloadavg(),
                                                           "cpus": os.cpu_count()}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(table(rows))
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
