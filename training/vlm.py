"""LoRA fine-tuning of a SmolVLM / Idefics3 model on a product catalogue, the seeds' way (issue 15):

    edgesight train products --family vlm --catalog catalog.csv --base VLM_DIR --out runs/vlm
    edgesight export --task products --adapter runs/vlm/adapter --out bundles/vlm   # base read from the recipe

Each CSV row (`title, category3_code, full_price, local_image_path`, image paths relative to the CSV)
becomes one conversation, as seeds 002/004 build theirs: the user turn is the photo and
"What is shown in this image?" (tasks.vlm.SEED_PROMPT), the assistant turn
`Product: {title}, Category: {category3_code}, Full Price: {full_price}`, rendered through the model's
chat template (the one the GGUF carries and llama.cpp's MTMDChatHandler renders at run time) and the
Idefics3 processor (image tokens, pixel values). The loss is on the answer only (labels -100 on the
prompt and the image tokens). LoRA sits on the language model's linear layers (`--train-connector`:
also on the vision-to-text projection); the vision tower stays frozen.

The loop is training/trainer.py's run_loop, as for the text tasks: seeded batches, resume from
OUT/checkpoint, validation loss, progress bar (--no-progress), OUT/adapter + OUT/report.json. A
finished run also writes OUT/merged: the adapter merged into the base, an HF directory that
`edgesight export` (or export.vlm.export_vlm_bundle) turns into a bundle of kind "vlm".

Rows that cannot be trained on (missing or unreadable photo, empty title, bad price, a category the
answer grammar cannot write, a prompt longer than --max-length) stop the run before any training with
VLMDataError, which lists every such row by its CSV line.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from edgesight.errors import TrainingError

TEXT_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONNECTOR = "connector.modality_projection.proj"


class VLMDataError(TrainingError):
    """Catalogue rows that cannot be trained on; `.rows` is [(csv line, title, problem), ...]."""

    def __init__(self, path, rows):
        self.rows = rows
        shown = "; ".join(f"line {line}{f' ({title[:30]})' if title else ''}: {problem}" for line, title, problem in rows[:10])
        more = f"; and {len(rows) - 10} more" if len(rows) > 10 else ""
        super().__init__(f"{path}: {len(rows)} row(s) cannot be trained on: {shown}{more}; fix or remove them")


@dataclass
class Row:
    line: int
    title: str
    category: str
    price: float
    image: str


def read_rows(csv_path) -> list[Row]:
    """Every row of a seed-style catalogue CSV, checked; any bad row -> VLMDataError (all of them, by line).
    Several rows may share a title (several photos of one product)."""
    from edgesight.catalog import CATEGORY_COLUMNS, IMAGE_COLUMNS, PRICE_COLUMNS, TITLE_COLUMNS, parse_price
    from edgesight.errors import CatalogError
    from edgesight.tasks.vlm import answer_problem

    path = Path(csv_path)
    if not path.is_file():
        raise CatalogError(f"{path}: catalogue CSV not found; pass a CSV with columns title, category3_code, "
                           "full_price, local_image_path")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 (byte {exc.start}); save the CSV as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    cols = {}
    for key, names in (("title", TITLE_COLUMNS), ("category", CATEGORY_COLUMNS), ("price", PRICE_COLUMNS),
                       ("image", IMAGE_COLUMNS)):
        found = next((h for h in reader.fieldnames or [] if h.strip().lower() in names), None)
        if found is None:
            raise CatalogError(f"{path}: no {key} column (header: {', '.join(header) or 'empty'}); expected one of "
                               f"{', '.join(names)}")
        cols[key] = found
    rows, bad = [], []
    try:
        for row in reader:
            line = reader.line_num
            title = (row.get(cols["title"]) or "").strip()
            category = (row.get(cols["category"]) or "").strip()
            try:
                price = parse_price(row.get(cols["price"]))
            except ValueError as exc:
                bad.append((line, title, f"bad full_price: {exc}"))
                continue
            problem = answer_problem(title, category, price)
            if problem:
                bad.append((line, title, problem))
                continue
            image = (row.get(cols["image"]) or "").strip()
            image_path = Path(image) if Path(image).is_absolute() else path.parent / image
            try:
                found = bool(image) and image_path.is_file()
            except (OSError, ValueError):
                found = False
            if not found:
                bad.append((line, title, f"image not found: {image_path if image else '(empty path)'}"))
                continue
            if not _readable(image_path):
                bad.append((line, title, f"not a readable image: {image_path}; re-save it as JPEG or PNG"))
                continue
            rows.append(Row(line, title, category, price, str(image_path)))
    except csv.Error as exc:
        raise CatalogError(f"{path}: line {reader.line_num}: unreadable CSV ({exc})") from None
    if bad:
        raise VLMDataError(path, bad)
    if not rows:
        raise CatalogError(f"{path}: no rows; add rows with a title, a category3_code, a full_price and a photo")
    return rows


def _readable(path: Path) -> bool:
    """Header check (a format PIL knows, with a size); the pixels are decoded when the row is encoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.width > 0 and im.height > 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def chat_texts(tok, prompt: str, answer: str) -> tuple[str, str]:
    """(prompt text ending with the generation prompt, the answer as the template writes it after that),
    the user turn being an image then `prompt`, as the runtime sends it."""
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    head = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                                   tokenize=False)
    if not full.startswith(head):
        raise TrainingError("the model's chat template rewrites earlier turns; cannot separate prompt and answer")
    return head, full[len(head):]


