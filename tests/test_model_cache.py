"""The KV caches of krllm.model.cache through Llama.forward: the contiguous KVCache, and the serving
runner's slot cache, where every batch row has its own slot and position (continuous batching),
equals a forward without cache over each sequence."""

import pytest
import torch

from krllm.model.cache import KVCache, SlotKVCache
from krllm.model.config import model_config_from
from krllm.model.llama import Llama

VOCAB = 320


def _model(dtype=torch.float32, **over):
    torch.manual_seed(0)
    cfg = model_config_from({**dict(preset="tiny", vocab_size=VOCAB, hidden_size=64, intermediate_size=160,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=128, initializer_range=0.2), **over})
    return Llama(cfg).eval().to(dtype)


def _full_logits(model, seq):
    with torch.no_grad():
        return model(torch.tensor([seq]))[0][0].float()  # (T, V)


def test_kv_cache_update_returns_prefix_views_and_overflow_is_clear():
    cfg = _model().config
    cache = KVCache(cfg, batch_size=1, max_seq_len=4)
    k = torch.randn(1, cfg.kv_heads, 3, cfg.dim_per_head)
    ka, va = cache.update(0, k, k + 1)
    assert ka.shape == (1, cfg.kv_heads, 3, cfg.dim_per_head) and torch.equal(ka, k) and torch.equal(va, k + 1)
    assert ka.data_ptr() == cache.k[0].data_ptr()  # a view, not a copy
    cache.advance(3)
    with pytest.raises(ValueError, match="KV cache is full"):
        cache.update(0, k[:, :, :2], k[:, :, :2])


@pytest.mark.parametrize("over", [dict(), dict(attention_bias=True, num_key_value_heads=4)], ids=["gqa", "mha-bias"])
def test_slots_at_different_positions_equal_the_forward_without_cache(over):
    """Prefill (whole, and in chunks after a cached prefix), then decode steps where rows sit at their
    own positions and some are idle: every active row's logits equal the no-cache forward's."""
    model = _model(**over)
    if over.get("attention_bias"):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.5)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(2, VOCAB, (30,), generator=g).tolist() for _ in range(3)]
    cache = SlotKVCache.for_model(model.config, n_slots=3, max_seq_len=64, device="cpu", dtype=torch.float32)
    lengths = [5, 1, 9]
    with torch.no_grad():
        for s, n in enumerate(lengths):
            if s == 2:  # a prompt in two chunks: 4 tokens, then 5 after the cached 4
                model(torch.tensor([seqs[s][:4]]), cache=cache.prefill(s, 0, 4))
                got = model(torch.tensor([seqs[s][4:n]]), cache=cache.prefill(s, 4, n - 4))[0][0]
            else:
                got = model(torch.tensor([seqs[s][:n]]), cache=cache.prefill(s, 0, n), logits_to_keep=1)[0][0]
            torch.testing.assert_close(got[-1], _full_logits(model, seqs[s][:n])[-1], rtol=1e-5, atol=1e-5)
        assert cache.lengths == lengths
        for t in range(8):
            active = [(t + s) % 3 != 1 for s in range(3)]
            before = cache.k[:, [s for s in range(3) if not active[s]]].clone()
            scratch = cache.k[:, 3].clone()
            batch = cache.decode(3, active)
            assert batch.positions is not None  # the scattered (masked) form
            tokens = torch.tensor([[seqs[s][cache.lengths[s]]] for s in range(3)])
            pos = list(cache.lengths)
            logits = model(tokens, cache=batch)[0][:, 0]  # (3, V)
            for s in range(3):
                if active[s]:
                    want = _full_logits(model, seqs[s][:pos[s] + 1])[-1]
                    torch.testing.assert_close(logits[s], want, rtol=1e-5, atol=1e-5)
                    assert cache.lengths[s] == pos[s] + 1
                else:
                    assert cache.lengths[s] == pos[s]  # idle rows do not advance ...
            assert torch.equal(cache.k[:, [s for s in range(3) if not active[s]]], before)  # ... nor write their slot
            assert not torch.equal(cache.k[:, 3], scratch)  # they write the scratch row instead


def test_rows_at_one_position_take_the_mask_free_block_form():
    model = _model()
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(2, VOCAB, (12,), generator=g).tolist() for _ in range(2)]
    cache = SlotKVCache.for_model(model.config, n_slots=2, max_seq_len=16, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for s in range(2):
            model(torch.tensor([seqs[s][:6]]), cache=cache.prefill(s, 0, 6))
        for t in range(6, 12):
            batch = cache.decode(2)
            assert batch.positions is None and batch.start == t
            logits = model(torch.tensor([[seqs[0][t]], [seqs[1][t]]]), cache=batch)[0][:, 0]
            for s in range(2):
                torch.testing.assert_close(logits[s], _full_logits(model, seqs[s][:t + 1])[-1], rtol=1e-5, atol=1e-5)


def test_bf16_model_with_an_fp32_slot_cache_tracks_its_forward():
    """The runner's CPU setup: bf16 weights, fp32 cache, attention in the cache's dtype."""
    model = _model(torch.bfloat16)
    seq = torch.randint(2, VOCAB, (10,), generator=torch.Generator().manual_seed(3)).tolist()
    cache = SlotKVCache.for_model(model.config, n_slots=1, max_seq_len=16, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        model(torch.tensor([seq[:6]]), cache=cache.prefill(0, 0, 6))
        for t in range(6, 10):
            got = model(torch.tensor([[seq[t]]]), cache=cache.decode(1))[0][0, 0].float()
            want = _full_logits(model, seq[:t + 1])[-1]
            assert got.dtype == torch.float32 and (got - want).abs().max() < 0.05 * want.abs().max()
    assert cache.k.dtype == torch.float32 and cache.k[:, 0, :, :10].abs().sum() > 0


def test_slot_cache_errors_are_clear():
    model = _model()
    cache = SlotKVCache.for_model(model.config, n_slots=2, max_seq_len=4, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="sets positions and masks itself"):
        model(torch.tensor([[5, 6]]), cache=cache.prefill(0, 0, 2), position_ids=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"slot 1: 2 cached \+ 3 new tokens > max_seq_len=4"):
        cache.prefill(1, 2, 3)
    with torch.no_grad():
        model(torch.tensor([[5, 6, 7, 8]]), cache=cache.prefill(0, 0, 4))
    assert cache.nbytes() == 2 * cache.k.numel() * 4
    with pytest.raises(ValueError, match=r"slot 0 is full \(4 tokens\)"):
        cache.decode(2)
    cache.free(0)
    assert cache.lengths == [0, 0] and cache.decode(2).start == 0
