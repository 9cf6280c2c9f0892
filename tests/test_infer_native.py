"""The C decode step (krllm/infer/csrc/decode_cpu.c) computes what the PyTorch path computes:
same logits for batches of slots at different positions, in fp32 and with bf16 weights, on
shapes that hit every tail of its loops; it falls back cleanly when disabled or uncompilable."""

import copy
import logging
import platform
import shutil

import pytest
import torch

from krllm.infer import native
from krllm.infer.runner import PREFILL_ROWS, ModelRunner
from krllm.infer.testing import tiny_model_config
from krllm.model.llama import Llama

# head_dim 10 and intermediate 51 are not multiples of the 16/32-wide loops, 2 * 51 and 301 rows are
# not multiples of the 4-row blocks: every remainder path runs.
ODD = dict(vocab_size=301, hidden_size=40, intermediate_size=51, num_attention_heads=4, num_key_value_heads=2,
           num_hidden_layers=2)
EVEN = dict(vocab_size=400, hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2)

needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler here")


def _model(shape, seed=0):
    torch.manual_seed(seed)
    return Llama(tiny_model_config(**shape)).eval()


def test_the_native_step_builds_wherever_a_c_compiler_exists():
    """CI has gcc: a silent fallback there would leave the C step untested."""
    if shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"):
        assert native.library() is not None


def _feed(runner, streams, steps, active_pattern):
    """Decode `steps` tokens into slots 0..n-1 from empty, some rows idle on some steps -> logits per step."""
    n = len(streams)
    out = []
    for t in range(steps):
        active = [active_pattern(t, s) for s in range(n)]
        tokens = torch.tensor([streams[s][runner.cache.lengths[s]] for s in range(n)])
        out.append((active, runner.decode(tokens, n, active).clone()))
    return out


@needs_native
@pytest.mark.parametrize("shape", [ODD, EVEN], ids=["odd-shapes", "even-shapes"])
def test_fp32_decode_equals_the_pytorch_path_with_rows_at_different_positions(shape):
    model = _model(shape)
    ours = ModelRunner(model, n_slots=6, max_seq_len=48)
    ref = ModelRunner(copy.deepcopy(model), n_slots=6, max_seq_len=48, use_native=False)
    assert ours.native is not None and ref.native is None
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, shape["vocab_size"], (n,), generator=g).tolist() for n in (1, 7, 3, 12, 5, 2)]
    for slot, p in enumerate(prompts):  # shared prefill code, different lengths per slot
        ours.prefill(slot, p)
        ref.prefill(slot, p)
    streams = [torch.randint(2, shape["vocab_size"], (40,), generator=g).tolist() for _ in prompts]
    streams = [p + s for p, s in zip(prompts, streams)]
    pattern = lambda t, s: (t + s) % 3 != 0  # rows sit out in turn
    for (active, got), (_, want) in zip(_feed(ours, streams, 10, pattern), _feed(ref, streams, 10, pattern)):
        rows = [s for s, a in enumerate(active) if a]
        torch.testing.assert_close(got[rows], want[rows], rtol=1e-4, atol=1e-4)
        assert not got[[s for s, a in enumerate(active) if not a]].any()  # idle rows: zeros, no work


@needs_native
@pytest.mark.parametrize("shape", [ODD, EVEN], ids=["odd-shapes", "even-shapes"])
def test_bf16_weights_decode_like_fp32_activations_on_the_same_weights(shape):
    """The C step keeps activations in fp32 and widens bf16 weights exactly, so it must match the
    PyTorch path run in fp32 on the bf16-rounded weights (RMSNorm weights are 1 at init, so folding
    them into the matrices rounds nothing). With AVX-512 BF16 each matmul's input is rounded to
    bf16 too (as PyTorch's bf16 matmuls do): then within bf16 rounding, and the same argmax."""
    tol = 3e-2 if native.features()["avx512_bf16"] else 2e-4
    model = _model(shape).to(torch.bfloat16)
    ours = ModelRunner(model, n_slots=5, max_seq_len=40, kv_dtype=torch.float32)  # the weights' rounding only
    ref = ModelRunner(copy.deepcopy(model).float(), n_slots=5, max_seq_len=40, use_native=False)
    assert ours.native is not None and ours.native.model.bf16 == 1
    g = torch.Generator().manual_seed(2)
    streams = [torch.randint(2, shape["vocab_size"], (30,), generator=g).tolist() for _ in range(5)]
    pattern = lambda t, s: t >= s  # slots start one step apart: all positions differ
    for (active, got), (_, want) in zip(_feed(ours, streams, 14, pattern), _feed(ref, streams, 14, pattern)):
        rows = [s for s, a in enumerate(active) if a]
        scale = want[rows].abs().max().item()
        torch.testing.assert_close(got[rows], want[rows], rtol=tol, atol=tol * scale)
        assert torch.equal(got[rows].argmax(-1), want[rows].argmax(-1))


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_gets_bit_identical_logits_alone_and_in_batches_of_any_size(dtype):
    """Tiles of 4 rows and single rows do the same arithmetic per row: batching changes nothing."""
    model = _model(ODD).to(dtype)
    runner = ModelRunner(model, n_slots=9, max_seq_len=16)
    tokens = torch.randint(2, ODD["vocab_size"], (9,), generator=torch.Generator().manual_seed(3))
    batched = runner.native.decode(tokens, [0] * 9, list(range(9))).clone()
    for s in range(9):
        alone = runner.native.decode(tokens[s:s + 1], [0], [s])
        assert torch.equal(alone[0], batched[s])