def load_processor(base: Path):
    """The Idefics3 processor of `base` (export.vlm.load_processor: the export's reference uses the same)."""
    from edgesight.errors import ExportError
    from edgesight.export.vlm import load_processor as load

    try:
        return load(base)
    except ExportError as exc:
        raise TrainingError(str(exc)) from None


def encode_rows(rows: list[Row], processor, tok, max_length: int) -> list[dict]:
    """input_ids (prompt with the image tokens expanded + answer), labels (-100 except the answer), image."""
    from edgesight.errors import ImageError
    from edgesight.images import load_image
    from edgesight.tasks.vlm import SEED_PROMPT, format_answer

    out, bad = [], []
    for r in rows:
        try:
            image = load_image(r.image)
        except ImageError as exc:
            bad.append((r.line, r.title, f"unreadable photo ({exc})"))
            continue
        head, answer = chat_texts(tok, SEED_PROMPT, format_answer(r.title, r.category, r.price))
        # special tokens as llama.cpp adds them to the rendered prompt: BOS iff the tokenizer's add_bos_token
        # (the GGUF carries the same flag; SmolVLM's and the tiny models' say no)
        p_ids = processor(text=[head], images=[[image.convert("RGB")]], add_special_tokens=True)["input_ids"][0]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"]
        if len(p_ids) + len(a_ids) > max_length:
            bad.append((r.line, r.title, f"{len(p_ids) + len(a_ids)} tokens with the image; raise --max-length "
                                         f"(now {max_length})"))
            continue
        out.append({"input_ids": list(p_ids) + a_ids, "labels": [-100] * len(p_ids) + a_ids, "image": r.image})
    if bad:
        raise VLMDataError("catalogue", bad)
    return out


def collate(rows: list[dict], processor, pad_id: int) -> dict:
    from edgesight.images import load_image
    from edgesight.training.trainer import collate as text_collate

    batch = text_collate(rows, pad_id)
    pix = processor.image_processor(images=[[load_image(r["image"]).convert("RGB")] for r in rows], return_tensors="pt")
    batch["pixel_values"] = pix["pixel_values"]
    if "pixel_attention_mask" in pix:
        batch["pixel_attention_mask"] = pix["pixel_attention_mask"]
    return batch


def lora_targets(model, connector: bool, names=None) -> str:
    """A peft regex: the language model's linear layers (`names`, default q/k/v/o/gate/up/down), plus the
    connector's projection when `connector`; never the vision tower or the output head."""
    import re

    names = list(names or TEXT_LINEAR)
    pattern = r".*text_model\..*\.(" + "|".join(map(re.escape, names)) + r")"
    if connector:
        pattern = f"(?:{pattern}|.*{re.escape(CONNECTOR)})"
    found = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    if not found:
        raise TrainingError(f"no language-model layer matches {names}; names look like {', '.join(TEXT_LINEAR)}")
    return pattern


