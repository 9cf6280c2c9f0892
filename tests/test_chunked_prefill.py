"""Chunked prefill: a step carries the decode rows and a bounded piece of one prompt.

Chunked (every budget, the C step and the PyTorch path) must give exactly the tokens and the
log-probabilities of whole-prompt prefill (`prefill_chunk=0`, one `runner.prefill` per prompt, which
tests/test_infer_engine.py holds to transformers' `generate`), while other sequences decode in the
same steps; a 2K-token prompt must decode like transformers' `generate`.
"""

import pytest
import torch

from krllm.errors import KrllmError
from krllm.infer.engine import Engine
from krllm.infer.runner import PREFILL_ROWS, Chunk
from krllm.infer.sampling import SamplingParams
from krllm.infer.testing import tiny_model_dir
from krllm.model.hf import load_hf

GREEDY = SamplingParams(temperature=0)
NATIVE = pytest.mark.parametrize("native", [True, False], ids=["c-step", "pytorch"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("chunked") / "tiny", max_position_embeddings=2304)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_hf(model_dir)


def _prompts(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in lengths]


def _record_steps(engine):
    """Wrap runner.step: a list of (active decode rows, chunk start, chunk tokens) per call, and per
    engine step the prompt tokens it prefilled."""
    calls, per_step = [], []
    step, runner_step = engine.step, engine.runner.step

    def recording_runner_step(tokens, n_rows, active, chunk):
        calls.append((sum(active), chunk[1], len(chunk[2])))
        per_step[-1] += len(chunk[2])
        return runner_step(tokens, n_rows, active, chunk)

    def recording_step():
        per_step.append(0)
        return step()

    engine.runner.step, engine.step = recording_runner_step, recording_step
    return calls, per_step


def _run(engine, prompts, params, new_tokens):
    """Sequences added one step apart (the first ones decode while later prompts prefill)."""
    seqs = []
    for p, sp, n in zip(prompts, params, new_tokens):
        seqs.append(engine.add(p, sp, n, stop_ids=(), logprobs=True))
        engine.step()
    while engine.has_work():
        engine.step()
    return seqs


LENGTHS = [5, 70, 13, 1, 130, 9]
NEW_TOKENS = [24, 12, 30, 8, 10, 16]


@NATIVE
@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1000])
def test_chunked_prefill_gives_the_tokens_and_logprobs_of_whole_prompts(model, native, chunk):
    prompts = _prompts(model.config.vocab_size, LENGTHS, seed=1)
    params = [GREEDY, GREEDY, SamplingParams(temperature=0.9, top_p=0.95, seed=3), GREEDY,
              SamplingParams(temperature=0, repetition_penalty=1.3), SamplingParams(temperature=1.0, seed=5)]
    whole = _run(Engine(model, max_batch=3, max_seq_len=256, native=native, prefill_chunk=0), prompts, params,
                 NEW_TOKENS)
    engine = Engine(model, max_batch=3, max_seq_len=256, native=native, prefill_chunk=chunk)
    calls, per_step = _record_steps(engine)
    chunked = _run(engine, prompts, params, NEW_TOKENS)
    assert [s.output for s in chunked] == [s.output for s in whole]
    assert [len(s.output) for s in whole] == NEW_TOKENS
    for c, w in zip(chunked, whole):
        torch.testing.assert_close(c.logprobs, w.logprobs, rtol=1e-4, atol=1e-4)
    assert max(per_step) <= chunk  # the budget holds
    assert sum(n for _, _, n in calls) == sum(LENGTHS)  # every prompt token prefilled once
    if chunk < 130:  # the long prompt took several steps while the others decoded
        assert any(active and start > 0 for active, start, _ in calls)
    assert engine.runner.cache.lengths == [0, 0, 0] and not engine.has_work()


@NATIVE
def test_a_long_prompt_does_not_stall_running_streams(model, native):
    """Every step of a 300-token prefill at 32 tokens a step also gives the running sequence a token;
    the new sequence gets its first token in the step that prefills its last chunk."""
    short, long = _prompts(model.config.vocab_size, [4, 300], seed=2)
    engine = Engine(model, max_batch=2, max_seq_len=512, native=native, prefill_chunk=32)
    running = engine.add(short, GREEDY, 40, stop_ids=())
    engine.step()
    late = engine.add(long, GREEDY, 5, stop_ids=())
    for i in range(10):  # ceil(300 / 32) = 10 steps of prefill
        events = engine.step()
        assert [e.seq for e in events if e.token is not None][0] is running
        assert late.prefilled == min(300, 32 * (i + 1)) and engine.runner.cache.lengths[late.slot] == late.prefilled
        assert (late.output != []) == (i == 9)
    assert engine.runner.cache.lengths[running.slot] == 4 + len(running.output) - 1
    alone = Engine(model, max_batch=1, max_seq_len=512, native=native, prefill_chunk=0)
    while engine.has_work():
        engine.step()
    assert running.output == alone.generate([short], GREEDY, 40, stop_ids=())[0].output
    assert late.output == alone.generate([long], GREEDY, 5, stop_ids=())[0].output