@needs_native
def test_out_of_range_input_is_an_error_not_a_wild_write():
    runner = ModelRunner(_model(EVEN), n_slots=2, max_seq_len=8)
    with pytest.raises(ValueError, match="rejected"):
        runner.native.decode(torch.tensor([EVEN["vocab_size"]]), [0], [0])  # token id past the vocabulary
    with pytest.raises(ValueError, match="rejected"):
        runner.native.decode(torch.tensor([5]), [8], [0])  # position past the cache
    with pytest.raises(ValueError, match="rejected"):
        runner.native.decode(torch.tensor([5]), [0], [3])  # cache row 3 of 0..2


@pytest.fixture()
def fresh_library():
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def test_krllm_native_0_keeps_the_pytorch_path(monkeypatch, fresh_library):
    monkeypatch.setenv("KRLLM_NATIVE", "0")
    runner = ModelRunner(_model(EVEN), n_slots=1, max_seq_len=8)
    assert native.library() is None and runner.native is None and runner.decode_path == "PyTorch"
    runner.prefill(0, [5, 6])
    assert runner.decode(torch.tensor([7]), 1).shape == (1, EVEN["vocab_size"])


def test_a_compiler_that_fails_means_a_warning_and_the_pytorch_path(monkeypatch, tmp_path, fresh_library, caplog):
    monkeypatch.setenv("KRLLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    with caplog.at_level(logging.WARNING, logger="krllm.infer"):
        assert native.library() is None
    assert "could not compile decode_cpu.c" in caplog.text
    assert not list((tmp_path / "native").glob("*.so"))  # no half-written library left behind
    assert ModelRunner(_model(EVEN), n_slots=1, max_seq_len=8).native is None


@needs_native
def test_the_library_is_built_once_into_the_cache_dir(monkeypatch, tmp_path, fresh_library):
    monkeypatch.setenv("KRLLM_CACHE_DIR", str(tmp_path))
    assert native.library() is not None
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    mtime = built[0].stat().st_mtime_ns
    native.library.cache_clear()
    assert native.library() is not None
    assert built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_any_number_of_threads_gives_bit_identical_logits(dtype):
    """Work items go to whichever thread claims them first; each is computed the same way wherever it
    runs, so 1 thread and more threads than cores (some of them preempted mid-step) agree exactly."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(5)  # more than this machine's cores: threads get preempted mid-phase
        model = _model(EVEN).to(dtype)
        runner = ModelRunner(model, n_slots=6, max_seq_len=32)
        tokens = torch.randint(2, EVEN["vocab_size"], (6,), generator=torch.Generator().manual_seed(4))
        results = {}
        for threads in (1, 5, 2):
            torch.set_num_threads(threads)
            runs = []
            for _ in range(3):
                runs.append(runner.native.decode(tokens, [0, 3, 1, 7, 2, 5], [0, 1, 2, 3, -1, 5]).clone())
            assert all(torch.equal(r, runs[0]) for r in runs)
            results[threads] = runs[0]
        assert torch.equal(results[1], results[5]) and torch.equal(results[1], results[2])
    finally:
        torch.set_num_threads(before)


PORTABLE = [["-O3", "-fopenmp"]] + ([["-O3", "-march=x86-64-v3", "-fopenmp"]] if platform.machine() == "x86_64" else [])


@needs_native
@pytest.mark.parametrize("flags", PORTABLE, ids=lambda f: " ".join(f[1:]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_builds_for_cpus_without_avx512_compute_the_same(tmp_path, dtype, flags):
    """Without AVX-512 (baseline x86-64 / ARM, or AVX2 as on most laptops: vector code in narrower
    registers, bf16 weights widened by shift and mask instead of AVX-512 BF16 dot products) the step
    matches the PyTorch path in fp32 on the same weights to fp32 rounding, bf16 weights included."""
    lib = native.build_library(tmp_path / "portable.so", flags)
    assert lib is not None and lib.krllm_features() & 3 == 1  # OpenMP, no AVX-512 BF16 (bit 2: an fp16 KV cache)
    model = _model(ODD).to(dtype)
    ours = ModelRunner(model, n_slots=4, max_seq_len=32, kv_dtype=torch.float32)
    ours.native = ours._native_decoder(lib, model.model.rotary_emb, 32)
    ref = ModelRunner(copy.deepcopy(model).float(), n_slots=4, max_seq_len=32, use_native=False)
    assert ours.native is not None and ours.native.lib is lib
    g = torch.Generator().manual_seed(6)
    streams = [torch.randint(2, ODD["vocab_size"], (20,), generator=g).tolist() for _ in range(4)]
    pattern = lambda t, s: t >= s  # every row at its own position
    for (active, got), (_, want) in zip(_feed(ours, streams, 9, pattern), _feed(ref, streams, 9, pattern)):
        rows = [s for s, a in enumerate(active) if a]
        torch.testing.assert_close(got[rows], want[rows], rtol=2e-4, atol=2e-4 * want[rows].abs().max().item())


@needs_native
@pytest.mark.parametrize("length", [1, 17, PREFILL_ROWS, 2 * PREFILL_ROWS + 9])
def test_prompts_prefill_through_the_c_step_like_the_pytorch_path(length):
    """A prompt is rows of one slot at consecutive positions, in chunks of PREFILL_ROWS, each row
    attending to the keys of the rows before it, logits for the last only."""
    model = _model({**EVEN, "max_position_embeddings": 2 * PREFILL_ROWS + 16})
    ours = ModelRunner(model, n_slots=2, max_seq_len=2 * PREFILL_ROWS + 16)
    ref = ModelRunner(copy.deepcopy(model), n_slots=2, max_seq_len=2 * PREFILL_ROWS + 16, use_native=False)
    prompt = torch.randint(2, EVEN["vocab_size"], (length,), generator=torch.Generator().manual_seed(7)).tolist()
    ours.prefill(0, [5, 6, 7])  # a neighbour in the other slot must not be disturbed
    ref.prefill(0, [5, 6, 7])
    torch.testing.assert_close(ours.prefill(1, prompt), ref.prefill(1, prompt), rtol=1e-4, atol=1e-4)
    assert ours.cache.lengths[1] == length
    for t in (9, 4):  # the cache it left behind decodes like the reference's
        tokens = torch.tensor([t, t + 1])
        torch.testing.assert_close(ours.decode(tokens, 2), ref.decode(tokens, 2), rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.skipif(not native.features()["kv_fp16"], reason="this compiler has no _Float16")
@pytest.mark.parametrize("length", [1, 17, 600])
def test_an_fp16_kv_cache_holds_the_fp32_entries_rounded_and_decodes_alike(length):
    """kv_dtype=fp16: the C step writes each key and value rounded once to fp16 (layer 0: the fp32
    cache's entries, exactly; later layers read fp16 attention inputs), and prefill + decode logits
    stay within fp16 rounding of the fp32 cache's."""
    model = _model({**EVEN, "max_position_embeddings": 1024})
    full = ModelRunner(model, n_slots=2, max_seq_len=1024)
    half = ModelRunner(copy.deepcopy(model), n_slots=2, max_seq_len=1024, kv_dtype=torch.float16)
    assert half.native is not None and half.cache.k.dtype == torch.float16
    prompt = torch.randint(2, EVEN["vocab_size"], (length,), generator=torch.Generator().manual_seed(3)).tolist()
    want, got = full.prefill(1, prompt), half.prefill(1, prompt)
    for cache_half, cache_full in ((half.cache.k, full.cache.k), (half.cache.v, full.cache.v)):
        torch.testing.assert_close(cache_half[0, 1, :, :length], cache_full[0, 1, :, :length].half(), rtol=0, atol=0)
        torch.testing.assert_close(cache_half[:, 1, :, :length].float(), cache_full[:, 1, :, :length], rtol=2e-2,
                                   atol=2e-2)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=5e-3 * scale)
    for t in (9, 4):
        tokens = torch.tensor([0, t])
        a, b = full.decode(tokens, 2, [False, True])[1], half.decode(tokens, 2, [False, True])[1]
        torch.testing.assert_close(b, a, rtol=0, atol=5e-3 * scale)


@needs_native
@pytest.mark.parametrize("flags", PORTABLE, ids=lambda f: " ".join(f[1:]))
def test_portable_builds_read_and_write_an_fp16_cache_alike(tmp_path, flags):
    """The fp16 cache through _Float16 (baseline x86-64 / ARM) or F16C in 8-float vectors (AVX2) holds the
    same entries as the AVX-512 build's and decodes to the same logits within fp32 rounding."""
    lib = native.build_library(tmp_path / "portable.so", flags)
    if not lib.krllm_features() & 4:
        pytest.skip("this compiler has no _Float16 and the target no F16C")
    model = _model({**EVEN, "max_position_embeddings": 128})
    ours = ModelRunner(model, n_slots=2, max_seq_len=128, kv_dtype=torch.float16)
    ours.native = ours._native_decoder(lib, model.model.rotary_emb, 128)
    ref = ModelRunner(copy.deepcopy(model), n_slots=2, max_seq_len=128, kv_dtype=torch.float16)
    assert ours.native is not None and ours.native.lib is lib and ref.native.lib is not lib
    prompt = torch.randint(2, EVEN["vocab_size"], (70,), generator=torch.Generator().manual_seed(4)).tolist()
    want, got = ref.prefill(0, prompt), ours.prefill(0, prompt)
    torch.testing.assert_close(ours.cache.k[:, 0, :, :70], ref.cache.k[:, 0, :, :70], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4 * want.abs().max().item())
    tokens = torch.tensor([7])
    want, got = ref.decode(tokens, 1), ours.decode(tokens, 1)
    torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4 * want.abs().max().item())


