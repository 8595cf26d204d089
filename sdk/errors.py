"""Typed errors. Each message says what was wrong and what to do about it."""


class EdgesightError(Exception):
    """Base class of every error edgesight raises on purpose."""


class InputError(EdgesightError, ValueError):
    """The caller's input (prompt, JSON, image, catalogue row) is unusable."""


class ImageError(InputError):
    """An image that cannot be decoded, is empty, or is too large."""


class BundleError(EdgesightError):
    """A model bundle is missing, malformed or for another task."""


class BundleNotFoundError(BundleError, FileNotFoundError):
    """No bundle at the given path (or the embedded default was not built yet)."""


class VLMPairError(BundleError):
    """A VLM bundle's mmproj (vision tower + connector) does not belong to its text model."""


class IntegrityError(BundleError):
    """A bundle file does not match the sha256 in its manifest (tampered or truncated)."""

    def __init__(self, path, expected, actual):
        self.path, self.expected, self.actual = str(path), expected, actual
        super().__init__(
            f"{path}: sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…); "
            "the file was modified or truncated — re-export or re-download the bundle"
        )


class BackendError(EdgesightError):
    """The requested backend cannot run this bundle (wrong format, unsupported model kind)."""


class DeviceError(BackendError):
    """The requested device (e.g. "cuda") is not available to the runtime; the message says what to install."""


class MissingExtraError(BackendError, ImportError):
    """An optional dependency is not installed; the message carries the exact pip command."""

    def __init__(self, module: str, extra: str):
        self.module, self.extra = module, extra
        super().__init__(f"{module} is not installed; run: pip install 'edgesight[{extra}]'")


class ExportError(EdgesightError):
    """An export step failed or an export did not match its reference."""


class TrainingError(EdgesightError):
    """Training data or configuration is unusable."""


class CatalogError(InputError):
    """A product catalogue is empty or unusable."""
