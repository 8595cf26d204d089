"""`edgesight bench run|guard`: the benchmark suite of the repository checkout edgesight is installed
from (benchmarks/ beside sdk/, an editable install).

The suite is not part of the installed package (it builds models, needs the [export] and [gguf]
extras and the test kit). It is looked for only next to this package, never in the current
directory: `edgesight` run in a folder that holds a benchmarks/cli.py must not execute it.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .errors import EdgesightError

CHECKOUT = Path(__file__).resolve().parent.parent


def _suite():
    """benchmarks.cli from the checkout, or None when edgesight is not installed from one."""
    if not (CHECKOUT / "benchmarks" / "cli.py").is_file() or not (CHECKOUT / "setup.py").is_file():
        return None
    if str(CHECKOUT) in sys.path:   # first, ahead of the current directory (`python -m` puts it first)
        sys.path.remove(str(CHECKOUT))
    sys.path.insert(0, str(CHECKOUT))
    loaded = sys.modules.get("benchmarks")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent.parent != CHECKOUT:
        raise EdgesightError(f"a different 'benchmarks' package is already imported ({loaded.__file__}); "
                             f"run the suite as `python -m benchmarks` in {CHECKOUT}")
    module = importlib.import_module("benchmarks.cli")
    if Path(module.__file__).resolve().parent.parent != CHECKOUT:
        raise EdgesightError(f"benchmarks.cli resolved to {module.__file__}, not the checkout {CHECKOUT}")
    return module


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    suite = _suite()
    if suite is None:
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    else:
        suite.add_cli_arguments(parser)


def main(args) -> None:
    suite = _suite()
    if suite is None:
        raise EdgesightError("the benchmark suite lives in the edgesight repository (benchmarks/), not in the "
                             "installed package; install edgesight from a checkout (pip install -e '.[all]') "
                             "and run `edgesight bench`, or `python -m benchmarks` in its root")
    status = suite.main(args)
    if status:
        raise SystemExit(status)