@NATIVE
def test_cancel_during_a_partial_prefill_frees_the_slot(model, native):
    short, long, other = _prompts(model.config.vocab_size, [6, 100, 20], seed=4)
    engine = Engine(model, max_batch=2, max_seq_len=256, native=native, prefill_chunk=16)
    running = engine.add(short, GREEDY, 30, stop_ids=())
    engine.step()
    doomed = engine.add(long, GREEDY, 10, stop_ids=())
    engine.step()
    engine.step()
    assert doomed.prefilling and doomed.prefilled == 32
    slot = doomed.slot
    engine.cancel(doomed)
    assert doomed.finish_reason == "cancelled" and doomed.slot is None and engine.slots[slot] is None
    assert engine.runner.cache.lengths[slot] == 0
    after = engine.add(other, GREEDY, 10, stop_ids=())  # takes the freed slot, from position 0
    while engine.has_work():
        engine.step()
    assert doomed.output == []
    alone = Engine(model, max_batch=1, max_seq_len=256, native=native, prefill_chunk=0)
    assert running.output == alone.generate([short], GREEDY, 30, stop_ids=())[0].output
    assert after.output == alone.generate([other], GREEDY, 10, stop_ids=())[0].output


@NATIVE
def test_runner_step_logits_equal_the_forward(model, native):
    """runner.step with decode rows and chunks of one prompt (longer than the C step's 64-row buffer):
    the chunk's last logits and the decode rows' logits equal Llama.forward's; lengths end right."""
    engine = Engine(model, max_batch=3, max_seq_len=256, native=native)
    runner = engine.runner
    a, b = _prompts(model.config.vocab_size, [12, 150], seed=5)
    with torch.no_grad():
        ref_a, ref_b = model(torch.tensor([a]))[0][0], model(torch.tensor([b]))[0][0]  # (T, V)
    runner.prefill(0, a[:10])
    tokens = torch.zeros(3, dtype=torch.long)
    start = 0
    for t, end in zip((10, 11), (100, 150)):  # slot 0 decodes a[10], a[11]; slot 2 prefills b in two chunks
        tokens[0] = a[t]
        dec, first = runner.step(tokens, 1, [True], Chunk(2, start, b[start:end], last=end == 150))
        torch.testing.assert_close(dec[0], ref_a[t], rtol=1e-4, atol=1e-4)
        assert (first is None) == (end < 150)
        start = end
    torch.testing.assert_close(first, ref_b[-1], rtol=1e-4, atol=1e-4)
    assert runner.cache.lengths == [12, 0, 150]
    tokens = torch.tensor([0, 0, 7])  # the chunked prompt's cache decodes on like a prefilled one
    dec, _ = runner.step(tokens, 3, [False, False, True])
    with torch.no_grad():
        ref = model(torch.tensor([b + [7]]))[0][0, -1]
    torch.testing.assert_close(dec[2], ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(KrllmError, match="does not follow"):
        runner.step(tokens, 0, [], Chunk(1, 5, [3, 4]))
    with pytest.raises(KrllmError, match="same step"):
        runner.step(tokens, 3, [True, False, False], Chunk(0, 0, [3, 4]))


def test_decode_rows_filling_the_c_buffer_still_take_a_chunk(model):
    """PREFILL_ROWS slots, the last one decoding: the C step's buffer (PREFILL_ROWS rows) holds the
    decode rows alone, so the chunk (into the freed slot 5) runs before them."""
    n = PREFILL_ROWS
    engine = Engine(model, max_batch=n, max_seq_len=96)
    if engine.runner.native is None:
        pytest.skip("no C step here")
    assert engine.runner.native.max_rows == n
    prompts = _prompts(model.config.vocab_size, [3] * n + [40], seed=6)
    alone = Engine(model, max_batch=1, max_seq_len=96, prefill_chunk=0)
    want = [alone.generate([p], GREEDY, 6, stop_ids=())[0].output for p in (prompts[0], prompts[n - 1], prompts[n])]
    engine.prefill_chunk = 3 * n  # the n short prompts in the first step
    seqs = [engine.add(p, GREEDY, 1 if i == 5 else 6, stop_ids=()) for i, p in enumerate(prompts[:n])]
    engine.step()
    assert engine.slots[5] is None and engine.slots[n - 1] is seqs[n - 1]
    engine.prefill_chunk = 10
    late = engine.add(prompts[n], GREEDY, 6, stop_ids=())
    engine.step()  # decode rows 0..n-1 + the first chunk, in slot 5
    assert late.slot == 5 and late.prefilled == 10
    while engine.has_work():
        engine.step()
    assert [seqs[0].output, seqs[n - 1].output, late.output] == want


def test_transformers_runner_keeps_whole_prompt_prefill():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    hf = MistralForCausalLM(MistralConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=128)).eval()
    engine = Engine(hf, max_batch=2, max_seq_len=128, prefill_chunk=8)
    assert engine.prefill_chunk is None  # no `step` on transformers' runner
    prompt = _prompts(300, [40], seed=7)[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=1)[0, 40:].tolist()
    assert engine.generate([prompt], GREEDY, 8, stop_ids=())[0].output == ref


def test_negative_budget_is_rejected(model):
    with pytest.raises(KrllmError, match="prefill_chunk"):
        Engine(model, max_batch=1, max_seq_len=64, prefill_chunk=-1)


@NATIVE
def test_2k_token_prompt_equals_transformers_generate(model_dir, model, native):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = _prompts(model.config.vocab_size, [2048], seed=8)[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                          pad_token_id=1)[0, len(prompt):].tolist()
    engine = Engine(model, max_batch=2, max_seq_len=2304, native=native)  # default budget: 8 chunks
    short = engine.add(_prompts(model.config.vocab_size, [5], seed=9)[0], GREEDY, 30, stop_ids=())
    engine.step()  # a running stream while the long prompt prefills
    seq = engine.add(prompt, GREEDY, 24, stop_ids=())
    while engine.has_work():
        engine.step()
    assert seq.output == ref and short.finish_reason == "length"
