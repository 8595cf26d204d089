"""`edgesight bench run|guard`: the benchmark suite of a repository checkout (benchmarks/ at its root).

The suite is not part of the installed package (it builds models, needs the [export] and [gguf]
extras and the test kit), so this finds the checkout this edgesight was installed from (editable
install) or the current directory, and says what to do when there is none.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .errors import EdgesightError


def _suite():
    """benchmarks.cli from the checkout, or None."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / "benchmarks" / "cli.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return importlib.import_module("benchmarks.cli")
    return None


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
                             "installed package; run `edgesight bench` from a checkout (pip install -e '.[all]') "
                             "or `python -m benchmarks` in its root")
    status = suite.main(args)
    if status:
        raise SystemExit(status)
