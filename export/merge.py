"""Merge stage: base (HF directory or GGUF file) + peft LoRA adapter -> one HF directory with its tokenizer.

    base_dir = materialize_base("SmolLM2.Q4_1.gguf", work)   # GGUF -> dequantized fp32 HF directory
    merged = merge(base_dir, "adapter/", work / "merged")    # MergeResult(dir, kind, architecture, ...)

The adapter is checked against the base before peft sees it (peft's own errors are size-mismatch
dumps): every LoRA module must exist in the base with matching shapes, and full weights it carries
(modules_to_save, e.g. embeddings) must match the base's vocabulary.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from edgesight.bundle import sha256_file, staging_dir
from edgesight.errors import ExportError

from . import DiskFullError, disk_full
from .gguf import is_sentencepiece

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "spiece.model", "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt")


@dataclass
class MergeResult:
    dir: Path
    kind: str                 # "causal-lm" | "seq2seq"
    architecture: str
    base: str
    adapter: str | None
    adapter_sha256: str | None
    seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dir"] = str(self.dir)
        return d


def materialize_base(base, work_dir) -> Path:
    """An HF directory for `base`: itself if it is one, else the GGUF dequantized by transformers."""
    base = Path(base)
    if base.is_dir():
        if not (base / "config.json").is_file():
            raise ExportError(f"{base}: not a Hugging Face model directory (no config.json); pass an HF "
                              "directory or a .gguf file as --base")
        return base
    if base.suffix != ".gguf" or not base.is_file():
        raise ExportError(f"{base}: --base must be an HF model directory or an existing .gguf file")
    from transformers import AutoModelForCausalLM

    tok = gguf_tokenizer(base, Path(work_dir) / "gguf-tokenizer")
    try:
        model = AutoModelForCausalLM.from_pretrained(base.parent, gguf_file=base.name, dtype="float32")
    except Exception as exc:  # transformers raises ValueError/KeyError/RuntimeError for unknown GGUF layouts
        raise ExportError(f"{base}: transformers cannot load this GGUF ({exc}); use an HF directory as --base") from exc
    out = Path(work_dir) / "base-from-gguf"
    _save(model, tok, out)
    return out


def gguf_tokenizer(gguf_file, save_dir):
    """The HF tokenizer of a GGUF model, saved to `save_dir` and repaired (see repair_bpe_tokenizer),
    so that training, the torch reference and every export tokenize as llama.cpp does on the GGUF."""
    from transformers import AutoTokenizer

    gguf_file, save_dir = Path(gguf_file), Path(save_dir)
    try:
        tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except Exception as exc:
        raise ExportError(f"{gguf_file}: transformers cannot read this GGUF's tokenizer ({exc}); "
                          "use an HF directory as the base") from exc
    tok.save_pretrained(save_dir)
    spm = save_dir / "tokenizer.model"
    if spm.is_file() and not is_sentencepiece(spm):   # TOOLCHAIN: not a sentencepiece file
        spm.unlink()
    repair_bpe_tokenizer(save_dir, gguf_file)
    return AutoTokenizer.from_pretrained(save_dir)


# GGUF pre-tokenizer names -> the splits that come before byte-level BPE (llama.cpp's llama-vocab.cpp)
PRE_SPLITS = {"smollm": [{"type": "Digits", "individual_digits": True}], "gpt-2": [], "default": []}


def repair_bpe_tokenizer(model_dir: Path, gguf_file: Path) -> None:
    """transformers turns a GGUF byte-level BPE vocabulary ("gpt2") into a Llama-style tokenizer
    (byte_fallback, a sentencepiece decoder, no digit split, BOS = eos = <|im_start|> for SmolLM2).
    llama.cpp's converter then writes it back as a sentencepiece vocabulary whose tokenizer crashes
    on the first prompt. Restore what the GGUF declares: byte-level BPE with its pre-tokenizer
    (`tokenizer.ggml.pre`, which the converter then recognises again), its BOS/EOS and add_bos."""
    from gguf import GGUFReader, GGUFValueType

    fields = GGUFReader(str(gguf_file)).fields

    def value(key, default=None):
        f = fields.get(key)
        if f is None:
            return default
        raw = f.parts[f.data[0]]
        return bytes(raw).decode() if f.types[0] == GGUFValueType.STRING else raw.tolist()[0]

    if value("tokenizer.ggml.model") != "gpt2":
        return
    pre = value("tokenizer.ggml.pre", "default")
    if pre not in PRE_SPLITS:
        raise ExportError(f"{gguf_file}: byte-level BPE with pre-tokenizer {pre!r}, which edgesight cannot restore "
                          f"(knows {', '.join(PRE_SPLITS)}); pass the model as an HF directory")
    tok_path, cfg_path = model_dir / "tokenizer.json", model_dir / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok["model"]["byte_fallback"] = False
    tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": PRE_SPLITS[pre] + [byte_level]}
    tok["decoder"] = dict(byte_level)
    id_to_token = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
    id_to_token.update({i: t for t, i in tok["model"]["vocab"].items() if i not in id_to_token})
    bos, eos = value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id")
    add_bos = bool(value("tokenizer.ggml.add_bos_token", False)) and bos is not None
    tok["post_processor"] = ({"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": id_to_token[bos], "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {id_to_token[bos]: {"id": id_to_token[bos], "ids": [bos],
                                                                    "tokens": [id_to_token[bos]]}}}
                             if add_bos else dict(byte_level, trim_offsets=False))
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.update(add_bos_token=add_bos, tokenizer_class="GPT2Tokenizer", legacy=None,
               bos_token=id_to_token.get(bos), eos_token=id_to_token.get(eos))
    for key in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id", "legacy"):
        cfg.pop(key, None)
    tok_path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")


def _save(model, tokenizer, out: Path, tokenizer_from: Path | None = None) -> None:
    """save_pretrained (safetensors) into a temporary sibling, renamed into place when complete.
    `tokenizer_from`: copy that directory's tokenizer files byte for byte over the re-saved ones."""
    try:
        with staging_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            for name in TOKENIZER_FILES if tokenizer_from else ():
                if (tokenizer_from / name).is_file():
                    shutil.copy2(tokenizer_from / name, tmp / name)
    except BaseException as exc:
        if disk_full(exc):
            raise DiskFullError(f"the disk is full while writing {out}; free space there and retry") from exc
        raise


