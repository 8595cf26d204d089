"""ONNX half of the export stage: HF directory -> ONNX files (optimum-onnx), then int8 / int4 variants.

    export_onnx(model_dir, out_dir, task)        fp32 export; tokenizer and config files copied along
    quantize_int8(src, dst, per_channel=False)   dynamic int8 (MatMulInteger); encoders, single-pass models
    quantize_int4(src, dst, block_size=32)       weight-only int4 (MatMulNBits); decoders
    special_tokens(model_dir)                    the bundle manifest's "tokens" field

Every function writes into a temporary directory next to the destination and renames the finished
files into place, so a failed export never leaves half a model behind. Models above ~1.8 GB keep
their weights in an external `<name>.onnx.data` file (protobuf cannot hold more than 2 GB).
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

from edgesight.bundle import staging_dir, staging_file
from edgesight.errors import ExportError

# task -> the .onnx files optimum writes for it (the first is the one a bundle cannot lack)
TASKS = {
    "text-generation-with-past": ("model.onnx",),
    "text2text-generation-with-past": ("encoder_model.onnx", "decoder_model_merged.onnx"),
    "token-classification": ("model.onnx",),
    "feature-extraction": ("model.onnx",),
    "image-classification": ("model.onnx",),
}
# files a runtime bundle may need besides the graphs (tokenizer, preprocessing, model config)
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "spiece.model", "added_tokens.json", "chat_template.jinja", "config.json",
              "generation_config.json", "preprocessor_config.json", "vocab.txt")
EXTERNAL_DATA_BYTES = 1_800_000_000
QUANT_OPS = ("MatMulInteger", "DynamicQuantizeLinear", "ConvInteger", "QLinearMatMul", "QLinearConv",
             "MatMulNBits", "GatherBlockQuantized", "DequantizeLinear", "QuantizeLinear", "MatMul", "Gemm")


def export_onnx(model_dir, out_dir, task: str, *, opset: int | None = None, validate: bool = False,
                last_logits_only: bool = True) -> dict:
    """Export the HF model in `model_dir` to ONNX in `out_dir` (replaced atomically).

    last_logits_only (text-generation-with-past): lm_head runs on the last position only, since
    generation never reads the others (see keep_last_logits).
    Returns {"dir", "task", "files": [names], "sizes": {name: bytes}, "seconds"}."""
    from optimum.exporters.onnx import main_export

    if task not in TASKS:
        raise ExportError(f"ONNX export task {task!r} is not supported; choose one of {', '.join(TASKS)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir}: not a Hugging Face model directory (no config.json); "
                          "pass the merged model directory")
    start = time.perf_counter()
    with staging_dir(out_dir) as tmp:
        try:
            main_export(model_name_or_path=str(model_dir), output=str(tmp), task=task, opset=opset,
                        device="cpu", do_validation=validate, local_files_only=True)
        except Exception as exc:  # optimum raises many types; name the model and the task
            raise ExportError(f"{model_dir}: optimum ONNX export ({task}) failed: {exc}") from exc
        for name in SIDE_FILES:
            if (model_dir / name).is_file() and not (tmp / name).exists():
                shutil.copy2(model_dir / name, tmp / name)
        if last_logits_only and task == "text-generation-with-past" and (tmp / "model.onnx").is_file():
            keep_last_logits(tmp / "model.onnx")
        missing = [f for f in TASKS[task] if not (tmp / f).is_file()]
        if missing:
            raise ExportError(f"{model_dir}: export ({task}) did not produce {', '.join(missing)} "
                              f"(got {', '.join(sorted(p.name for p in tmp.iterdir()))})")
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    return {"dir": str(out_dir), "task": task, "files": files,
            "sizes": {f: (out_dir / f).stat().st_size for f in files},
            "seconds": round(time.perf_counter() - start, 2)}


def quantize_int8(src_onnx, dst_onnx, per_channel: bool = False) -> dict:
    """Dynamic int8 (weights QInt8, activations quantized per call). EnableSubgraph reaches the If
    branches of merged decoders, which are otherwise silently left in fp32.

    Returns {"file", "bytes", "seconds", "ops_before", "ops_after", "quantized": {op: count}}."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = _check_src(src_onnx), Path(dst_onnx)
    before = op_counts(src)
    start = time.perf_counter()
    with staging_file(dst) as tmp:
        quantize_dynamic(fold_transposed_weights(src), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                         use_external_data_format=_needs_external(src),
                         extra_options={"EnableSubgraph": True})
    return _report(dst, before, start)


