"""VLM export (issue 15): a SmolVLM / Idefics3 HF directory -> a bundle of kind "vlm":
the language model as GGUF (f16 | q8_0 | q4_k_m) + the vision tower and connector as an mmproj GGUF
(f16 | q8_0), both written by llama.cpp's vendored converter (`conversion/smolvlm.py`), run by
llama-cpp-python's MTMDChatHandler (sdk/tasks/vlm.py).

The two GGUFs belong together: both are stamped (GGUF `general.name`) with a pair id, the sha256 of
the merged weights they were converted from, and the manifest records it; the runtime refuses a bundle
whose mmproj carries another pair id or whose projector width is not the text model's width.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from edgesight.errors import ExportError
from edgesight.runtime.mtmd import PAIR_PREFIX

from .gguf import _run, quantize, staging_file

VLM_ARCHITECTURES = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
TEXT_TYPES = ("f16", "q8_0", "q4_k_m")
MMPROJ_TYPES = ("f16", "q8_0")

# Idefics3's chat layout ("User:<image>...<end_of_utterance>\nAssistant:"), written so that list-valued
# message content (text parts + image parts, as MTMDChatHandler passes it) renders; an image part becomes
# the media marker the handler substitutes. BOS is added by the tokenizer, not the template.
VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role']|capitalize }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'text' %}{{ p['text'] }}{% else %}<image>{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def write_preprocessor_config(model_dir, image_size: int, tiles: int = 2) -> Path:
    """Idefics3ImageProcessor settings as SmolVLM's: mean/std 0.5, the image resized to a longest edge of
    `tiles` x `image_size` and split into `image_size` tiles + one overview (SmolVLM uses 4 tiles). llama.cpp's
    mtmd always lays an image out that way, whatever `do_image_splitting` says, so these settings make
    transformers (training, reference) see the runtime's layout; with a longest edge of one tile transformers
    would see one global image and mtmd a 1x1 grid + overview."""
    path = Path(model_dir) / "preprocessor_config.json"
    path.write_text(json.dumps({
        "image_processor_type": "Idefics3ImageProcessor", "do_resize": True, "size": {"longest_edge": tiles * image_size},
        "max_image_size": {"longest_edge": image_size}, "do_image_splitting": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "do_pad": True, "resample": 1}, indent=1))
    return path


def exact_vision_positions(model):
    """Give an Idefics3/SmolVLM model's vision tower the patch position ids it was pretrained with.

    transformers >= 4.55 computes them in float32 as bucketize(i / n * (1 - 1e-6)), which puts patch i >= 1
    into bucket i - 1 (positions 0, 0, 1, ..., n - 2 per axis; transformers#41190, open). The original code
    and llama.cpp's mtmd use bucket i. Training and the reference comparison use the original, so that the
    adapter learns on the image features the runtime computes. Returns `model` (patched in place)."""
    import types

    import torch

    emb = model.model.vision_model.embeddings
    side = emb.num_patches_per_side

    def forward(self, pixel_values, patch_attention_mask):
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        pos = torch.zeros(patch_attention_mask.shape[0], patch_attention_mask[0].numel(), dtype=torch.long,
                          device=x.device)
        for b, mask in enumerate(patch_attention_mask):
            nh, nw = int(mask[:, 0].sum()), int(mask[0].sum())
            ids = (torch.arange(nh, device=x.device)[:, None] * side // nh) * side \
                + torch.arange(nw, device=x.device)[None] * side // nw
            pos[b][mask.view(-1)] = ids.flatten()
        return x + self.position_embedding(pos)

    emb.forward = types.MethodType(forward, emb)
    return model


def load_vlm(model_dir, dtype=None, **kw):
    """The Idefics3 / SmolVLM model of an HF directory (fp32 unless `dtype`), with exact_vision_positions;
    `kw` goes to from_pretrained (e.g. attn_implementation="eager" for the ONNX export)."""
    import torch
    import transformers

    cls = getattr(transformers, check_vlm_dir(model_dir)["architectures"][0])
    return exact_vision_positions(cls.from_pretrained(model_dir, dtype=dtype or torch.float32, **kw))


def load_processor(base):
    """The Idefics3 processor of `base`: its image processor and tokenizer, image tokens per image from the config."""
    from transformers import AutoTokenizer, Idefics3ImageProcessor, Idefics3Processor

    base = Path(base)
    cfg = json.loads((base / "config.json").read_text(encoding="utf-8"))
    vc = cfg.get("vision_config", {})
    seq = (int(vc.get("image_size", 512)) // int(vc.get("patch_size", 16))) ** 2 // int(cfg.get("scale_factor", 2)) ** 2
    tok = AutoTokenizer.from_pretrained(base)
    if not getattr(tok, "chat_template", None):
        raise ExportError(f"{base}: the tokenizer has no chat template; the runtime renders prompts with it")
    return Idefics3Processor(image_processor=Idefics3ImageProcessor.from_pretrained(base), tokenizer=tok,
                             image_seq_len=seq), tok


def check_vlm_dir(model_dir) -> dict:
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{model_dir}: no config.json; pass a SmolVLM/Idefics3 HF directory")
    cfg = json.loads(cfg_path.read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in VLM_ARCHITECTURES:
        raise ExportError(f"{model_dir}: {arch} is not a VLM edgesight exports (it exports {', '.join(VLM_ARCHITECTURES)})")
    if not list(model_dir.glob("*.safetensors")):
        raise ExportError(f"{model_dir}: no safetensors weights (pickle weights are never read)")
    return cfg


def pair_id(model_dir) -> str:
    """sha256 over the model's safetensors files (sorted by name): what ties the mmproj to its text model."""
    from edgesight.bundle import sha256_file
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:32]


