"""The gguf (llama.cpp) and torch backends on the tiny Llama: greedy parity, prefix KV-cache reuse,
seeded sampling, GBNF grammars, eos handling and the typed errors."""
from __future__ import annotations

import re
import sys

import pytest

from edgesight.runtime import open_text_model
from edgesight.bundle import Bundle
from edgesight.errors import BackendError, DeviceError, InputError, MissingExtraError
from edgesight.generation import GenerationConfig

pytest.importorskip("llama_cpp")

PREFIX = "<|im_start|>system\nList the objects to segment, comma separated.<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [PREFIX + "Segment the cat and the dog." + SUFFIX, PREFIX + "Find every bottle on the table." + SUFFIX,
           "A photo of a car next to a tree."]
GREEDY = GenerationConfig(max_new_tokens=10)


@pytest.fixture(scope="session")
def tiny_bundles(tiny_llama_dir, tmp_path_factory):
    """gguf-f16 and torch bundles of the tiny Llama (no adapter), through the export stage."""
    from edgesight.export import export

    out = tmp_path_factory.mktemp("gguf-backend")
    report = export(tiny_llama_dir, None, task="keywords", out=out, formats=["torch", "gguf-f16"],
                    probes=PROMPTS, max_new_tokens=10, threads=1, progress=False)
    return Bundle.load(out / "gguf-f16"), Bundle.load(out / "torch")


@pytest.fixture(scope="session")
def gguf_model(tiny_bundles):
    return open_text_model(tiny_bundles[0], threads=1)


@pytest.fixture(scope="session")
def torch_model(tiny_bundles):
    return open_text_model(tiny_bundles[1], threads=1)


def test_greedy_matches_torch_token_for_token(gguf_model, torch_model):
    assert gguf_model.backend == "gguf" and torch_model.backend == "torch"
    for prompt in PROMPTS:
        assert gguf_model.encode(prompt) == torch_model.encode(prompt)
    ref = torch_model.generate_ids(PROMPTS, GREEDY)
    assert any(r[0] for r in ref)
    assert gguf_model.generate_ids(PROMPTS, GREEDY) == ref
    texts = gguf_model.generate(PROMPTS, GREEDY)
    assert [len(t) for t in texts] == [1, 1, 1] and all(isinstance(t[0], str) for t in texts)


def test_prompt_prefix_kv_cache_is_reused(gguf_model, tiny_bundles):
    """llama-cpp-python's generate() keeps the KV cache of the longest common prefix: the second prompt
    evaluates only its own tokens, and the result equals a fresh model's."""
    llm = gguf_model.llm
    evaluated = []
    original = llm.eval

    def counting_eval(tokens):
        evaluated.append(len(tokens))
        return original(tokens)

    llm.eval = counting_eval
    try:
        first = gguf_model.generate_ids([PROMPTS[0]], GenerationConfig(max_new_tokens=1))
        evaluated.clear()
        second = gguf_model.generate_ids([PROMPTS[1]], GenerationConfig(max_new_tokens=1))
    finally:
        del llm.eval
    shared = len(gguf_model.encode(PREFIX))
    n_second = len(gguf_model.encode(PROMPTS[1]))
    assert evaluated[0] <= n_second - shared + 1 < n_second   # only the user text (and at most 1 replayed token)
    fresh = open_text_model(tiny_bundles[0], threads=1)
    assert fresh.generate_ids([PROMPTS[1]], GenerationConfig(max_new_tokens=1)) == second
    assert first != [[]]


def test_seeded_sampling_is_reproducible_and_varies_with_the_seed(gguf_model):
    cfg = dict(max_new_tokens=8, do_sample=True, temperature=2.0, top_k=0, top_p=1.0)
    a = gguf_model.generate_ids([PROMPTS[2]], GenerationConfig(seed=1, **cfg))
    b = gguf_model.generate_ids([PROMPTS[2]], GenerationConfig(seed=1, **cfg))
    assert a == b
    outs = {tuple(gguf_model.generate_ids([PROMPTS[2]], GenerationConfig(seed=s, **cfg))[0][0]) for s in range(2, 6)}
    assert len(outs) > 1
    several = gguf_model.generate_ids([PROMPTS[2]], GenerationConfig(seed=3, num_return_sequences=3, **cfg))[0]
    assert len(several) == 3


def test_gbnf_grammar_constrains_the_output(gguf_model):
    grammar = 'root ::= item (", " item)?\nitem ::= "cat" | "dog" | "bottle"'
    # once the grammar is complete only eos is allowed, so the output is a whole sentence of the language
    for text in gguf_model.generate(PROMPTS, GenerationConfig(max_new_tokens=24, grammar=grammar)):
        assert re.fullmatch(r"(cat|dog|bottle)(, (cat|dog|bottle))?", text[0]), text
    with pytest.raises(InputError, match="GBNF"):
        gguf_model.generate(PROMPTS[:1], GenerationConfig(grammar="root ::= ( unbalanced"))


def test_eos_and_max_new_tokens_end_generation(gguf_model, tiny_bundles):
    eos = set(tiny_bundles[0].manifest["tokens"]["eos"])
    ref = gguf_model.generate_ids(PROMPTS, GREEDY)
    stopped = 0
    for prompt, seqs in zip(PROMPTS, ref):
        assert len(seqs[0]) <= 10 and not eos & set(seqs[0])
        if seqs[0]:  # declaring the first greedy token an eos ends the sequence before it
            stop = GenerationConfig(max_new_tokens=10, eos_token_ids=[seqs[0][0]])
            assert gguf_model.generate_ids([prompt], stop) == [[[]]]
            stopped += 1
    assert stopped
    assert [len(s[0]) for s in gguf_model.generate_ids(PROMPTS, GenerationConfig(max_new_tokens=3))] <= [3, 3, 3]


def test_count_tokens_context_and_limits(gguf_model):
    assert gguf_model.count_tokens(PROMPTS[0]) == len(gguf_model.encode(PROMPTS[0])) > 10
    assert gguf_model.context_length == 512  # the tiny Llama's max_position_embeddings, from the manifest
    with pytest.raises(InputError, match="exceeds the context"):
        gguf_model.generate(["cat " * 600], GREEDY)
    with pytest.raises(BackendError, match="beam search"):
        gguf_model.generate(PROMPTS[:1], GenerationConfig(num_beams=2))
    with pytest.raises(InputError, match="list of prompts"):
        gguf_model.generate(PROMPTS[0], GREEDY)
    with pytest.raises(InputError, match="no tokens"):
        gguf_model.generate([""], GREEDY)


def test_wrong_bundle_format_and_missing_llama_cpp(tiny_bundles, monkeypatch):
    with pytest.raises(BackendError, match="cannot run on the 'gguf' backend"):
        open_text_model(tiny_bundles[1], backend="gguf", threads=1)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)   # import llama_cpp now fails
    with pytest.raises(MissingExtraError, match=r"edgesight\[gguf\]"):
        open_text_model(tiny_bundles[0], threads=1)


def test_torch_backend_refuses_grammars_and_reports_missing_cuda(torch_model, tiny_bundles):
    with pytest.raises(BackendError, match="gguf backend only"):
        torch_model.generate(PROMPTS[:1], GenerationConfig(grammar='root ::= "cat"'))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"no CUDA support.*pip install|CUDA build of torch"):
            open_text_model(tiny_bundles[1], threads=1, device="cuda")
