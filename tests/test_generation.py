"""The numpy generation loop against transformers 4.57 `generate()` on tiny real models.

The loop is driven by a torch reference decoder that recomputes the whole sequence at every step
(no KV cache), so these tests check the search logic alone; test_onnx_backend.py checks the same
on the ONNX sessions with their KV cache.
"""
import numpy as np
import pytest

from edgesight.errors import InputError
from edgesight.generation import GenerationConfig, generate_ids
from kit import hf_generate

torch = pytest.importorskip("torch")

PROMPTS = ["Segment the cat and the dog", "Find every bottle in the picture.", "Keywords: chair, table",
           "A photo of a person next to a car"]


class TorchDecoder:
    """A Decoder over a transformers model that re-runs the full sequence each step."""

    def __init__(self, model, pad, decoder_start=None):
        self.model, self.pad, self.start = model, pad, decoder_start

    def prefill(self, prompts):
        width = max(map(len, prompts))
        ids = np.full((len(prompts), width), self.pad, np.int64)
        mask = np.zeros_like(ids)
        for i, p in enumerate(prompts):
            if self.start is None:
                ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
            else:
                ids[i, :len(p)], mask[i, :len(p)] = p, 1
        state = {"ids": ids, "mask": mask}
        if self.start is not None:
            state["dec"] = np.full((len(prompts), 1), self.start, np.int64)
        return self._logits(state), state

    def step(self, tokens, state):
        state = dict(state)
        if self.start is None:
            state["ids"] = np.concatenate([state["ids"], tokens[:, None]], 1)
            state["mask"] = np.concatenate([state["mask"], np.ones_like(tokens[:, None])], 1)
        else:
            state["dec"] = np.concatenate([state["dec"], tokens[:, None]], 1)
        return self._logits(state), state

    def select(self, state, rows):
        return {k: v[rows] for k, v in state.items()}

    @torch.no_grad()
    def _logits(self, s):
        mask = torch.from_numpy(s["mask"])
        if self.start is None:
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
            out = self.model(input_ids=torch.from_numpy(s["ids"]), attention_mask=mask, position_ids=pos)
        else:
            out = self.model(input_ids=torch.from_numpy(s["ids"]), attention_mask=mask,
                             decoder_input_ids=torch.from_numpy(s["dec"]))
        return out.logits[:, -1].float().numpy()


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    return model, tok, TorchDecoder(model, model.config.eos_token_id)


@pytest.fixture(scope="module")
def t5(tiny_t5_dir):
    from transformers import AutoTokenizer, T5ForConditionalGeneration
    model = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    return model, tok, TorchDecoder(model, model.config.pad_token_id, model.config.decoder_start_token_id)


def frequent_eos(decoder, tok, n=2):
    """Tokens greedy decoding emits often: used as extra eos ids so beams really finish early."""
    ids = generate_ids(decoder, [tok(p).input_ids for p in PROMPTS], GenerationConfig(max_new_tokens=12),
                       eos_token_ids=[], decoder_start_token_id=decoder.start)
    values, counts = np.unique([t for seqs in ids for t in seqs[0]], return_counts=True)
    return [int(v) for v in values[np.argsort(-counts, kind="stable")][:n]]


def test_tiny_models_are_not_degenerate(llama, t5):
    """Greedy outputs differ between prompts (else every comparison below would be trivial)."""
    for model, tok, dec in (llama, t5):
        outs = generate_ids(dec, [tok(p).input_ids for p in PROMPTS], GenerationConfig(max_new_tokens=8),
                            eos_token_ids=[], decoder_start_token_id=dec.start)
        assert len({tuple(o[0]) for o in outs}) >= 3
        assert sum(len(set(o[0])) > 2 for o in outs) >= 3


BEAM_CASES = [
    dict(num_beams=1),
    dict(num_beams=1, repetition_penalty=1.3),
    dict(num_beams=1, no_repeat_ngram_size=2),
    dict(num_beams=4),
    dict(num_beams=4, num_return_sequences=4, early_stopping=True),
    dict(num_beams=3, num_return_sequences=2, length_penalty=0.5, early_stopping="never"),
    dict(num_beams=4, num_return_sequences=3, length_penalty=2.0, no_repeat_ngram_size=3),
    dict(num_beams=2, length_penalty=-1.0, repetition_penalty=1.2, early_stopping="never"),
]


