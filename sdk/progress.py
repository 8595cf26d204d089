"""Progress bars for long work, switchable off with progress=False or EDGESIGHT_PROGRESS=0."""
import os
import sys

from tqdm.auto import tqdm


def enabled(progress: bool | None = None) -> bool:
    if progress is not None:
        return progress
    return os.environ.get("EDGESIGHT_PROGRESS", "1") not in ("0", "false", "no") and sys.stderr.isatty()


def bar(iterable=None, *, desc: str, total=None, progress: bool | None = None, unit: str = "it"):
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled(progress), file=sys.stderr, leave=False)
