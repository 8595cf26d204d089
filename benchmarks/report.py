"""The run's record: JSON (stable schema, machine, versions, git commit), a Markdown table, a PNG plot."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from edgesight.bundle import atomic_write_bytes, staging_file

from . import SCHEMA
from .runner import REPO

PACKAGES = ("edgesight", "numpy", "onnxruntime", "tokenizers", "llama-cpp-python", "torch", "transformers",
            "optimum", "optimum-onnx", "peft", "onnx")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None) if Path("/proc/meminfo").exists() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "mem_total_mb": mem,
            "loadavg": list(os.getloadavg())}


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git() -> dict:
    def out(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": out("rev-parse", "HEAD") or None, "dirty": bool(out("status", "--porcelain", "--untracked-files=no"))}


def header(mode: str, settings: dict) -> dict:
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "mode": mode,
            "settings": settings, "machine": machine(), "versions": versions(), "git": git()}


def write_json(run: dict, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(run, indent=1) + "\n").encode())


def _fmt(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def _quality(q: dict | None, most: int = 4) -> str:
    """The first few quality figures (the JSON has them all)."""
    items = [f"{k} {v:.3g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in (q or {}).items()]
    return ", ".join(items[:most]) + (f" (+{len(items) - most} in JSON)" if len(items) > most else "") or "–"


def markdown(run: dict) -> str:
    m, s = run["machine"], run["settings"]
    lines = [f"Run {run['created']} ({run['mode']}), commit {(run['git']['commit'] or '?')[:10]}"
             f"{' (dirty)' if run['git']['dirty'] else ''}; {m['cpu']}, {m['usable_cores']} usable cores, "
             f"**{s['threads']} thread(s)**; load average {m['loadavg'][0]:.2f} at start, "
             f"{run.get('loadavg_end', [0])[0]:.2f} at end; {s['rounds']} interleaved rounds after {s['warmup']} warm-up calls.", ""]
    lines += ["| case | size MB | load s | first ms | median ms | p95 ms | items/call | batch items/s | peak RSS MB | quality |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in run["cases"]:
        if c["status"] != "ok":
            lines.append(f"| {c['id']} | {_fmt(c.get('artifact_mb'))} |{' – |' * 7} {c['status']}: {c['reason'][:160]} |")
            continue
        lines.append(f"| {c['id']} | {_fmt(c.get('artifact_mb'))} | {_fmt(c.get('load_s'), '.2f')} | {_fmt(c.get('first_call_ms'))} "
                     f"| {_fmt(c.get('median_ms'))} | {_fmt(c.get('p95_ms'))} | {_fmt(c.get('items_per_call'), '.0f')} "
                     f"| {_fmt(c.get('batch_items_per_s'), '.2f')} "
                     f"| {_fmt(c.get('peak_rss_mb'), '.0f')} | {_quality(c.get('quality'))} |")
    lines += ["", "| ratio (a / b, median of per-round ratios) | per call | 95% CI | per item |", "|---|---:|---|---:|"]
    for r in run["ratios"]:
        if r["status"] == "ok":
            lines.append(f"| `{r['key']}`: {r['what']} | {r['ratio']:.3f} | {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f} "
                         f"| {_fmt(r.get('ratio_per_item'), '.3f')} |")
        else:
            lines.append(f"| `{r['key']}`: {r['what']} | skipped | {r['reason'][:120]} | |")
    if run.get("notes"):
        lines += [""] + [f"- {n}" for n in run["notes"]]
    return "\n".join(lines) + "\n"


def plot(run: dict, path: Path) -> bool:
    """Median latency against artifact size, one colour per format, one panel per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    points = [c for c in run["cases"] if c["status"] == "ok" and c.get("artifact_mb") and c.get("median_ms")]
    tasks = sorted({c["task"] for c in points})
    if not tasks:
        return False
    formats = sorted({c["format"] for c in points})
    colours = dict(zip(formats, plt.cm.tab10.colors))
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        for c in (c for c in points if c["task"] == task):
            marker = "o" if c["impl"] == "edgesight" else "x"
            ax.scatter(c["artifact_mb"], c["median_ms"], color=colours[c["format"]], marker=marker, s=50)
            ax.annotate(f"{c['format']}\n{c['impl']}", (c["artifact_mb"], c["median_ms"]), fontsize=6,
                        xytext=(4, 2), textcoords="offset points")
        ms = [c["median_ms"] for c in points if c["task"] == task]
        ax.set(title=task, xlabel="artifact size (MB)", ylabel="median latency per call (ms)", xscale="log",
               yscale="log" if max(ms) > 30 * min(ms) else "linear")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers; minor ticks unlabelled (they crowd log axes)
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    fig.suptitle(f"edgesight {run['mode']} run, {run['settings']['threads']} thread(s) (o = edgesight, x = peer)", fontsize=9)
    fig.tight_layout()
    with staging_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return True