@pytest.mark.parametrize("case", BEAM_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("which", ["llama", "t5"])
def test_matches_transformers_generate(which, case, request):
    model, tok, dec = request.getfixturevalue(which)
    eos = [model.config.eos_token_id] + frequent_eos(dec, tok)
    cfg = GenerationConfig(max_new_tokens=10, **case)
    for prompt in PROMPTS:
        ours = generate_ids(dec, [tok(prompt).input_ids], cfg, eos_token_ids=eos,
                            decoder_start_token_id=dec.start)[0]
        theirs = hf_generate(model, tok, prompt, cfg, eos, dec.pad, seq2seq=dec.start is not None)
        assert ours == theirs, (prompt, case)


def test_finished_beams_end_with_eos_and_ngrams_do_not_repeat(llama):
    model, tok, dec = llama
    eos = [model.config.eos_token_id] + frequent_eos(dec, tok)
    cfg = GenerationConfig(max_new_tokens=12, num_beams=4, num_return_sequences=4, no_repeat_ngram_size=2)
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        for seq in generate_ids(dec, [ids], cfg, eos_token_ids=eos)[0]:
            assert len(seq) == 12 or seq[-1] in eos
            full = ids + seq
            bigrams = list(zip(full, full[1:]))
            assert len(bigrams) == len(set(bigrams))


def test_batch_equals_one_by_one(llama, t5):
    for model, tok, dec in (llama, t5):
        prompts = [tok(p).input_ids for p in PROMPTS]
        for cfg in (GenerationConfig(max_new_tokens=8),
                    GenerationConfig(max_new_tokens=8, num_beams=3, num_return_sequences=2),
                    GenerationConfig(max_new_tokens=8, do_sample=True, top_k=20, seed=3)):
            eos = frequent_eos(dec, tok, 1)          # rows finish at different steps
            batch = generate_ids(dec, prompts, cfg, eos_token_ids=eos, decoder_start_token_id=dec.start)
            single = [generate_ids(dec, [p], cfg, eos_token_ids=eos, decoder_start_token_id=dec.start)[0]
                      for p in prompts]
            assert batch == single


def test_sampling_is_seeded(llama):
    model, tok, dec = llama
    ids = [tok(p).input_ids for p in PROMPTS[:2]]

    def run(**kw):
        cfg = GenerationConfig(max_new_tokens=12, do_sample=True, num_return_sequences=3, **kw)
        return generate_ids(dec, ids, cfg, eos_token_ids=[])

    assert run(seed=1) == run(seed=1)
    assert run(seed=1) != run(seed=2)
    assert run(seed=1, temperature=0.7, top_k=50, top_p=0.9) == run(seed=1, temperature=0.7, top_k=50, top_p=0.9)
    samples = run(seed=5, temperature=1.5)
    assert len({tuple(s) for s in samples[0]}) > 1           # return sequences differ from each other
    greedy = generate_ids(dec, ids, GenerationConfig(max_new_tokens=12), eos_token_ids=[])
    for kw in (dict(top_k=1), dict(top_p=1e-6)):             # the filters keep only the best token
        one = generate_ids(dec, ids, GenerationConfig(max_new_tokens=12, do_sample=True, seed=9, **kw),
                           eos_token_ids=[])
        assert one == greedy


def test_top_k_top_p_restrict_the_support(llama):
    """Every sampled token is among the top-k of its step (checked by replaying the steps)."""
    model, tok, dec = llama
    ids = tok(PROMPTS[0]).input_ids
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, top_k=3, temperature=2.0, seed=0)
    seq = generate_ids(dec, [ids], cfg, eos_token_ids=[])[0][0]
    logits, state = dec.prefill([ids])
    for tok_id in seq:
        assert tok_id in np.argsort(-logits[0])[:3]
        logits, state = dec.step(np.array([tok_id]), state)


@pytest.mark.parametrize("bad", [dict(num_beams=0), dict(num_return_sequences=2),
                                 dict(num_beams=2, num_return_sequences=3), dict(do_sample=True, temperature=0),
                                 dict(top_p=0.0), dict(top_k=-1), dict(early_stopping="sometimes"),
                                 dict(max_new_tokens=-1), dict(repetition_penalty=0)])
def test_bad_settings_raise_input_error(bad, llama):
    model, tok, dec = llama
    with pytest.raises(InputError, match="GenerationConfig"):
        generate_ids(dec, [[1, 2, 3]], GenerationConfig(**bad), eos_token_ids=[2])


def test_zero_new_tokens_and_empty_batch(llama):
    model, tok, dec = llama
    assert generate_ids(dec, [[5, 6]], GenerationConfig(max_new_tokens=0), eos_token_ids=[2]) == [[[]]]
    assert generate_ids(dec, [], GenerationConfig(), eos_token_ids=[2]) == []


def test_tiny_llama_converts_to_gguf_and_llama_cpp_agrees(tiny_llama_dir, llama, tmp_path):
    """The kit's Llama is a valid llama.cpp model: same token ids (ChatML specials, leading spaces,
    newlines) and the same greedy continuation as transformers."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from edgesight.export.gguf import convert_hf
    model, tok, dec = llama
    llm = llama_cpp.Llama(model_path=str(convert_hf(tiny_llama_dir, tmp_path / "m.gguf", "f32")),
                          n_ctx=256, n_threads=1, verbose=False)
    chat = tok.apply_chat_template([{"role": "user", "content": "Show me the cat."}], add_generation_prompt=True,
                                   tokenize=False)
    for text in PROMPTS + [" leading space", "two  spaces\nnewline", chat]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False).input_ids
    assert llm.token_eos() == model.config.eos_token_id
    for prompt in PROMPTS[:2]:
        ids = tok(prompt).input_ids
        ours = generate_ids(dec, [ids], GenerationConfig(max_new_tokens=8), eos_token_ids=[])[0][0]
        theirs = []
        for t in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            theirs.append(t)
            if len(theirs) == 8:
                break
        assert ours == theirs


def test_beam_sampling_is_seeded(llama):
    model, tok, dec = llama
    ids = [tok(p).input_ids for p in PROMPTS[:2]]

    def run(seed):
        cfg = GenerationConfig(max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=True,
                               temperature=1.5, seed=seed)
        return generate_ids(dec, ids, cfg, eos_token_ids=[])

    first = run(0)
    assert first == run(0) and first != run(1)
    assert all(len(seqs) == 2 and all(len(s) == 8 for s in seqs) for seqs in first)
