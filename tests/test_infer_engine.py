"""Engine: same logits as Llama.forward, same greedy tokens as transformers' generate, batched ==
one by one, continuous batching, stopping and cancellation."""

import pytest
import torch

from krllm.infer.engine import Engine
from krllm.infer.sampling import SamplingParams
from krllm.infer.testing import tiny_model_dir
from krllm.model.hf import load_hf

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("engine") / "tiny")


@pytest.fixture()
def model(model_dir):
    return load_hf(model_dir)


def _prompts(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("native", [True, False], ids=["c-step", "pytorch"])
def test_runner_logits_equal_llama_forward(model, native):
    engine = Engine(model, max_batch=3, max_seq_len=64, native=native)
    ids = _prompts(model.config.vocab_size, [9])[0]
    ref, _ = model(torch.tensor([ids]))  # (1, T, V), no cache
    got = engine.runner.prefill(1, ids[:5])
    torch.testing.assert_close(got, ref[0, 4], rtol=1e-5, atol=1e-5)
    # decode the rest one token at a time in slot 1 while slots 0 and 2 hold other sequences
    engine.runner.prefill(0, ids[:2])
    engine.runner.prefill(2, ids[:7])
    for t in range(5, 9):
        tokens = torch.tensor([ids[2], ids[t], ids[7]])
        out = engine.runner.decode(tokens, 3)
        torch.testing.assert_close(out[1], ref[0, t], rtol=1e-5, atol=1e-5)
        engine.runner.cache.lengths[0] = 2  # keep the neighbours where they were (rewrite same slots)
        engine.runner.cache.lengths[2] = 7


@pytest.mark.parametrize("native", [True, False], ids=["c-step", "pytorch"])
def test_greedy_equals_transformers_generate(model_dir, model, native):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    engine = Engine(model, max_batch=2, max_seq_len=128, native=native)
    for prompt in _prompts(model.config.vocab_size, [1, 6, 17], seed=1):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                              pad_token_id=1)[0, len(prompt):].tolist()
        seq = engine.generate([prompt], GREEDY, max_new_tokens=40, stop_ids=())[0]
        assert seq.output == ref
        assert seq.finish_reason == "length"


@pytest.mark.parametrize("native", [True, False], ids=["c-step", "pytorch"])
def test_batched_prompts_of_different_lengths_equal_one_by_one(model, native):
    prompts = _prompts(model.config.vocab_size, [3, 11, 1, 25, 7], seed=2)
    engine = Engine(model, max_batch=5, max_seq_len=128, native=native)
    alone = [engine.generate([p], GREEDY, max_new_tokens=20, stop_ids=())[0].output for p in prompts]
    batched = [s.output for s in engine.generate(prompts, GREEDY, max_new_tokens=20, stop_ids=())]
    assert batched == alone
    assert len({tuple(o) for o in alone}) > 1  # different prompts really give different outputs


def test_more_prompts_than_slots_queue_and_join_between_steps(model):
    prompts = _prompts(model.config.vocab_size, [4, 9, 2, 13, 5, 8, 3], seed=3)
    engine = Engine(model, max_batch=3, max_seq_len=128)
    alone = [engine.generate([p], GREEDY, max_new_tokens=16, stop_ids=())[0].output for p in prompts]
    # different max lengths so slots free up at different steps and waiting prompts join mid-batch
    seqs = [engine.add(p, GREEDY, max_new_tokens=4 + 2 * i, stop_ids=()) for i, p in enumerate(prompts)]
    max_running = 0
    while engine.has_work():
        engine.step()
        max_running = max(max_running, len(engine.running))
    assert max_running == 3
    assert [s.output for s in seqs] == [a[: 4 + 2 * i] for i, a in enumerate(alone)]


def test_seeded_sampling_is_the_same_alone_and_batched(model):
    prompts = _prompts(model.config.vocab_size, [5, 8, 3], seed=4)
    engine = Engine(model, max_batch=3, max_seq_len=128)
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=7 + i) for i in range(3)]
    alone = [engine.generate([p], sp, max_new_tokens=15, stop_ids=())[0].output for p, sp in zip(prompts, params)]
    batched = [s.output for s in engine.generate(prompts, params, max_new_tokens=15, stop_ids=())]
    assert batched == alone


def test_stops_on_eos_without_emitting_it(model):
    engine = Engine(model, max_batch=1, max_seq_len=128)
    prompt = _prompts(model.config.vocab_size, [6], seed=5)[0]
    free = engine.generate([prompt], GREEDY, max_new_tokens=10, stop_ids=())[0].output
    stop_tok = free[4]
    first = free.index(stop_tok)
    seq = engine.generate([prompt], GREEDY, max_new_tokens=10, stop_ids=[stop_tok])[0]
    assert seq.output == free[:first]
    assert seq.finish_reason == "stop"


