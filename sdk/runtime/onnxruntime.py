"""onnxruntime: .onnx graphs on the CPU or, with onnxruntime-gpu installed, on CUDA.

    open_session(path, threads=2, device="cpu") -> OrtSession   (the Session protocol)
    load_text_model(bundle, threads=2, device="cpu") -> OnnxCausalLM | OnnxSeq2SeqLM (runtime/onnx_lm.py)
    load_vlm(bundle, threads=2, device="cpu") -> OnnxVLM (runtime/onnx_vlm.py: vision + embed + decoder graphs)
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from ..errors import BackendError, BundleError

# onnx tensor type strings -> numpy dtypes (the ones our graphs take)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(double)": np.float64}


def devices() -> list[str]:
    import onnxruntime as ort

    return ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])


class OrtSession:
    """An onnxruntime InferenceSession behind the Session protocol. Feeds the graph does not take
    (token_type_ids for a model without them, say) are dropped, so callers can feed one superset."""

    def __init__(self, session, path: Path):
        self.session, self.path = session, path
        self.inputs = {i.name: (tuple(i.shape), _DTYPES.get(i.type, np.float32)) for i in session.get_inputs()}
        self.outputs = {o.name: tuple(o.shape) for o in session.get_outputs()}
        self.providers = session.get_providers()

    def run(self, feeds: dict, outputs=None) -> list:
        try:
            return self.session.run(list(outputs) if outputs else None,
                                    {k: v for k, v in feeds.items() if k in self.inputs})
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument/... types
            raise BackendError(f"{self.path}: onnxruntime run failed ({str(exc).strip()[:300]})") from exc


def open_session(path, *, threads: int, device: str = "cpu", arena: bool = True) -> OrtSession:
    """A session with an explicit thread pool (onnxruntime would size it from the host's cores,
    ignoring cgroup limits). arena=False returns memory to the OS between calls."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = bool(arena)
    so.log_severity_level = 3
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: ONNX file not found; re-export the bundle")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    try:
        return OrtSession(ort.InferenceSession(str(path), so, providers=providers), path)
    except Exception as exc:
        raise BundleError(f"{path}: onnxruntime cannot load this model ({type(exc).__name__}: "
                          f"{str(exc).strip()[:300]}); re-export the bundle") from exc


def load_text_model(bundle, *, threads: int, device: str = "cpu", arena: bool = True, prefix_cache: bool = True, **_):
    from .onnx_lm import load_text_model as load

    return load(bundle, partial(open_session, threads=threads, device=device, arena=arena), prefix_cache=prefix_cache,
                backend="onnx")


def load_vlm(bundle, *, threads: int, device: str = "cpu", arena: bool = True, **_):
    from .onnx_vlm import OnnxVLM

    return OnnxVLM(bundle, partial(open_session, threads=threads, device=device, arena=arena), backend="onnx")