def model_kind(model_dir) -> tuple[str, str]:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    return ("seq2seq" if cfg.get("is_encoder_decoder") else "causal-lm"), arch


def load_model(model_dir, kind: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    return cls.from_pretrained(model_dir, use_safetensors=True, dtype=torch.float32).eval()


def check_adapter(model, adapter_dir: Path) -> None:
    """Raise ExportError unless every tensor of the adapter fits a module of `model`."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"{adapter_dir}: not a peft adapter directory (no adapter_config.json)")
    if not weights.is_file():
        raise ExportError(f"{adapter_dir}: no adapter_model.safetensors (pickle .bin adapters are never read); "
                          "re-save the adapter with save_pretrained(safe_serialization=True)")
    from safetensors import safe_open

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    arch = type(model).__name__
    with safe_open(str(weights), "np") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for key, shape in shapes.items():
        name = key.removeprefix("base_model.model.")
        for marker, dim, attr in ((".lora_A.", 1, "in_features"), (".lora_B.", 0, "out_features"),
                                  (".lora_embedding_A", 1, "num_embeddings"), (".lora_embedding_B", 0, "embedding_dim")):
            if marker in name:
                mod_name = name.split(marker)[0]
                module = modules.get(mod_name)
                if module is None:
                    raise ExportError(f"{adapter_dir}: the adapter adapts {mod_name!r}, which the base ({arch}) does "
                                      "not have; it was trained on a different architecture — use its own base")
                want = getattr(module, attr, None)
                if want is not None and want != shape[dim]:
                    what = "vocabulary" if "embed" in attr else "layer size"
                    raise ExportError(f"{adapter_dir}: {key} expects {attr}={shape[dim]} but the base's {mod_name} has "
                                      f"{want} (different {what}); the adapter was trained on another base model")
                break
        else:  # a full tensor (modules_to_save): must replace a base parameter of the same shape
            target = name.replace(".modules_to_save.default", "").replace(".base_layer", "")
            base_param = params.get(target)
            if base_param is None:
                raise ExportError(f"{adapter_dir}: the adapter carries {target!r}, which the base ({arch}) does not have")
            if tuple(base_param.shape) != shape:
                raise ExportError(f"{adapter_dir}: {target} has shape {shape} but the base's is "
                                  f"{tuple(base_param.shape)} (different vocabulary or size); use the adapter's own base")


def merge(base_dir, adapter_dir, out_dir) -> MergeResult:
    """Load base + adapter, `merge_and_unload`, save an HF directory (safetensors + tokenizer)."""
    import time

    start = time.perf_counter()
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    kind, arch = model_kind(base_dir)
    model = load_model(base_dir, kind)
    sha = None
    if adapter_dir is not None:
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        check_adapter(model, adapter_dir)
        sha = sha256_file(adapter_dir / "adapter_model.safetensors")
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False).merge_and_unload()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    _save(model, tokenizer, out_dir, tokenizer_from=base_dir)
    return MergeResult(out_dir, kind, arch, str(base_dir), str(adapter_dir) if adapter_dir else None, sha,
                       round(time.perf_counter() - start, 2))
