"""The one table of tasks. The CLI, `build-defaults`, `export --task`, `train`, `eval`, `serve`,
`demo` and the benchmarks all read it; none of them keeps a per-task table of its own.

A row names where each piece of a task lives ("module:attribute" strings, imported only when used,
so `import edgesight` stays cheap and the run time never imports export or training code):

- `module`  edgesight.tasks.<module>: the task class, its typed result, and the run-time hooks
            `from_json(payload)` (HTTP body -> input), `add_cli_arguments(p)` / `run_cli(task, args)`,
            `SAMPLE_INPUTS` (demo), `export_spec(adapter_dir, kind) -> dict` (what a bundle of this
            task must carry besides the weights: prompt, vocabulary, labels, generation, probes);
- `train`   the training module: `add_train_arguments(p)` / `train_main(args) -> report`;
- `recipe`  the default-bundle recipe: `build_default(out_dir, *, threads, progress) -> Path`;
- `evaluate` the evaluation module: `run_eval(bundle, **options) -> dict` (typed, for the CLI and
            the benchmarks), `add_eval_arguments(p)` + `from_args(args)` (`edgesight eval <task>`) and
            `BENCH_OPTIONS` (the options the benchmarks' quality column passes).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


def load_hook(ref: str):
    """"package.module:attribute" (or just "package.module") -> the object."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


@dataclass(frozen=True)
class TaskSpec:
    name: str                 # registry key, CLI subcommand, default bundle name, HTTP route /v1/<name>
    module: str               # edgesight.tasks.<module>
    cls: str                  # public class name, exported as edgesight.<cls>
    result: str               # result type name (for docs and --help)
    formats: tuple[str, ...]  # bundle formats the task can run
    default_format: str       # format of the embedded default bundle
    summary: str
    train: str | None = None      # training module
    recipe: str | None = None     # default-bundle recipe
    evaluate: str | None = None   # evaluation module
    inputs: str = "text"          # what one input is, for `edgesight batch`: "text", "json" or "image" (edgesight.batch.INPUT_KINDS)

    @property
    def module_path(self) -> str:
        return f"edgesight.tasks.{self.module}"

    def load_module(self):
        return importlib.import_module(self.module_path)

    def load_class(self):
        return getattr(self.load_module(), self.cls)

    def hook(self, name: str):
        """The task module's hook `name` (e.g. "export_spec", "from_json"), or None if it has none."""
        return getattr(self.load_module(), name, None)


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("keywords", "keywords", "KeywordExtractor", "list[str]", ("onnx", "gguf", "torch"), "onnx",
             "free-text segmentation prompt -> object names to segment",
             train="edgesight.training.keywords", recipe="edgesight.training.keywords:build_default",
             evaluate="edgesight.evaluation.keywords", inputs="text"),
    TaskSpec("describe", "descriptions", "Describer", "Description", ("onnx", "gguf", "torch"), "gguf",
             "detector + scene JSON -> one natural sentence",
             train="edgesight.training.descriptions", recipe="edgesight.training.descriptions:build_default",
             evaluate="edgesight.evaluation.descriptions", inputs="json"),
    TaskSpec("caption", "captioning", "Captioner", "CaptionResult", ("onnx",), "onnx",
             "image -> caption, sampled captions and tag scores",
             train="edgesight.training.captioning", recipe="edgesight.training.captioning:build_default",
             inputs="image"),
    TaskSpec("products", "products", "ProductRecognizer", "ProductResult", ("onnx",), "onnx",
             "product photo -> title, category, price from a catalogue",
             train="edgesight.training.products", recipe="edgesight.training.products:build_default",
             evaluate="edgesight.evaluation.products", inputs="image"),
]}


def get(name: str) -> TaskSpec:
    from .errors import InputError

    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}") from None