def test_stream_yields_tokens_and_closing_frees_the_slot(model):
    engine = Engine(model, max_batch=1, max_seq_len=128)
    prompt = _prompts(model.config.vocab_size, [6], seed=6)[0]
    full = engine.generate([prompt], GREEDY, max_new_tokens=10, stop_ids=())[0].output
    gen = engine.stream(prompt, GREEDY, max_new_tokens=10, stop_ids=())
    got = [next(gen) for _ in range(3)]
    assert got == full[:3]
    assert engine.slots[0] is not None
    gen.close()
    assert engine.slots[0] is None and not engine.has_work()
    assert list(engine.stream(prompt, GREEDY, max_new_tokens=10, stop_ids=())) == full


def test_length_limit_of_the_cache_ends_with_length(model):
    engine = Engine(model, max_batch=1, max_seq_len=16)
    seq = engine.generate([[5] * 10], GREEDY, max_new_tokens=100, stop_ids=())[0]
    assert len(seq.output) == 6 and seq.finish_reason == "length"


def test_bad_prompts_are_rejected_clearly(model):
    from krllm.errors import KrllmError

    engine = Engine(model, max_batch=1, max_seq_len=16)
    with pytest.raises(KrllmError, match="empty prompt"):
        engine.add([])
    with pytest.raises(KrllmError, match="max_seq_len=16"):
        engine.add([5] * 16)
    with pytest.raises(KrllmError, match="outside the vocabulary"):
        engine.add([5, model.config.vocab_size])


@pytest.mark.parametrize("native", [True, False], ids=["c-step", "pytorch"])
def test_bf16_engine_batches_like_one_by_one_and_tracks_the_model(model_dir, native):
    """bf16 weights (what `--dtype auto` picks on CPUs with native bf16): the C step or packed bf16
    matmuls; an fp16 cache where the C step does all attention (AVX-512 BF16), else fp32. Batched decoding
    must equal one-by-one exactly, and logits stay near the model's."""
    from krllm.infer import native as c_step

    model = load_hf(model_dir, dtype="bf16")
    engine = Engine(model, max_batch=4, max_seq_len=96, native=native)
    feats = c_step.features()
    half = native and engine.runner.native is not None and feats["kv_fp16"] and feats["avx512_bf16"]
    assert engine.runner.cache.k.dtype == (torch.float16 if half else torch.float32)
    prompts = _prompts(model.config.vocab_size, [3, 11, 1, 17], seed=5)
    alone = [engine.generate([p], GREEDY, max_new_tokens=12, stop_ids=())[0].output for p in prompts]
    batched = [s.output for s in engine.generate(prompts, GREEDY, max_new_tokens=12, stop_ids=())]
    assert batched == alone
    ids = prompts[1]
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0][0, -1].float()
    got = engine.runner.prefill(0, ids)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert got.argmax() == ref.argmax()


@pytest.mark.parametrize("native", [True, False], ids=["c-step", "pytorch"])
def test_llama3_rope_scaling_model_decodes_like_transformers(tmp_path, native):
    """A Llama-3.x style directory (rope_scaling llama3) past its original context: same greedy tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 32})
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    prompt = _prompts(300, [40], seed=7)[0]  # already past the original 32 positions
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=60, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
    engine = Engine(load_hf(tmp_path), max_batch=2, max_seq_len=200, native=native)
    assert engine.generate([prompt], GREEDY, max_new_tokens=60, stop_ids=())[0].output == ref


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("native", [True, False], ids=["c-step", "pytorch"])
def test_building_an_engine_leaves_the_callers_model_untouched(model_dir, native, dtype):
    """Every parameter stays the same tensor object, storage and value; the model's forward still gives
    the same logits (the C step reads its own fused / norm-folded copies)."""
    model = load_hf(model_dir, dtype=dtype)
    params = dict(model.named_parameters())
    snapshot = {n: (p, p.data_ptr(), p.detach().clone()) for n, p in params.items()}
    ids = torch.tensor(_prompts(model.config.vocab_size, [11], seed=8))
    with torch.no_grad():
        before = model(ids)[0]
    was_training = model.training
    engine = Engine(model, max_batch=2, max_seq_len=64, native=native)
    engine.generate(_prompts(model.config.vocab_size, [3, 7], seed=9), GREEDY, max_new_tokens=5, stop_ids=())
    after_params = dict(model.named_parameters())
    assert after_params.keys() == snapshot.keys()
    for n, (p, ptr, value) in snapshot.items():
        assert after_params[n] is p and p.data_ptr() == ptr and torch.equal(p, value), n
    assert model.training == was_training
    with torch.no_grad():
        assert torch.equal(model(ids)[0], before)
