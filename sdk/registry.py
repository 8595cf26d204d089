"""The one table of tasks. The CLI, the export stage, the server and the benchmarks all read it.

Each task lives in one module `edgesight.tasks.<module>` that defines the task class and two CLI
hooks: `add_cli_arguments(parser)` and `run_cli(task, args) -> JSON-able`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str                 # registry key, CLI subcommand, default bundle name
    module: str               # edgesight.tasks.<module>
    cls: str                  # public class name, exported as edgesight.<cls>
    result: str               # result type name (for docs and --help)
    formats: tuple[str, ...]  # bundle formats the task can run
    default_format: str       # format of the embedded default bundle
    summary: str

    def load_class(self):
        return getattr(importlib.import_module(f"edgesight.tasks.{self.module}"), self.cls)

    def load_module(self):
        return importlib.import_module(f"edgesight.tasks.{self.module}")


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("keywords", "keywords", "KeywordExtractor", "list[str]", ("onnx", "gguf", "torch"), "onnx",
             "free-text segmentation prompt -> object names to segment"),
    TaskSpec("describe", "descriptions", "Describer", "Description", ("onnx", "gguf", "torch"), "gguf",
             "detector + scene JSON -> one natural sentence"),
    TaskSpec("caption", "captioning", "Captioner", "CaptionResult", ("onnx", "torch"), "onnx",
             "image -> caption, sampled captions and tag scores"),
    TaskSpec("products", "products", "ProductRecognizer", "ProductResult", ("onnx",), "onnx",
             "product photo -> title, category, price from a catalogue"),
]}


def get(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}") from None