def _converter_view(model_dir: Path, view: Path) -> Path:
    """A view of `model_dir` the converter accepts: text_config names its architecture (Idefics3 saves
    none; the converter picks the text model by it), no non-sentencepiece tokenizer.model."""
    from .gguf import is_sentencepiece

    for f in model_dir.iterdir():
        if f.name in ("config.json",) or (f.name == "tokenizer.model" and not is_sentencepiece(f)):
            continue
        (view / f.name).symlink_to(f.resolve())
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.setdefault("text_config", {}).setdefault("architectures", ["LlamaForCausalLM"])
    (view / "config.json").write_text(json.dumps(cfg))
    if not (view / "preprocessor_config.json").exists():
        write_preprocessor_config(view, int(cfg.get("vision_config", {}).get("image_size", 512)))
    return view


def convert_vlm(model_dir, out_dir, text_types=("f16",), mmproj_types=("f16",), threads: int = 1) -> dict:
    """-> {"pair": id, "text": {type: path}, "mmproj": {type: path}} (GGUF files in out_dir)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_vlm_dir(model_dir)
    for t in text_types:
        if t not in TEXT_TYPES:
            raise ExportError(f"VLM text GGUF type {t!r} is not one of {', '.join(TEXT_TYPES)}")
    for t in mmproj_types:
        if t not in MMPROJ_TYPES:
            raise ExportError(f"VLM mmproj GGUF type {t!r} is not one of {', '.join(MMPROJ_TYPES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    pid = pair_id(model_dir)
    name = PAIR_PREFIX + pid
    res = {"pair": pid, "text": {}, "mmproj": {}}
    with tempfile.TemporaryDirectory(prefix="edgesight-vlm-src-") as tmp:
        view = _converter_view(model_dir, Path(tmp))
        for t in [x for x in text_types if x != "q4_k_m"] + (["f16"] if "q4_k_m" in text_types and "f16" not in text_types else []):
            dst = out_dir / f"text.{t}.gguf"
            with staging_file(dst) as st:
                _run("convert_hf_to_gguf.py", [view, "--outfile", st, "--outtype", t, "--model-name", name],
                     f"VLM text GGUF {t} conversion of {model_dir}")
            res["text"][t] = dst
        if "q4_k_m" in text_types:
            res["text"]["q4_k_m"] = quantize(res["text"]["f16"], out_dir / "text.q4_k_m.gguf", "q4_k_m", threads)
            if "f16" not in text_types:
                res["text"].pop("f16").unlink()
        for t in mmproj_types:
            dst = out_dir / f"mmproj.{t}.gguf"
            with staging_file(dst) as st:
                _run("convert_hf_to_gguf.py", [view, "--mmproj", "--outfile", st, "--outtype", t, "--model-name", name],
                     f"VLM mmproj GGUF {t} conversion of {model_dir}")
            res["mmproj"][t] = dst
    return res


def export_vlm_bundle(model_dir, out, *, text_type: str = "q8_0", mmproj_type: str = "f16", task: str = "products",
                      max_new_tokens: int = 48, threads: int = 1, work_dir=None, converted: dict | None = None,
                      provenance: dict | None = None, fidelity: dict | None = None):
    """One bundle: text GGUF (`text_type`) + mmproj (`mmproj_type`), kind "vlm". `converted`: a
    convert_vlm() result to copy from instead of converting again (several bundles from one conversion);
    `provenance` / `fidelity` go into the manifest (default provenance: the source directory)."""
    from edgesight.bundle import BundleWriter

    model_dir = Path(model_dir)
    cfg = check_vlm_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix="edgesight-vlm-", dir=work_dir) as tmp:
        conv = converted or convert_vlm(model_dir, tmp, (text_type,), (mmproj_type,), threads)
        move = converted is None
        with BundleWriter(out, task=task, format="gguf", precision=text_type, kind="vlm") as w:
            w.add_file(conv["text"][text_type], "model.gguf", role="model", move=move)
            w.add_file(conv["mmproj"][mmproj_type], "mmproj.gguf", role="mmproj", move=move)
            w.manifest["vlm"] = {"pair": conv["pair"], "architecture": cfg["architectures"][0],
                                 "text_type": text_type, "mmproj_type": mmproj_type,
                                 "image_size": int(cfg.get("vision_config", {}).get("image_size", 512))}
            w.manifest["generation"] = {"max_new_tokens": max_new_tokens}
            w.manifest["provenance"] = provenance or {"source": str(model_dir)}
            if fidelity is not None:
                w.manifest["fidelity"] = fidelity
    from edgesight.bundle import Bundle

    return Bundle.load(out)


# ----------------------------------------------------------------------------- a trained adapter

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def is_vlm_dir(path) -> bool:
    """Whether `path` is an HF directory of an architecture this module exports."""
    cfg = Path(path) / "config.json" if path is not None else None
    if cfg is None or not cfg.is_file():
        return False
    return (json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or [""])[0] in VLM_ARCHITECTURES


def is_vlm_adapter(adapter) -> bool:
    """Whether `adapter` is the adapter of `edgesight train products --family vlm` (its recipe says so)."""
    recipe = Path(adapter) / "recipe.json" if adapter is not None else None
    return recipe is not None and recipe.is_file() and json.loads(recipe.read_text(encoding="utf-8")).get("family") == "vlm"


def merge_into(peft_model, base, dest) -> Path:
    """A peft model's adapter merged into its base weights, saved (safetensors) at `dest` with the base's
    tokenizer, processor and chat-template files: an HF directory convert_vlm() takes."""
    from edgesight.bundle import staging_dir

    base = Path(base)
    merged = peft_model.merge_and_unload()
    with staging_dir(dest) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        for f in base.iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name not in (
                    "config.json", "model.safetensors.index.json", "generation_config.json"):
                shutil.copy(f, tmp / f.name)
    return Path(dest)


def merge_adapter(adapter_dir, dest, base=None) -> Path:
    """The adapter of `edgesight train products --family vlm` merged into its base (`base`, default the
    one its recipe.json names) -> an HF directory at `dest`."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ExportError(f"{adapter_dir}: no adapter_model.safetensors; pass OUT/adapter of a finished "
                          "`edgesight train products --family vlm` run")
    recipe = json.loads((adapter_dir / "recipe.json").read_text(encoding="utf-8")) \
        if (adapter_dir / "recipe.json").is_file() else {}
    base = base if base is not None else recipe.get("base")
    if not is_vlm_dir(base):
        raise ExportError(f"{adapter_dir}: the base {base} is not a SmolVLM / Idefics3 HF directory; pass --base")
    check_vlm_dir(base)
    return merge_into(PeftModel.from_pretrained(load_vlm(base), adapter_dir), base, dest)


