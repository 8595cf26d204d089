"""The shared LoRA trainer: one loop for causal LMs, seq2seq models and token classifiers.

    from edgesight.training.trainer import TrainConfig, train_lora
    report = train_lora("path/to/base-or-model.gguf", train, kind="causal", out_dir="runs/kw",
                        config=TrainConfig(steps=300), val_examples=val)
    report.adapter_dir   # adapter_model.safetensors + adapter_config.json (peft format)

Examples are {"input", "output"} dicts; `format_example` turns one into what the model sees:
- causal / seq2seq: (prompt, answer) strings. For causal chat models the prompt is wrapped in the
  tokenizer's chat template (optional `system` message) and the answer ends with the template's
  end-of-turn text, so training sees exactly what inference will send. Loss is on the answer only.
- token-classification: (text, spans) with spans = [(start, end, label), ...] character ranges;
  tokens get BIO tags over `TrainConfig.labels` (["O", "B-X", "I-X", ...]).

Everything goes through accelerate's `Accelerator` (the global batch sharded by process index, losses
token-weighted across processes, checkpoints and the report written by the main process), so
`accelerate launch --num_processes N -m edgesight.cli train ...` runs it unchanged; two CPU processes
(gloo) were checked here against one process on the same global batch (tests/test_multiprocess_training.py,
docs/scale.md). Checkpoints (adapter + optimizer state) are safetensors and
JSON only, written atomically to `out_dir/checkpoint`; a second call with the same `out_dir` resumes
from it. Batches are drawn from a generator seeded by (seed, step), so a resumed run sees the same
batches as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..bundle import atomic_write_bytes, sha256_file, staging_dir
from ..errors import TrainingError
from ..progress import bar

KINDS = ("causal", "seq2seq", "token-classification")
# Output heads stay frozen or are saved whole (modules_to_save), never LoRA-wrapped: LoRA on the
# embeddings/lm_head does not convert to GGUF, and a fresh classifier head must be trained fully.
HEADS = {"lm_head", "classifier", "score", "qa_outputs", "embed_out"}


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int | None = None      # None = 5% of steps
    weight_decay: float = 0.0
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None   # None = every linear layer except the output head
    modules_to_save: list[str] | None = None  # modules trained and saved whole (e.g. ["encoder"]: a full fine-tune)
    seed: int = 0
    max_length: int = 128
    eval_every: int = 0                  # 0 = only at the end
    save_every: int = 50                 # checkpoint period in steps (0 = only at the end)
    stop_after: int | None = None        # checkpoint at this step and return (a time-limited slot); rerun resumes
    val_limit: int = 256                 # validation examples used for the loss/metrics
    threads: int | None = None           # torch intra-op threads (None = leave torch's choice)
    system: str | None = None            # system message for causal chat models
    chat_template: bool | None = None    # None = use it when the tokenizer has one
    labels: list[str] | None = None      # token-classification tag set, "O" first
    data_version: str = ""               # recorded in the recipe (e.g. the data builder's version)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class TrainReport:
    out_dir: str
    adapter_dir: str
    kind: str
    base: str
    steps: int
    loss_curve: list = field(default_factory=list)      # [[step, train loss], ...]
    validation: list = field(default_factory=list)      # [{"step", "loss", **metrics}, ...]
    recipe: dict = field(default_factory=dict)          # seed, steps, data version, config, base
    timings: dict = field(default_factory=dict)         # load_s, train_s, s_per_step
    resumed_from: int = 0

    @property
    def final_metrics(self) -> dict:
        return self.validation[-1] if self.validation else {}

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- loading

def load_base(base: str | os.PathLike, kind: str):
    """(model, tokenizer) from an HF directory or a .gguf file (dequantized to fp32 by transformers)."""
    import transformers as tf
    path = Path(base)
    if not path.exists():
        raise TrainingError(f"base model {base} does not exist; pass an HF model directory or a .gguf file "
                            "(no Hub downloads: install the weights locally first)")
    kw = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    where = str(path.parent if kw else path)
    auto = {"causal": tf.AutoModelForCausalLM, "seq2seq": tf.AutoModelForSeq2SeqLM,
            "token-classification": tf.AutoModelForTokenClassification}[kind]
    if kw:  # the tokenizer llama.cpp and every export use, not transformers' lossy GGUF reading
        import tempfile
        from edgesight.export.merge import gguf_tokenizer
        tok = gguf_tokenizer(path, tempfile.mkdtemp(prefix="edgesight-tok-"))
    else:
        tok = tf.AutoTokenizer.from_pretrained(where)
    return auto, where, kw, tok


def default_target_modules(model) -> list[str]:
    import torch
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    found = sorted(names - HEADS)
    if not found:
        raise TrainingError(f"{type(model).__name__} has no linear layers to adapt; pass target_modules")
    return found


# ----------------------------------------------------------------------------- encoding

def chat_parts(tok, prompt: str, answer: str, system: str | None) -> tuple[str, str]:
    """Render (prompt, answer) through the chat template: the prompt ends with the generation
    prompt, the answer carries whatever the template appends after an assistant turn."""
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": prompt}]
    head = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(head):  # templates that rewrite earlier turns: fall back to plain text + eos
        return head, answer + (tok.eos_token or "")
    return head, full[len(head):]


def uses_chat(tok, config: TrainConfig) -> bool:
    has = bool(getattr(tok, "chat_template", None))
    if config.chat_template and not has:
        raise TrainingError("chat_template=True but the tokenizer has no chat template")
    return has if config.chat_template is None else config.chat_template


def encode_causal(tok, prompt: str, answer: str, config: TrainConfig, chat: bool) -> dict:
    if chat:
        prompt, answer = chat_parts(tok, prompt, answer, config.system)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]  # the template writes BOS itself
    else:
        p_ids = tok(prompt)["input_ids"]
        answer = answer + (tok.eos_token or "")
    a_ids = tok(answer, add_special_tokens=False)["input_ids"]
    ids = (p_ids + a_ids)[: config.max_length]
    labels = ([-100] * len(p_ids) + a_ids)[: config.max_length]
    return {"input_ids": ids, "labels": labels, "truncated": len(p_ids) + len(a_ids) > config.max_length}


def encode_seq2seq(tok, prompt: str, answer: str, config: TrainConfig) -> dict:
    ids = tok(prompt, truncation=True, max_length=config.max_length)["input_ids"]
    labels = tok(text_target=answer, truncation=True, max_length=config.max_length)["input_ids"]
    return {"input_ids": ids, "labels": labels, "truncated": False}


def encode_tokens(tok, text: str, spans: Sequence, config: TrainConfig) -> dict:
    """BIO tags per token from character spans; special tokens are ignored by the loss."""
    label_id = {name: i for i, name in enumerate(config.labels)}
    enc = tok(text, truncation=True, max_length=config.max_length, return_offsets_mapping=True)
    labels = []
    for start, end in enc["offset_mapping"]:
        if start == end:
            labels.append(-100)
            continue
        tag = "O"
        for s, e, name in spans:
            if start < e and end > s:
                tag = ("B-" if start <= s else "I-") + name
                break
        if tag not in label_id:
            raise TrainingError(f"tag {tag!r} is not in labels {config.labels}")
        labels.append(label_id[tag])
    return {"input_ids": enc["input_ids"], "labels": labels, "truncated": len(enc["input_ids"]) >= config.max_length}


def default_format(example: dict):
    out = example["output"]
    return example["input"], out if isinstance(out, str) else json.dumps(out, ensure_ascii=False)


def encode_all(tok, examples, kind, config, format_example, chat) -> list[dict]:
    encoded = []
    for ex in examples:
        a, b = format_example(ex)
        if kind == "causal":
            encoded.append(encode_causal(tok, a, b, config, chat))
        elif kind == "seq2seq":
            encoded.append(encode_seq2seq(tok, a, b, config))
        else:
            encoded.append(encode_tokens(tok, a, b, config))
    return encoded


def collate(rows: list[dict], pad_id: int):
    import torch
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab_width = max(len(r["labels"]) for r in rows)
    labels = torch.full((len(rows), lab_width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
        labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------- checkpoints

def _save_checkpoint(ckpt: Path, model, optimizer, state: dict) -> None:
    """Adapter (peft safetensors) + optimizer tensors (safetensors) + JSON state, renamed into place."""
    import torch
    from safetensors.torch import save_file
    with staging_dir(ckpt) as tmp:
        model.save_pretrained(tmp)
        opt = optimizer.state_dict()
        tensors = {f"{idx}.{name}": (t if torch.is_tensor(t) else torch.tensor(t)).detach().contiguous()
                   for idx, st in opt["state"].items() for name, t in st.items()}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = dict(state, param_groups=opt["param_groups"], torch_rng=torch.get_rng_state().tolist())
        (tmp / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")


def _load_checkpoint(ckpt: Path, model, optimizer) -> dict:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    flat = load_file(str(ckpt / "optimizer.safetensors"))
    opt_state: dict = {}
    for key, t in flat.items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = t
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return state


def data_fingerprint(examples) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- the loop

def train_lora(base, train_examples: Sequence[dict], *, kind: str = "causal", out_dir,
               config: TrainConfig | None = None, val_examples: Sequence[dict] | None = None,
               format_example: Callable | None = None,
               evaluate: Callable | None = None, progress: bool | None = None,
               adapter_files: dict[str, str] | None = None) -> TrainReport:
    """Train a LoRA adapter on `base` and write it to `out_dir/adapter` with `out_dir/report.json`.
    `adapter_files` ({name: text}, e.g. vocab.json) are written into the adapter with it, once.

    `evaluate(model, tokenizer, val_examples) -> dict` adds task metrics (e.g. F1) to each validation
    point; the model is the peft model in eval mode. Returns the TrainReport also written as JSON.
    """
    config = config or TrainConfig()
    if kind not in KINDS:
        raise TrainingError(f"kind must be one of {KINDS}, got {kind!r}")
    if not train_examples:
        raise TrainingError("no training examples; build the data set first")
    if kind == "token-classification" and not config.labels:
        raise TrainingError("token-classification needs TrainConfig.labels, e.g. ['O', 'B-OBJ', 'I-OBJ']")
    if config.steps < 1 or config.batch_size < 1 or config.grad_accum < 1:
        raise TrainingError("steps, batch_size and grad_accum must be >= 1")
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, TaskType, get_peft_model

    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(out_dir)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, cpu=not torch.cuda.is_available())
    torch.manual_seed(config.seed)
    format_example = format_example or default_format

    t0 = time.perf_counter()
    auto, where, kw, tok = load_base(base, kind)
    model_kw = {}
    if kind == "token-classification":
        model_kw = {"num_labels": len(config.labels), "id2label": dict(enumerate(config.labels)),
                    "label2id": {n: i for i, n in enumerate(config.labels)}}
    model = auto.from_pretrained(where, **kw, **model_kw, dtype=torch.float32)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    task_type = {"causal": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM,
                 "token-classification": TaskType.TOKEN_CLS}[kind]
    lora = LoraConfig(task_type=task_type, r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=config.target_modules or default_target_modules(model),
                      modules_to_save=config.modules_to_save)
    model = get_peft_model(model, lora)
    chat = kind == "causal" and uses_chat(tok, config)
    train = encode_all(tok, train_examples, kind, config, format_example, chat)
    val = encode_all(tok, list(val_examples or [])[: config.val_limit], kind, config, format_example, chat)
    load_s = time.perf_counter() - t0

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    recipe = {"seed": config.seed, "steps": config.steps, "kind": kind, "base": str(base),
              "base_sha256_16": _file_hash(Path(base)), "data_version": config.data_version,
              "train_examples": len(train_examples), "train_fingerprint": data_fingerprint(train_examples),
              "val_examples": len(val), "chat_template": chat, "system": config.system,
              "config": config.to_dict(), "world_size": accelerator.num_processes,
              "versions": _versions()}
    if chat:
        recipe["prompt_example"] = chat_parts(tok, "{input}", "{output}", config.system)
    point_metrics = None
    if evaluate is not None:
        def point_metrics():
            return evaluate(accelerator.unwrap_model(model), tok, list(val_examples)[: config.val_limit])
    return run_loop(model=model, optimizer=optimizer, accelerator=accelerator, train=train, val=val,
                    collate=lambda rows: collate(rows, tok.pad_token_id), config=config, out=out, recipe=recipe,
                    desc=f"LoRA {kind}", load_s=load_s, point_metrics=point_metrics, progress=progress,
                    items=lambda batch: loss_items(batch["labels"], shifted=kind == "causal"),
                    adapter_files=adapter_files)


def loss_items(labels, shifted: bool) -> int:
    """How many label tokens transformers' loss averages over (causal LMs predict token t+1 from t)."""
    return int(((labels[:, 1:] if shifted else labels) != -100).sum())


