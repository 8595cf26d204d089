"""The shared LoRA trainer on tiny real models (Llama, T5, BERT) built in the test run: real peft
training, answer-only loss, resumable safetensors checkpoints, typed errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesight.errors import TrainingError

EXAMPLES = [{"input": f"Segment the {a} but not the {b}", "output": a}
            for a, b in [("cats", "dogs"), ("cars", "buses"), ("chairs", "tables"), ("cups", "plates"),
                         ("birds", "kites"), ("boats", "ships"), ("horses", "cows"), ("books", "lamps")]]


def tiny_bert(out_dir, *, vocab_size: int = 1200, seed: int = 0) -> Path:
    """A 2-layer BertModel (hidden 64) with a WordPiece tokenizer trained offline: the layout of
    all-MiniLM-L6-v2 (BertModel weights + tokenizer.json), at a size that trains in seconds."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from edgesight.training.keywords import build
    from kit import corpus
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    text = corpus() + [ex["input"] for ex in build(600, 50, seed=1)["train"]]
    tok.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(out_dir)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=256)
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    from kit import tiny_llama
    return tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert"))


def _config(**kw):
    from edgesight.training.trainer import TrainConfig
    return TrainConfig(**{"steps": 4, "batch_size": 2, "lr": 1e-3, "rank": 4, "alpha": 8, "save_every": 2,
                          "max_length": 64, "seed": 3, "threads": 1, **kw})


def test_causal_labels_cover_only_the_answer(llama_dir):
    from transformers import AutoTokenizer

    from edgesight.training.trainer import chat_parts, encode_causal
    tok = AutoTokenizer.from_pretrained(llama_dir)
    row = encode_causal(tok, "Segment the cats", "Cat", _config(system="List objects."), chat=True)
    n_prompt = sum(label == -100 for label in row["labels"])
    answer = tok.decode(row["input_ids"][n_prompt:])
    assert row["labels"][:n_prompt] == [-100] * n_prompt and n_prompt > 5
    assert "Cat" in answer and "<|im_end|>" in answer          # the model learns to stop
    head, _ = chat_parts(tok, "Segment the cats", "Cat", "List objects.")   # what inference sends
    assert head.endswith("<|im_start|>assistant\n")
    assert row["input_ids"][:n_prompt] == tok(head, add_special_tokens=False)["input_ids"]
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]


def test_causal_training_writes_adapter_report_and_checkpoint(llama_dir, tmp_path):
    from edgesight.training.trainer import load_report, train_lora
    calls = []

    def evaluate(model, tok, examples):
        calls.append(len(examples))
        return {"answers": len(examples)}

    rep = train_lora(llama_dir, EXAMPLES, kind="causal", out_dir=tmp_path, config=_config(eval_every=2, system="x"),
                     val_examples=EXAMPLES[:3], evaluate=evaluate, progress=False)
    assert [s for s, _ in rep.loss_curve] == [1, 2, 3, 4]
    assert [v["step"] for v in rep.validation] == [2, 4] and calls == [3, 3]
    assert rep.validation[-1]["answers"] == 3 and rep.validation[-1]["loss"] > 0
    adapter = Path(rep.adapter_dir)
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    recipe = json.loads((adapter / "recipe.json").read_text())
    assert recipe["seed"] == 3 and recipe["steps"] == 4 and recipe["chat_template"] is True
    assert load_report(tmp_path)["recipe"]["train_fingerprint"] == recipe["train_fingerprint"]
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert "lm_head" not in cfg["target_modules"] and "q_proj" in cfg["target_modules"]
    # nothing pickled anywhere in the output
    assert all(p.suffix in (".safetensors", ".json", ".md") for p in tmp_path.rglob("*") if p.is_file())


