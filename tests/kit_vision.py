"""Tiny *real* vision-language models for tests, built from config objects in the test run (no Hub).

    tiny_blip(out_dir)   BlipForConditionalGeneration: ViT 2 layers at 64 px + BERT decoder 2 layers,
                         WordPiece tokenizer trained offline, [DEC] bos like the real BLIP
    tiny_clip(out_dir)   CLIPModel: ViT 2 layers at 32 px + text 2 layers, CLIP byte-level BPE (</w>)
                         trained offline, CLIPProcessor (shortest-edge resize + centre crop)
Both save normal Hugging Face directories (safetensors + tokenizer + preprocessor files).
"""
from __future__ import annotations

import random
from pathlib import Path

WORDS = ("cat dog man woman child bird horse car bus train boat plane street road table chair bed pizza "
         "cup coffee beach sky tree grass field mountain snow rocket flower phone book window door red "
         "blue green white black small large sitting standing walking playing riding eating holding").split()
_TEMPLATES = ["a {a} sitting on a {b}", "a {c} {a} next to the {b}", "two {a}s and a {b} in the {d}",
              "a {a} is {e} near a {b}", "the {c} {a} on a {d}"]


def captions(n: int = 400, seed: int = 0) -> list[str]:
    """Caption-like sentences over WORDS: enough text to train a small vocabulary."""
    rng = random.Random(seed)
    nouns, adjs, verbs = WORDS[:31], WORDS[31:36], WORDS[36:]
    return [rng.choice(_TEMPLATES).format(a=rng.choice(nouns), b=rng.choice(nouns), c=rng.choice(adjs),
                                          d=rng.choice(nouns), e=rng.choice(verbs)) for _ in range(n)]


def _sharpen(module, scale: float) -> None:
    # Random init at 0.02 gives nearly flat logits, so argmax would hinge on float noise; scaling the
    # output layer makes greedy/beam choices clear-cut and comparable across runtimes.
    import torch

    with torch.no_grad():
        module.weight.mul_(scale)


def tiny_blip(out_dir, *, seed: int = 0, image_size: int = 64) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(captions(), trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    vocab = sorted(wp.get_vocab().items(), key=lambda kv: kv[1])
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(out_dir / "vocab.txt"), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.model_input_names = ["input_ids", "attention_mask"]
    (out_dir / "vocab.txt").unlink()
    config = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                         sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                         encoder_hidden_size=64),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=16),
        projection_dim=64)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    _sharpen(model.text_decoder.cls.predictions.decoder, 20.0)
    model.save_pretrained(out_dir, safe_serialization=True)
    BlipProcessor(BlipImageProcessor(size={"height": image_size, "width": image_size}), tok).save_pretrained(out_dir)
    return out_dir


def tiny_clip(out_dir, *, seed: int = 0) -> Path:
    import json

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<|startoftext|>", "<|endoftext|>"]
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([c.lower() for c in captions()] + WORDS, trainer)
    model_json = json.loads(bpe.to_str())["model"]
    (out_dir / "vocab.json").write_text(json.dumps(model_json["vocab"]), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model_json["merges"]]
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizerFast(vocab_file=str(out_dir / "vocab.json"), merges_file=str(out_dir / "merges.txt"))
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    proc = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tok)
    proc.save_pretrained(out_dir)
    return out_dir


def tiny_vit_gpt2(out_dir, *, seed: int = 0) -> Path:
    """VisionEncoderDecoderModel: ViT 2 layers at 32 px + GPT-2 2 layers with cross-attention,
    byte-level BPE trained offline (the vit-gpt2-image-captioning layout: bos = eos = pad)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, GenerationConfig, ViTConfig,
                              ViTImageProcessor, ViTModel, VisionEncoderDecoderModel)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(captions(), trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(out_dir / "tokenizer.json"))
    tok = GPT2TokenizerFast(tokenizer_file=str(out_dir / "tokenizer.json"), bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    encoder = ViTModel(ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=32, patch_size=8))
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=2, n_positions=64,
                                         add_cross_attention=True, bos_token_id=eos, eos_token_id=eos,
                                         tie_word_embeddings=False))
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    model.config.decoder_start_token_id = model.config.pad_token_id = model.config.eos_token_id = eos
    model.generation_config = GenerationConfig(decoder_start_token_id=eos, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    _sharpen(model.decoder.lm_head, 20.0)   # untied: tied weights would just echo the start token (= eos)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out_dir)
    return out_dir