def train_vlm(catalog_csv, base, out, config=None, *, connector: bool = False, val_fraction: float = 0.1,
              progress: bool | None = None) -> dict:
    """Fine-tune `base` (a SmolVLM / Idefics3 HF directory) on the catalogue; returns the report dict
    (trainer.TrainReport + "merged": the merged HF directory once the run is complete)."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    from edgesight.export.vlm import check_vlm_dir, load_vlm, merge_into
    from edgesight.errors import ExportError
    from edgesight.tasks.vlm import ANSWER_FORMAT, SEED_PROMPT

    from .products import VLM_DEFAULTS
    from .trainer import TrainConfig, _versions, data_fingerprint, loss_items, run_loop

    config = config or TrainConfig(**VLM_DEFAULTS)
    base, out = Path(base) if base is not None else None, Path(out)
    if base is None or not base.is_dir():
        raise TrainingError(f"--base {base}: pass a SmolVLM / Idefics3 HF directory (config.json + safetensors)")
    try:
        check_vlm_dir(base)
    except ExportError as exc:
        raise TrainingError(str(exc)) from None
    if config.steps < 1 or config.batch_size < 1 or config.grad_accum < 1:
        raise TrainingError("steps, batch_size and grad_accum must be >= 1")
    rows = read_rows(catalog_csv)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    t0 = time.perf_counter()
    processor, tok = load_processor(base)
    examples = encode_rows(rows, processor, tok, config.max_length)
    # a seeded tenth of the rows (at least one once there are 10) is held out for the validation loss
    order = np.random.default_rng(config.seed).permutation(len(examples))
    n_val = int(len(examples) * val_fraction) if len(examples) >= 10 else 0
    val = [examples[i] for i in sorted(order[:n_val])][: config.val_limit]
    train = [examples[i] for i in sorted(order[n_val:])]
    model = load_vlm(base)   # transformers with the vision positions mtmd computes (export.vlm.exact_vision_positions)
    pattern = lora_targets(model, connector, config.target_modules)
    model = get_peft_model(model, LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                             target_modules=pattern))
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, cpu=not torch.cuda.is_available())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    load_s = time.perf_counter() - t0

    fingerprint_rows = [{"title": r.title, "category": r.category, "price": r.price, "image": r.image,
                         "bytes": Path(r.image).stat().st_size} for r in rows]
    recipe = {"family": "vlm", "seed": config.seed, "steps": config.steps, "kind": "vlm", "base": str(base.resolve()),
              "base_sha256_16": None, "catalog": str(Path(catalog_csv).resolve()), "train_examples": len(train),
              "train_fingerprint": data_fingerprint(fingerprint_rows) + f"-{config.seed}-{n_val}",
              "val_examples": len(val), "prompt": SEED_PROMPT, "answer_format": ANSWER_FORMAT,
              "prompt_example": list(chat_texts(tok, SEED_PROMPT, ANSWER_FORMAT)), "lora_targets": pattern,
              "connector": connector, "config": config.to_dict(), "world_size": accelerator.num_processes,
              "versions": _versions()}
    report = run_loop(model=model, optimizer=optimizer, accelerator=accelerator, train=train, val=val,
                      collate=lambda batch: collate(batch, processor, tok.pad_token_id), config=config, out=out,
                      recipe=recipe, desc="LoRA vlm", load_s=load_s, progress=progress,
                      items=lambda batch: loss_items(batch["labels"], shifted=True))
    result = report.to_dict()
    if Path(report.adapter_dir, "adapter_model.safetensors").is_file() and accelerator.is_main_process \
            and report.loss_curve and report.loss_curve[-1][0] == config.steps:
        result["merged"] = str(merge_into(accelerator.unwrap_model(model), base, out / "merged"))
        from edgesight.bundle import atomic_write_bytes

        atomic_write_bytes(out / "report.json", json.dumps(result, indent=2, ensure_ascii=False).encode())
    return result