@needs_native
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16], ids=["fp32-cache", "fp16-cache"])
def test_attention_at_4096_positions_equals_the_pytorch_path(kv_dtype):
    """A 4,095-token prompt (flash attention over 8 chunks of 512 rows, GQA 4 query heads on 2 KV heads)
    and a decode step at 4,096 positions (the decode kernel) against the PyTorch path, whose attention
    is SDPA over the same cache: fp32 within 1e-4 of the logits' scale (fp16 cache: its rounding)."""
    n = 4096
    model = _model({**EVEN, "max_position_embeddings": n})
    ours = ModelRunner(model, n_slots=1, max_seq_len=n, kv_dtype=kv_dtype)
    ref = ModelRunner(copy.deepcopy(model), n_slots=1, max_seq_len=n, use_native=False, kv_dtype=kv_dtype)
    assert ours.native is not None
    prompt = torch.randint(2, EVEN["vocab_size"], (n - 1,), generator=torch.Generator().manual_seed(9)).tolist()
    want, got = ref.prefill(0, prompt), ours.prefill(0, prompt)
    tol = 1e-4 if kv_dtype == torch.float32 else 5e-3
    torch.testing.assert_close(got, want, rtol=0, atol=tol * want.abs().max().item())
    want, got = ref.decode(torch.tensor([11]), 1), ours.decode(torch.tensor([11]), 1)
    torch.testing.assert_close(got, want, rtol=0, atol=tol * want.abs().max().item())


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_decode_row_gets_bit_identical_logits_beside_a_prompt_chunk(dtype):
    """A prompt chunk of 100 rows takes the GEMM; the decode row beside it keeps the row kernels, so a
    stream's tokens do not depend on whether a prompt arrived in its step (chunked prefill)."""
    from krllm.infer.runner import Chunk

    model = _model({**EVEN, "max_position_embeddings": 256}).to(dtype)
    alone, mixed = (ModelRunner(copy.deepcopy(model), n_slots=2, max_seq_len=256) for _ in range(2))
    prompt = torch.randint(2, EVEN["vocab_size"], (120,), generator=torch.Generator().manual_seed(5)).tolist()
    for r in (alone, mixed):
        r.prefill(0, prompt[:7])
    token = torch.tensor([13])
    want = alone.decode(token, 1)[0].clone()
    got, first = mixed.step(token, 1, [True], Chunk(slot=1, start=0, ids=prompt[:100], last=True))
    assert torch.equal(got[0], want)
    torch.testing.assert_close(first, alone.prefill(1, prompt[:100]), rtol=1e-3, atol=1e-3 * first.abs().max().item())


@needs_native
@pytest.mark.parametrize("shape", [EVEN, ODD], ids=["even-shapes", "odd-shapes"])
def test_bf16_prompts_through_the_gemm_match_fp32_activations(shape):
    """A 100-row prompt takes the GEMM, bf16 weights widened exactly to fp32 in its packed panels: it
    matches the PyTorch path in fp32 on the same bf16 weights to fp32 rounding, but for the last row's
    LM head, whose row kernel rounds its input to bf16 with AVX-512 BF16 (then: bf16 rounding)."""
    tol = 3e-2 if native.features()["avx512_bf16"] else 2e-4
    model = _model({**shape, "max_position_embeddings": 256}).to(torch.bfloat16)
    ours = ModelRunner(model, n_slots=1, max_seq_len=256, kv_dtype=torch.float32)
    ref = ModelRunner(copy.deepcopy(model).float(), n_slots=1, max_seq_len=256, use_native=False)
    prompt = torch.randint(2, shape["vocab_size"], (100,), generator=torch.Generator().manual_seed(8)).tolist()
    want, got = ref.prefill(0, prompt), ours.prefill(0, prompt)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    assert got.argmax() == want.argmax()
