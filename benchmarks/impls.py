"""What runs inside a worker: the edgesight SDK and its peers, each behind the same small surface.

A factory takes JSON params and returns a `Runner`: `call()` runs the next input (cycling through
`inputs`, so prefix caches see realistic traffic, not one repeated prompt), `batch()` runs the first
`batch_size` inputs through the implementation's list API (peers without one loop), `outputs()`
runs the eval inputs. `items()` counts what the last call produced (tokens), outside the timing. Peers are the seeds' path (transformers, + PeftModel when an adapter is
given), optimum's ORTModelForCausalLM on the same ONNX file, and raw llama-cpp-python on the same GGUF.
"""
from __future__ import annotations

from typing import Callable


class Runner:
    def __init__(self, run: Callable[[list], tuple[list, int | None]], params: dict,
                 count: Callable[[list], int] = len):
        self.run = run      # inputs -> (outputs, generated items, or None: count them from the outputs)
        self.count = count  # e.g. len: one item per output (an image, a sentence)
        self.inputs = params["inputs"]
        self.eval_inputs = params.get("eval_inputs", self.inputs)
        self.batch_size = params.get("batch_size", 4)
        self.i, self.last = 0, ([], 0)

    def call(self) -> None:
        x = self.inputs[self.i % len(self.inputs)]
        self.i += 1
        self.last = self.run([x])

    def items(self) -> int:
        outputs, n = self.last
        return self.count(outputs) if n is None else n

    def batch(self) -> int:
        batch = (self.inputs * self.batch_size)[:self.batch_size]
        self.run(batch)
        return len(batch)

    def outputs(self) -> list:
        return self.run(self.eval_inputs)[0]


# --- text generation on one causal LM: the SDK and three peers -------------------------------

def sdk_text(params: dict) -> Runner:
    """edgesight's TextModel (ONNX numpy loop or llama.cpp) on a bundle."""
    from edgesight.backends import open_text_model
    from edgesight.bundle import Bundle
    from edgesight.generation import GenerationConfig

    model = open_text_model(Bundle.load(params["bundle"]), threads=params["threads"])
    config = GenerationConfig(max_new_tokens=params["max_new_tokens"])

    def run(prompts):  # what TextModel.generate does, keeping the ids to count tokens
        ids = [seqs[0] for seqs in model.generate_ids(prompts, config)]
        return [model.decode(x) for x in ids], sum(map(len, ids))
    return Runner(run, params)


def _hf_generate(model, tok, max_new_tokens: int):
    import torch

    def run(prompts):
        texts, n = [], 0
        for prompt in prompts:  # one at a time, as the seeds do
            enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=tok.pad_token_id or model.generation_config.eos_token_id)
            new = out[0, enc["input_ids"].shape[1]:]
            texts.append(tok.decode(new, skip_special_tokens=True).strip())
            n += int(new.numel())
        return texts, n
    return run


def torch_text(params: dict) -> Runner:
    """The seeds' path: transformers fp32 on CPU, with PeftModel when the case has an adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(params["threads"])
    kw = {"gguf_file": params["gguf_file"]} if params.get("gguf_file") else {}
    tok = AutoTokenizer.from_pretrained(params["hf_dir"], **kw)
    model = AutoModelForCausalLM.from_pretrained(params["hf_dir"], dtype=torch.float32, **kw).eval()
    if params.get("adapter"):
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, params["adapter"]).eval()
    return Runner(_hf_generate(model, tok, params["max_new_tokens"]), params)


def optimum_text(params: dict) -> Runner:
    """optimum's ORTModelForCausalLM on a directory whose model.onnx is the SDK bundle's file."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = params["threads"]
    model = ORTModelForCausalLM.from_pretrained(params["onnx_dir"], session_options=so, use_cache=True,
                                                provider="CPUExecutionProvider")
    tok = AutoTokenizer.from_pretrained(params["onnx_dir"])
    return Runner(_hf_generate(model, tok, params["max_new_tokens"]), params)


def llama_text(params: dict) -> Runner:
    """Raw llama-cpp-python: tokenize, greedy generate to EOS or the token limit, detokenize."""
    from llama_cpp import Llama

    t = params["threads"]
    llm = Llama(model_path=params["gguf"], n_threads=t, n_threads_batch=t, n_ctx=params.get("n_ctx") or 2048,
                n_batch=512, verbose=False, seed=0)
    eos = llm.token_eos()

    def run(prompts):
        texts, n = [], 0
        for prompt in prompts:
            ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            new = []
            for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
                if token == eos:
                    break
                new.append(token)
                if len(new) == params["max_new_tokens"]:
                    break
            texts.append(llm.detokenize(new).decode(errors="replace").strip())
            n += len(new)
        return texts, n
    return Runner(run, params)