def quantize_int4(src_onnx, dst_onnx, block_size: int = 32) -> dict:
    """Weight-only int4 (MatMulNBits, symmetric, accuracy_level 4 = int8 compute): on this CPU it
    decodes faster than fp32, where dynamic int8 decodes slower (TOOLCHAIN)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src, dst = _check_src(src_onnx), Path(dst_onnx)
    before = op_counts(src)
    start = time.perf_counter()
    with staging_file(dst) as tmp:
        quantizer = MatMulNBitsQuantizer(fold_transposed_weights(src), block_size=block_size, is_symmetric=True,
                                         accuracy_level=4)
        quantizer.process()
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=_needs_external(src))
    return _report(dst, before, start)


def keep_last_logits(path) -> bool:
    """Rewrite a causal LM so lm_head sees only the last position: logits become (batch, 1, vocab).

    optimum exports logits for every prompt position; a 64-token prompt then pays 64 lm_head
    matmuls (49152 x 576 each for SmolLM2) for one next-token distribution. Returns False (file
    untouched) when `logits` is not produced by a MatMul."""
    import onnx
    from onnx import helper, numpy_helper
    import numpy as np

    model = onnx.load(str(path), load_external_data=False)   # external weights stay where they are
    graph = model.graph
    head = next((n for n in graph.node if "logits" in n.output), None)
    if head is None or head.op_type != "MatMul":
        return False
    hidden = head.input[0]
    consts = {"last_starts": [-1], "last_ends": [np.iinfo(np.int64).max], "last_axes": [1]}
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), f"edgesight_{name}"))
    graph.node.insert(list(graph.node).index(head), helper.make_node(
        "Slice", [hidden] + [f"edgesight_{n}" for n in consts], [f"{hidden}_last"], name="edgesight_last_position"))
    head.input[0] = f"{hidden}_last"
    out = next(o for o in graph.output if o.name == "logits")
    out.type.tensor_type.shape.dim[1].Clear()
    out.type.tensor_type.shape.dim[1].dim_value = 1
    onnx.save(model, str(path))
    return True


def fold_transposed_weights(path):
    """The model with `MatMul(x, Transpose(W))` turned into `MatMul(x, W_t)` for constant W.

    Tied embeddings export as a Transpose of the embedding table feeding lm_head; quantizers only
    touch MatMuls whose weight is an initializer, so without this the largest matmul of a small LM
    (49152 x 576 in SmolLM2: a fifth of the decode FLOPs) stays fp32."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for node in list(graph.node):
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        consumers = users.get(node.output[0], [])
        if not consumers or any(c.op_type != "MatMul" or list(c.input).index(node.output[0]) != 1 for c in consumers):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(inits[node.input[0]])
        graph.initializer.append(numpy_helper.from_array(weight.transpose(perm or None).copy(), node.output[0]))
        graph.node.remove(node)
    return model


def op_counts(path) -> dict[str, int]:
    """Node count per op type, including the subgraphs of If/Loop nodes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: Counter = Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)
    walk(model.graph)
    return dict(counts)


def special_tokens(model_dir) -> dict:
    """The bundle manifest's "tokens" field, read from config.json / generation_config.json:
    {"eos": [ids], "pad": id, "bos": id | None, "decoder_start": id | None}."""
    model_dir = Path(model_dir)
    cfg = {}
    for name in ("config.json", "generation_config.json"):   # generation_config wins, as in transformers
        if (model_dir / name).is_file():
            cfg.update({k: v for k, v in json.loads((model_dir / name).read_text()).items() if v is not None})
    eos = cfg.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if not eos:
        raise ExportError(f"{model_dir}: no eos_token_id in config.json or generation_config.json; "
                          "set it before exporting a generator")
    pad = cfg.get("pad_token_id")
    return {"eos": eos, "pad": eos[0] if pad is None else pad, "bos": cfg.get("bos_token_id"),
            "decoder_start": cfg.get("decoder_start_token_id")}


# --- helpers ------------------------------------------------------------------------------------------

def _check_src(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file; export the model first (export_onnx)")
    return path


def _needs_external(src: Path) -> bool:
    # optimum names external weights "<name>_data", onnxruntime's quantizers "<name>.data"
    data = [src.with_name(src.name + suffix) for suffix in ("_data", ".data")]
    return src.stat().st_size + sum(d.stat().st_size for d in data if d.exists()) > EXTERNAL_DATA_BYTES


def _report(dst: Path, before: dict, start: float) -> dict:
    after = op_counts(dst)
    size = dst.stat().st_size + sum(p.stat().st_size for p in [dst.with_name(dst.name + ".data")] if p.exists())
    return {"file": str(dst), "bytes": size, "seconds": round(time.perf_counter() - start, 2),
            "ops_before": before, "ops_after": after,
            "quantized": {op: after[op] - before.get(op, 0) for op in QUANT_OPS
                          if after.get(op, 0) != before.get(op, 0)}}