# ----------------------------------------------------------------------------- validation (text path)

def text_probe(model_dir, prompt: str) -> list[int]:
    """A text-only user turn rendered by the model's chat template, as token ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": prompt}]}], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text, add_special_tokens=True)["input_ids"]   # BOS as llama.cpp: iff the tokenizer adds one


def torch_greedy(model_dir, ids: list[int], n: int) -> list[int]:
    """The merged model's greedy continuation of `ids` (text only), in transformers fp32."""
    import torch

    model = load_vlm(model_dir).eval()
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=model.config.text_config.pad_token_id or 0)
    return out[0, len(ids):].tolist()


def gguf_greedy(gguf_path, ids: list[int], n: int, threads: int = 1) -> list[int]:
    """llama.cpp's greedy continuation of `ids` with the text GGUF alone."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=max(256, len(ids) + n + 8), n_threads=threads, verbose=False)
    out = []
    for tid in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(tid)
        if len(out) == n:
            break
    return out


def text_fidelity(ref: list[int], got: list[int]) -> dict:
    """Greedy tokens of a text GGUF against the merged torch model on the text-only probe. The image path
    (mmproj through libmtmd) is not compared here: see docs/vlm.md (it is not token-identical yet)."""
    agree = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
    return {"probe": "text only; image path not compared", "probe_tokens": len(ref), "exact_match": got == ref,
            "mean_agreed_prefix": agree, "token_agreement": round(sum(a == b for a, b in zip(ref, got)) / max(len(ref), 1), 4)}