def test_interrupted_run_resumes_to_the_same_adapter(llama_dir, tmp_path):
    from safetensors.numpy import load_file

    from edgesight.training.trainer import train_lora
    cfg = _config(steps=4, save_every=2, dropout=0.1)
    full = train_lora(llama_dir, EXAMPLES, kind="causal", out_dir=tmp_path / "full", config=cfg, progress=False)

    def crash(model, tok, examples):
        raise KeyboardInterrupt  # stands for a kill after the step-2 checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_lora(llama_dir, EXAMPLES, kind="causal", out_dir=tmp_path / "cut", config=cfg,
                   val_examples=EXAMPLES[:1], evaluate=crash, progress=False)
    assert json.loads((tmp_path / "cut/checkpoint/trainer_state.json").read_text())["step"] == 2
    resumed = train_lora(llama_dir, EXAMPLES, kind="causal", out_dir=tmp_path / "cut", config=cfg, progress=False)
    assert resumed.resumed_from == 2 and len(resumed.loss_curve) == 4
    a = load_file(str(Path(full.adapter_dir) / "adapter_model.safetensors"))
    b = load_file(str(Path(resumed.adapter_dir) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]).max() < 1e-5, k
    assert resumed.loss_curve == full.loss_curve


def test_resume_refuses_other_data(llama_dir, tmp_path):
    from edgesight.training.trainer import train_lora
    train_lora(llama_dir, EXAMPLES, kind="causal", out_dir=tmp_path, config=_config(steps=2), progress=False)
    with pytest.raises(TrainingError, match="other data"):
        train_lora(llama_dir, EXAMPLES[:4], kind="causal", out_dir=tmp_path, config=_config(steps=3), progress=False)


def test_seq2seq_trains(tmp_path):
    from kit import tiny_t5

    from edgesight.training.trainer import train_lora
    base = tiny_t5(tmp_path / "t5")
    rep = train_lora(base, EXAMPLES, kind="seq2seq", out_dir=tmp_path / "run", config=_config(steps=3),
                     val_examples=EXAMPLES[:2], progress=False)
    assert len(rep.loss_curve) == 3 and rep.validation[-1]["loss"] > 0
    cfg = json.loads((Path(rep.adapter_dir) / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_2_SEQ_LM"


def test_token_classification_learns_tags(bert_dir, tmp_path):
    from edgesight.training.keywords import LABELS, build, format_extractive
    from edgesight.training.trainer import train_lora
    data = build(300, 40, seed=2)
    rep = train_lora(bert_dir, data["train"], kind="token-classification", out_dir=tmp_path,
                     config=_config(steps=40, batch_size=8, lr=5e-3, rank=8, alpha=16, labels=LABELS, save_every=0),
                     val_examples=data["val"], format_example=format_extractive, progress=False)
    losses = [loss for _, loss in rep.loss_curve]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    cfg = json.loads((Path(rep.adapter_dir) / "adapter_config.json").read_text())
    assert "classifier" in cfg["modules_to_save"] and "classifier" not in cfg["target_modules"]


@pytest.mark.parametrize("kwargs, match", [
    ({"train_examples": []}, "no training examples"),
    ({"kind": "vision"}, "kind must be one of"),
    ({"kind": "token-classification"}, "needs TrainConfig.labels"),
    ({"base": "/nonexistent/model"}, "does not exist"),
    ({"config": "zero-steps"}, "must be >= 1"),
])
def test_bad_arguments_raise_training_error(llama_dir, tmp_path, kwargs, match):
    from edgesight.training.trainer import train_lora
    args = {"base": llama_dir, "train_examples": EXAMPLES, "kind": "causal", "config": _config()}
    args.update(kwargs)
    if args["config"] == "zero-steps":
        args["config"] = _config(steps=0)
    with pytest.raises(TrainingError, match=match):
        train_lora(args.pop("base"), args.pop("train_examples"), out_dir=tmp_path, progress=False, **args)


def test_train_cli_dispatches_to_the_task_module():
    import argparse

    from edgesight.training import cli
    parser = argparse.ArgumentParser()
    cli.add_cli_arguments(parser)
    args = parser.parse_args(["keywords", "--out", "x", "--steps", "7", "--rank", "4"])
    config = cli.config_from_args(args, labels=["O"])
    assert args.train_module.__name__ == "edgesight.training.keywords"
    assert (config.steps, config.rank, config.labels) == (7, 4, ["O"])
    with pytest.raises(TrainingError, match="name the task"):
        cli.main(argparse.Namespace())
