"""edgesight: edge-optimized, quantized inference for four vision-language tasks.

    import edgesight
    edgesight.KeywordExtractor.from_pretrained()("Segment cats, dogs, but not humans")  # ["Cat", "Dog"]

Importing edgesight is cheap and never imports torch: task classes load on first use.
"""
from . import errors
from .registry import TASKS

__version__ = "0.1.0"
__all__ = ["errors", "TASKS", "__version__"] + [spec.cls for spec in TASKS.values()]


def __getattr__(name: str):
    for spec in TASKS.values():
        if spec.cls == name:
            return spec.load_class()
    raise AttributeError(f"module 'edgesight' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
