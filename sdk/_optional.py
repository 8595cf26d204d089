"""Import optional dependencies with an exact `pip install` hint instead of a bare ImportError."""
import importlib

from .errors import MissingExtraError


def require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the module exists but one of *its* imports is broken: show the real error
        raise MissingExtraError(module, extra) from None