def run_loop(*, model, optimizer, accelerator, train: list, val: list, collate: Callable, config: TrainConfig,
             out: Path, recipe: dict, desc: str, load_s: float, point_metrics: Callable | None = None,
             progress: bool | None = None, items: Callable | None = None,
             adapter_files: dict[str, str] | None = None) -> TrainReport:
    """The loop every LoRA trainer shares: resume from out/checkpoint (same data only), linear warm-up
    then decay, seeded batches (a resumed run sees the same ones), validation loss (+ `point_metrics()`),
    checkpoints, and finally out/adapter (written atomically, with recipe.json) and out/report.json.
    `model` and `optimizer` are already prepared by `accelerator`; `collate(rows)` returns model inputs.

    Several processes (`accelerate launch`) train on the same global batch as one: step s draws the same
    batch_size x grad_accum x processes examples whatever the process count and each process takes every
    n-th; `items(batch)` counts the loss's tokens, so each micro-batch's mean loss is re-weighted to its
    share of the global batch's tokens and the averaged gradient equals one process's on the whole batch
    (without `items`, every micro-batch weighs the same). The loss curve is the global batch's."""
    import torch

    ckpt = out / "checkpoint"
    unwrapped = accelerator.unwrap_model(model)
    report = TrainReport(str(out), str(out / "adapter"), recipe["kind"], recipe["base"], config.steps, recipe=recipe)
    start = 0
    if (ckpt / "trainer_state.json").is_file():
        state = _load_checkpoint(ckpt, unwrapped, optimizer)
        if state["recipe"]["train_fingerprint"] != recipe["train_fingerprint"]:
            raise TrainingError(f"{ckpt} was trained on other data; delete it or use another out_dir")
        start = report.resumed_from = state["step"]
        report.loss_curve, report.validation = state["loss_curve"], state["validation"]

    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, config.steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 10%
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return config.lr * (1.0 - 0.9 * (step - warmup) / max(1, config.steps - warmup))

    def on_device(batch: dict) -> dict:
        return {k: v.to(accelerator.device) for k, v in batch.items()}

    def batch_for(step: int):
        rng = np.random.default_rng([config.seed, step])
        n = config.batch_size * config.grad_accum * accelerator.num_processes
        idx = rng.choice(len(train), size=n, replace=len(train) < n)
        mine = idx[accelerator.process_index::accelerator.num_processes]
        for m in range(config.grad_accum):
            yield on_device(collate([train[i] for i in mine[m * config.batch_size:(m + 1) * config.batch_size]]))

    def count(batch: dict) -> float:
        return float(items(batch)) if items is not None else 1.0

    def validate(step: int) -> None:
        if not val:
            return
        model.eval()
        with torch.no_grad():
            batches = [on_device(collate(val[i:i + config.batch_size])) for i in range(0, len(val), config.batch_size)]
            losses, counts = [model(**b).loss.item() for b in batches], [count(b) for b in batches]
            point = {"step": step, "loss": float(np.dot(losses, counts) / max(sum(counts), 1.0))}  # per token
            if point_metrics is not None and accelerator.is_main_process:
                point.update(point_metrics())
        model.train()
        report.validation.append(point)

    def save(step: int) -> None:
        if accelerator.is_main_process:
            _save_checkpoint(ckpt, unwrapped, optimizer, {"step": step, "recipe": recipe,
                                                          "loss_curve": report.loss_curve,
                                                          "validation": report.validation})
        accelerator.wait_for_everyone()

    t1 = time.perf_counter()
    model.train()
    share = accelerator.num_processes * config.grad_accum   # backward divides by grad_accum, DDP by processes
    end = min(config.steps, config.stop_after or config.steps)
    for step in bar(range(start, end), desc=desc, total=end - start,
                    progress=progress if accelerator.is_main_process else False):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        batches = list(batch_for(step))
        counts = [count(b) for b in batches]
        n_global = accelerator.reduce(torch.tensor(sum(counts), device=accelerator.device), "sum").item()
        weighted = torch.zeros((), device=accelerator.device)
        for batch, n in zip(batches, counts):
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss * (n * share / max(n_global, 1.0)))
                optimizer.step()
                optimizer.zero_grad()
            weighted += loss.detach() * n
        total = accelerator.reduce(weighted, "sum").item() / max(n_global, 1.0)
        if not math.isfinite(total):
            raise TrainingError(f"loss became {total} at step {step + 1}; lower the learning rate (now {config.lr})")
        report.loss_curve.append([step + 1, round(total, 5)])
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
            validate(step + 1)
        if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < config.steps:
            save(step + 1)
    train_s = time.perf_counter() - t1
    if end < config.steps:                 # stop_after: checkpoint and leave; the same call resumes
        if start < end:
            save(end)
        return report
    if not report.validation or report.validation[-1]["step"] != config.steps:
        validate(config.steps)
    save(config.steps)

    if accelerator.is_main_process:
        with staging_dir(out / "adapter") as tmp:
            unwrapped.save_pretrained(tmp)
            (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2, ensure_ascii=False), encoding="utf-8")
            for name, text in (adapter_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
        done = config.steps - start
        report.timings = {"load_s": round(load_s, 2), "train_s": round(train_s, 2),
                          "s_per_step": round(train_s / done, 3) if done else None}
        atomic_write_bytes(out / "report.json", json.dumps(report.to_dict(), indent=2, ensure_ascii=False).encode())
    accelerator.wait_for_everyone()
    return report


def _file_hash(path: Path) -> str | None:
    """Short sha256 of a single-file base (GGUF); directories are identified by path only."""
    return sha256_file(path)[:16] if path.is_file() else None


def _versions() -> dict:
    import importlib.metadata as md
    out = {}
    for name in ("torch", "transformers", "peft", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def load_report(out_dir) -> dict:
    return json.loads((Path(out_dir) / "report.json").read_text(encoding="utf-8"))
