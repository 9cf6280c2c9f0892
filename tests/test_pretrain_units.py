"""Pretraining pieces on their own: schedule, batches, checkpoints, FLOPs, config files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from krllm.config import ConfigError, load_config
from krllm.errors import DataError
from krllm.train import checkpoint as ckpt
from krllm.train.batches import ArrayTokens, PackedWindows, fixed_windows, load_windows
from krllm.train.flops import flops_per_token, matmul_params, measure_matmul_peak
from krllm.train.pretrain_config import PretrainConfig
from krllm.train.schedule import lr_at

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- schedule

def test_schedule_warmup_then_cosine_to_min():
    kw = dict(lr=1.0, min_lr=0.1, warmup=10, total=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)  # first update: 1/10 of the peak
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # halfway: midpoint of cosine
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)  # clamps after the end
    lrs = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay


def test_schedule_linear_and_constant():
    kw = dict(lr=2.0, min_lr=0.0, warmup=0, total=100)
    assert lr_at(25, kind="linear", **kw) == pytest.approx(1.5)
    assert lr_at(50, kind="constant", **kw) == 2.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(5, kind="step", **kw)


# ---------------------------------------------------------------- batches

def _source(n=1000):
    return ArrayTokens(np.arange(n) % 997)


def test_windows_are_shifted_pairs_and_cover_an_epoch_once():
    src = _source()
    w = PackedWindows(src, seq_len=10, seed=3)
    n_windows = (len(src) - 1) // 10
    starts = w.next_starts(n_windows)
    assert sorted(starts.tolist()) == list(range(0, 10 * n_windows, 10))  # each window once, shuffled
    assert starts.tolist() != sorted(starts.tolist())
    x, y = w.load(starts[:4])
    assert x.shape == y.shape == (4, 10) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x[0], torch.as_tensor(src.tokens[starts[0]:starts[0] + 10]))
    assert (w.epoch, w.index) == (1, 0)
    # epoch 1 is cut at one offset (seeded) inside the first window: all its starts share it
    nxt = w.next_starts(20)
    assert len(set((nxt % 10).tolist())) == 1


def test_stream_is_deterministic_and_resumable():
    a = PackedWindows(_source(), 16, seed=7)
    full = [a.next_starts(6) for _ in range(30)]  # crosses several epochs
    b = PackedWindows(_source(), 16, seed=7)
    for _ in range(11):
        b.next_starts(6)
    state = json.loads(json.dumps(b.state()))  # what a checkpoint stores
    c = PackedWindows(_source(), 16, seed=7)
    c.load_state(state)
    rest = [c.next_starts(6) for _ in range(19)]
    for got, want in zip(rest, full[11:]):
        assert np.array_equal(got, want)
    other = PackedWindows(_source(), 16, seed=8)
    assert not np.array_equal(other.next_starts(6), full[0])


def test_ranks_split_the_global_batch_like_one_process():
    """2 ranks x batch 2 see exactly the windows of 1 process x batch 4 (same order)."""
    one = PackedWindows(_source(), 8, seed=1)
    ranks = [PackedWindows(_source(), 8, seed=1) for _ in range(2)]
    for _ in range(5):
        x1, y1 = one.next_batch(4, 0, 1)
        parts = [r.next_batch(4, i, 2) for i, r in enumerate(ranks)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x1)
        assert torch.equal(torch.cat([p[1] for p in parts]), y1)


def test_resume_refuses_a_different_corpus_or_seed():
    w = PackedWindows(_source(1000), 8, seed=1)
    w.next_starts(3)
    with pytest.raises(DataError, match="data changed"):
        PackedWindows(_source(900), 8, seed=1).load_state(w.state())
    with pytest.raises(DataError, match="seed=1"):
        PackedWindows(_source(1000), 8, seed=2).load_state(w.state())


def test_too_short_split_is_a_clear_error():
    with pytest.raises(DataError, match="val split has 5 tokens.*seq_len\\+1 = 9"):
        PackedWindows(ArrayTokens(np.arange(5)), 8, seed=0, name="val")


def test_fixed_validation_windows():
    src = _source(100)
    assert fixed_windows(src, 10, 3).tolist() == [0, 10, 20]
    assert len(fixed_windows(src, 10, 50)) == 9  # (100 - 1) // 10 windows exist
    x, y = load_windows(src, fixed_windows(src, 10, 2), 10)
    assert x[1, 0] == 10 and y[1, -1] == 20


# ---------------------------------------------------------------- checkpoints

def _save(root, step, keep_last=3, weight=None):
    w = torch.arange(6.0).reshape(2, 3) if weight is None else weight
    return ckpt.save_checkpoint(
        root, step, model_state={"a.weight": w, "tied": w}, optim_state={"state": {}, "param_groups": []},
        trainer_state={"tokens_seen": step * 10, "data": {"epoch": 0, "index": step}},
        rng_states=[ckpt.rng_state()], config_text="x: 1\n", model_config={"hidden_size": 2}, keep_last=keep_last)


def test_checkpoint_exact_file_set_and_round_trip(tmp_path):
    path = _save(tmp_path, 5)
    assert sorted(p.name for p in path.iterdir()) == sorted([*ckpt.FILES, "checksums.json"])
    got = ckpt.load_checkpoint(path)
    assert torch.equal(got["model"]["a.weight"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(got["model"]["tied"], got["model"]["a.weight"])  # shared tensors saved twice
    assert got["state"]["step"] == 5 and got["state"]["data"] == {"epoch": 0, "index": 5}
    # RNG states restore the exact stream
    ckpt.set_rng_state(got["rng"][0])
    a = torch.rand(4)
    ckpt.set_rng_state(got["rng"][0])
    assert torch.equal(a, torch.rand(4))
    assert not list(tmp_path.glob(".step_*"))  # no temporary directory left behind


def test_keep_last_prunes_oldest(tmp_path):
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, keep_last=2)
    assert sorted(p.name for p in ckpt.list_step_dirs(tmp_path)) == ["step_3", "step_4"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_checksums", "missing_file"])
def test_corrupt_checkpoint_is_reported_and_skipped(tmp_path, damage):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2, weight=torch.ones(2, 3))
    target = newest / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "no_checksums":
        (newest / "checksums.json").unlink()
    else:
        (newest / "optimizer.pt").unlink()
    with pytest.raises(ckpt.CheckpointError):
        ckpt.verify(newest)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(newest)
    notes = []
    assert ckpt.find_latest(tmp_path, report=notes.append) == tmp_path / "step_1"
    assert len(notes) == 1 and "step_2" in notes[0]


def test_partial_temp_dirs_are_removed(tmp_path):
    _save(tmp_path, 1)
    junk = tmp_path / ".step_2.tmp-deadbeef"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"half")
    assert ckpt.remove_partial(tmp_path) == [junk] and not junk.exists()
    assert ckpt.find_latest(tmp_path) == tmp_path / "step_1"


# ---------------------------------------------------------------- FLOPs / MFU

def test_matmul_params_equals_counted_linear_weights():
    from krllm.model.config import model_config_from
    from krllm.model.llama import Llama

    for tied in (True, False):
        cfg = model_config_from("tiny", [f"tie_word_embeddings={str(tied).lower()}"], vocab_size=500)
        with torch.device("meta"):
            model = Llama(cfg)
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert matmul_params(cfg) == linear
    # 6N + causal attention (6 * L * T * H * D)
    assert flops_per_token(cfg, 128) == 6 * linear + 6 * 4 * 128 * 8 * 32


def test_measured_peak_is_plausible():
    peak = measure_matmul_peak(torch.float32, "cpu", seconds=0.05, sizes=(256,))
    assert 1e8 < peak < 1e14  # FLOP/s: more than a toaster, less than a datacenter per core pair


# ---------------------------------------------------------------- configs

def test_shipped_configs_parse():
    files = sorted((ROOT / "configs" / "pretrain").glob("*.yaml"))
    assert files, "configs/pretrain/*.yaml missing"
    for f in files:
        cfg = load_config(f, PretrainConfig)
        assert cfg.data.seq_len > 0 and cfg.run.name


def test_config_errors_name_every_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data: {shards: x, seq_len: 4}\ntrain: {batch_size: 0, lr: 1e-3, min_lr: 1e-2, bogus: 1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, PretrainConfig)
    text = str(e.value)
    for key in ("data.seq_len", "train.batch_size", "train.bogus"):
        assert key in text
    with pytest.raises(ConfigError, match="max_steps or train.max_tokens"):
        load_config(None, PretrainConfig, ["data.shards=x", "train.lr=0.001"])
    with pytest.raises(ConfigError, match="min_lr"):
        load_config(None, PretrainConfig, ["data.shards=x", "train.max_steps=3", "train.min_lr=1"])
    assert math.isclose(load_config(None, PretrainConfig, ["data.shards=x", "train.max_steps=3"]).train.lr, 3e-3)


def test_model_type_defaults_to_llama_and_must_be_pretrainable(tmp_path):
    from krllm.model.registry import pretrainable

    base = ["data.shards=x", "train.max_steps=3"]
    assert load_config(None, PretrainConfig, base).model.type == "llama"
    with pytest.raises(ConfigError) as e:
        load_config(None, PretrainConfig, base + ["model.type=transformers", "train.lr=-1"])
    text = str(e.value)  # reported with the other problems, the choices listed
    assert "model.type: 'transformers' cannot be built from scratch; pretrainable families: " \
        + ", ".join(pretrainable()) in text and "train.lr" in text


def test_blocks_of_finds_the_repeated_blocks():
    from krllm.model.config import model_config_from
    from krllm.model.llama import Llama
    from krllm.train.distributed import blocks_of

    with torch.device("meta"):
        model = Llama(model_config_from("tiny", ["num_hidden_layers=3"], vocab_size=100))
    assert blocks_of(model) is model.model.layers and len(blocks_of(model)) == 3
    assert blocks_of(torch.nn.Linear(2, 2)) is None


def test_lowp_cpu_attention_matches_sdpa():
    """The bf16 CPU training path of the model (matmul attention) agrees with the fused kernel."""
    import torch.nn.functional as F

    from krllm.model.llama import causal_attention_lowp

    q, k, v = torch.randn(2, 8, 48, 32), torch.randn(2, 4, 48, 32), torch.randn(2, 4, 48, 32)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(causal_attention_lowp(q, k, v), ref, atol=1e-5, rtol=1e-5)
    out = causal_attention_lowp(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)
    assert not torch.allclose(causal_attention_lowp(q, k, v)[:, :, :-1], F.scaled_dot_product_attention(
        q, k, v, enable_gqa=True)[:, :, :-1], atol=1e-3)  # it is causal: differs from full attention


# ---------------------------------------------------------------- oneDNN fp32 linears

def test_onednn_linears_match_f_linear_in_value_and_gradient():
    from krllm.model.config import model_config_from
    from krllm.model.llama import Llama
    from krllm.train.cpu_kernels import onednn_available, use_onednn_attention, use_onednn_linears

    if not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    cfg = model_config_from("tiny", ["num_hidden_layers=2", "tie_word_embeddings=false"], vocab_size=300)
    torch.manual_seed(0)
    ref = Llama.build(cfg)
    ours = Llama.build(cfg)
    ours.load_state_dict(ref.state_dict())
    assert use_onednn_linears(ours) == 2 * 7 + 1  # q k v o gate up down per block + lm_head
    assert use_onednn_attention(ours) == 2  # one attention per block
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randint(0, 300, (2, 17))
    (lr, a), (lo, b) = ref(x[:, :-1], targets=x[:, 1:]), ours(x[:, :-1], targets=x[:, 1:])
    torch.testing.assert_close(lo, lr, atol=1e-5, rtol=1e-5)
    a.backward()
    b.backward()
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    # under bf16 autocast the layers defer to F.linear, so autocast still casts
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x)[0].dtype == torch.bfloat16


def test_onednn_causal_attention_matches_sdpa_in_value_and_gradient():
    import torch.nn.functional as F

    from krllm.train.cpu_kernels import CausalAttention, onednn_available

    if not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    causal_attention = CausalAttention.apply  # the kernel itself, whatever the thread count
    torch.manual_seed(0)
    q = torch.randn(2, 48, 8, 32, requires_grad=True)  # (B, T, H, D): the model passes a transposed view
    k, v = torch.randn(2, 4, 48, 32, requires_grad=True), torch.randn(2, 4, 48, 32, requires_grad=True)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True, enable_gqa=True)
    out = causal_attention(q.transpose(1, 2), k, v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_grouped_causal_attention_matches_the_bf16_autocast_path():
    from krllm.model.llama import causal_attention_lowp
    from krllm.train.cpu_kernels import causal_attention, onednn_available

    if not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    torch.manual_seed(0)
    q = torch.randn(2, 48, 8, 32).bfloat16().requires_grad_()
    k = torch.randn(2, 4, 48, 32).bfloat16().requires_grad_()
    v = torch.randn(2, 4, 48, 32).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = causal_attention_lowp(q.transpose(1, 2), k, v)
        out = causal_attention(q.transpose(1, 2), k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=0.03, rtol=0.02)  # bf16 scores, fp32 softmax, as eager
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a.float(), b.float(), atol=0.05, rtol=0.02)
