"""Test settings: one thread everywhere, no network, and tiny real models built once per session."""
import os

# Set before any backend is imported: 2-thread OpenMP collapses when anything else runs.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("EDGESIGHT_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("EDGESIGHT_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


# --- vision-language models (tests/kit_vision.py): captioning and the HTTP service ---------------
@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory):
    """A tiny BLIP captioner HF directory (ViT 64 px + BERT decoder, WordPiece, random weights)."""
    from kit_vision import tiny_blip
    return tiny_blip(tmp_path_factory.mktemp("tiny-blip") / "model")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny CLIP HF directory (ViT 32 px + text transformer, byte-level BPE, random weights)."""
    from kit_vision import tiny_clip
    return tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "model")


@pytest.fixture(scope="session")
def blip_bundle(tiny_blip_dir, tiny_clip_dir, tmp_path_factory):
    """tiny BLIP + tiny CLIP exported fp32 by edgesight.export.captioning (validated against torch)."""
    from edgesight.export.captioning import export_blip
    return export_blip(tiny_blip_dir, tmp_path_factory.mktemp("blip-fp32") / "bundle", clip_dir=tiny_clip_dir,
                       precision="fp32", max_new_tokens=12, threads=1, progress=False)


# --- tiny real text models (tests/kit.py), built once per session ---------------------------------

@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny Llama HF directory (sentencepiece BPE, ChatML, eos <|im_end|>)."""
    from kit import tiny_llama
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    """A tiny T5 HF directory (sentencepiece unigram)."""
    from kit import tiny_t5
    return tiny_t5(tmp_path_factory.mktemp("tiny-t5") / "model")


@pytest.fixture(scope="session")
def tiny_llama_onnx(tiny_llama_dir, tmp_path_factory):
    """tiny_llama exported to ONNX (text-generation-with-past) and wrapped in a causal-lm bundle."""
    from kit import onnx_text_bundle
    return onnx_text_bundle(tiny_llama_dir, tmp_path_factory.mktemp("tiny-llama-onnx"), "causal-lm")


@pytest.fixture(scope="session")
def tiny_t5_onnx(tiny_t5_dir, tmp_path_factory):
    """tiny_t5 exported to ONNX (text2text-generation-with-past) and wrapped in a seq2seq bundle."""
    from kit import onnx_text_bundle
    return onnx_text_bundle(tiny_t5_dir, tmp_path_factory.mktemp("tiny-t5-onnx"), "seq2seq")


@pytest.fixture(scope="session")
def tiny_vit_gpt2_dir(tmp_path_factory):
    """A tiny ViT+GPT2 VisionEncoderDecoderModel HF directory (byte-level BPE, random weights)."""
    from kit_vision import tiny_vit_gpt2
    return tiny_vit_gpt2(tmp_path_factory.mktemp("tiny-vit-gpt2") / "model")


@pytest.fixture(scope="session")
def tagger_bundle(tmp_path_factory):
    """Tiny BERT -> LoRA token classifier (shared trainer) -> merged -> ONNX int8 bundle."""
    from test_trainer import tiny_bert

    from edgesight.export.tagger import export_tagger
    from edgesight.training.data import keywords as kwdata
    from edgesight.training.trainer import TrainConfig, train_lora
    work = tmp_path_factory.mktemp("kw")
    base = tiny_bert(work / "bert")
    data = kwdata.build(600, 40, seed=0)
    rep = train_lora(base, data["train"], kind="token-classification", out_dir=work / "run",
                     config=TrainConfig(steps=60, batch_size=16, lr=5e-3, rank=8, alpha=16, labels=kwdata.LABELS,
                                        save_every=0, threads=1, max_length=96),
                     format_example=kwdata.format_extractive, progress=False)
    return export_tagger(base, rep.adapter_dir, work / "bundle", precision="int8", threads=1, progress=False)
