"""Llama vs transformers' LlamaForCausalLM (fp32 logits parity) and KV-cache vs no-cache decoding."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from krllm.model.config import model_config_from
from krllm.model.cache import KVCache
from krllm.model.llama import Llama

VOCAB = 320


def tiny_cfg(**over):
    base = dict(preset="tiny", vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    base.update(over)
    return model_config_from(base)


def hf_twin(model: Llama) -> LlamaForCausalLM:
    """A transformers LlamaForCausalLM with the same config and weights (loaded strictly)."""
    d = model.config.to_hf_dict()
    for k in ("architectures", "model_type"):
        d.pop(k)
    hf = LlamaForCausalLM(LlamaConfig(**d)).eval()
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    result = hf.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {"lm_head.weight"}
    if model.config.tie_word_embeddings:
        assert hf.lm_head.weight is hf.model.embed_tokens.weight
    return hf


@pytest.mark.parametrize(
    "over",
    [
        dict(),  # GQA 4:2, tied (as the tiny preset)
        dict(tie_word_embeddings=False),
        dict(num_key_value_heads=4, rope_theta=500000.0),  # MHA, large theta
        dict(num_key_value_heads=1, rope_theta=1234.5, tie_word_embeddings=False),  # MQA
        dict(head_dim=32, rms_norm_eps=1e-6),  # head_dim != hidden / heads
    ],
)
def test_logits_match_transformers(over):
    torch.manual_seed(0)
    model = Llama(tiny_cfg(**over)).eval()
    with torch.no_grad():  # make norms non-trivial so a wrong norm placement would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf = hf_twin(model)
    ids = torch.randint(0, VOCAB, (3, 29))
    with torch.no_grad():
        ours, _ = model(ids)
        ref = hf(ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_loss_matches_transformers_and_ignores_minus_100():
    model = Llama(tiny_cfg(tie_word_embeddings=False))
    hf = hf_twin(model)
    ids = torch.randint(0, VOCAB, (2, 16))
    labels = ids.clone()
    labels[0, :5] = -100
    targets = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)  # shifted next-token targets
    _, loss = model(ids, targets)
    ref = hf(ids, labels=labels).loss
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_attn_mask_padding_matches_transformers():
    """A left-padded row gives the same logits (at real positions) as transformers with attention_mask."""
    model = Llama(tiny_cfg()).eval()
    hf = hf_twin(model)
    ids = torch.randint(2, VOCAB, (2, 12))
    pad = torch.ones(2, 12, dtype=torch.long)
    pad[1, :4] = 0
    ids[1, :4] = 1
    pos = (pad.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours, _ = model(ids, position_ids=pos, attn_mask=pad.bool()[:, None, None, :])
        ref = hf(ids, attention_mask=pad, position_ids=pos).logits
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1, 4:], ref[1, 4:], rtol=1e-5, atol=1e-5)


def greedy(model, prompt, n, cache=None):
    """Greedy continuation; with a cache only the new token is fed each step. Returns (tokens, step logits)."""
    ids, out, logits_steps = prompt, [], []
    with torch.no_grad():
        for step in range(n):
            if cache is None:
                logits, _ = model(ids)
            else:
                logits, _ = model(prompt if step == 0 else ids[:, -1:], cache=cache)
            last = logits[:, -1]
            logits_steps.append(last)
            nxt = last.argmax(-1, keepdim=True)
            out.append(nxt)
            ids = torch.cat([ids, nxt], dim=1)
    return torch.cat(out, dim=1), torch.stack(logits_steps, 1)


@pytest.mark.parametrize("tie", [True, False])
def test_kv_cache_greedy_equals_no_cache(tie):
    torch.manual_seed(1)
    model = Llama(tiny_cfg(tie_word_embeddings=tie, initializer_range=0.2)).eval()
    prompt = torch.randint(0, VOCAB, (2, 7))
    ref_tokens, ref_logits = greedy(model, prompt, 20)
    cache = KVCache(model.config, batch_size=2, max_seq_len=40)
    tokens, logits = greedy(model, prompt, 20, cache)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert cache.pos == 7 + 19
    assert len(set(ref_tokens[0].tolist())) > 2  # the test is meaningless if decoding is degenerate


def test_multi_token_prefill_after_cached_prefix():
    """Chunks of 5, 1, 4, 6 tokens through the cache equal one full forward (needs the explicit mask)."""
    model = Llama(tiny_cfg(initializer_range=0.2)).eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    cache = KVCache(model.config, batch_size=2, max_seq_len=32)
    with torch.no_grad():
        full, _ = model(ids)
        parts, start = [], 0
        for n in (5, 1, 4, 6):
            parts.append(model(ids[:, start:start + n], cache=cache)[0])
            start += n
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    # reset() starts over: the same prefix gives the same logits as a fresh forward
    cache.reset()
    with torch.no_grad():
        again, _ = model(ids[:, :9], cache=cache)
    torch.testing.assert_close(again, full[:, :9], rtol=1e-5, atol=1e-5)


def test_build_on_meta_then_init_is_documented_init():
    cfg = tiny_cfg(num_hidden_layers=8, initializer_range=0.05, tie_word_embeddings=False,
                   hidden_size=128, intermediate_size=512, vocab_size=4096)
    model = Llama.build(cfg)
    assert all(p.device.type == "cpu" for p in model.parameters())
    layer = model.model.layers[3]
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert layer.mlp.down_proj.weight.std().item() == pytest.approx(0.05 / 4, rel=0.05)  # / sqrt(2 * 8)
    assert model.lm_head.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.equal(layer.input_layernorm.weight, torch.ones(128))
    tied = Llama.build(tiny_cfg(tie_word_embeddings=True))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert tied.num_parameters() == sum(p.numel() for p in set(tied.parameters()))


def test_bf16_forward_runs_and_is_close_to_fp32():
    model = Llama(tiny_cfg()).eval()
    ids = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        ref, _ = model(ids)
        out, _ = model.to(torch.bfloat16)(ids)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
