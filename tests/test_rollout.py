"""GRPO rollouts on krllm's engine (krllm.infer.rollout) against the policy itself.

The engine decodes a merged krllm-Llama copy of the live (PEFT-wrapped) policy; what it returns must be
what the policy would have produced: at temperature 0 the same tokens as transformers' `generate`, and
for sampled completions the same per-token log-probabilities as the policy's own forward pass (the
quantity TRL's GRPO loss computes), within fp32 round-off.
"""

from __future__ import annotations

import pytest
import torch
from sft_tiny import tiny_base

from krllm.infer.rollout import EngineRollout, PolicyCopy

LOGPROB_ATOL = 1e-4  # fp32, different matmul order (C step / fused weights vs the PEFT forward)


def _policy(method: str = "lora", seed: int = 0):
    """A tiny random Llama with a LoRA / DoRA adapter whose B is non-zero (so merging matters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_dir, model_dir = tiny_base()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if method == "full":
        return model, tok
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=method == "dora")
    policy = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return policy, tok


PROMPTS = [[{"role": "user", "content": "사과가 3개 있고 2개를 더 받았습니다. 모두 몇 개입니까?"}],
           [{"role": "user", "content": "안녕하세요, 상인님."}],
           [{"role": "system", "content": "너는 수학 선생님이다."}, {"role": "user", "content": "7 곱하기 8은?"}]]


def _forward_logprobs(policy, prompt_ids, completion, temperature):
    """log softmax(logits / T) of each completion token under the policy's own forward."""
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature  # (C, V)
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]


@pytest.mark.parametrize("method", ["lora", "dora", "full"])
def test_rollout_logprobs_equal_policy_forward(method):
    policy, tok = _policy(method)
    policy.train()  # as in the trainer: the rollout must not sample with dropout, nor leave eval mode on
    torch.manual_seed(0)
    rollout = EngineRollout(tok, max_new_tokens=24, temperature=0.9)
    prompts = [p for p in PROMPTS for _ in range(4)]  # 4 generations per prompt, as GRPO asks
    out = rollout.generate(policy, prompts, version=0)
    assert policy.training
    assert "C step" in rollout.stats.path or "PyTorch" in rollout.stats.path, rollout.stats.path
    assert "merged copy" in rollout.stats.path
    assert len(out["completion_ids"]) == len(prompts) == len(out["logprobs"])
    assert len({tuple(c) for c in out["completion_ids"]}) > len(PROMPTS)  # sampled, not 4 copies each
    policy.eval()
    for p_ids, comp, lps in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"]):
        assert len(lps) == len(comp) > 0
        want = _forward_logprobs(policy, p_ids, comp, 0.9)
        assert torch.allclose(torch.tensor(lps), want, atol=LOGPROB_ATOL), (torch.tensor(lps) - want).abs().max()


def test_greedy_rollout_equals_transformers_generate():
    policy, tok = _policy("lora", seed=1)
    rollout = EngineRollout(tok, max_new_tokens=20, temperature=1.0)
    rollout.sampling = rollout.sampling.__class__(temperature=0)  # greedy, to compare tokens exactly
    out = rollout.generate(policy, PROMPTS, version=0)
    policy.eval()
    for p_ids, comp in zip(out["prompt_ids"], out["completion_ids"]):
        ref = policy.generate(input_ids=torch.tensor([p_ids]), max_new_tokens=20, do_sample=False,
                              eos_token_id=rollout.stop_ids, pad_token_id=tok.pad_token_id)[0, len(p_ids):]
        assert comp == ref.tolist()


def test_rollout_follows_the_live_weights():
    """After an optimizer step changes the adapter, the next rollout (new version) decodes the new weights;
    the same version reuses the engine without copying."""
    policy, tok = _policy("lora")
    rollout = EngineRollout(tok, max_new_tokens=8, temperature=1.0)
    rollout.sampling = rollout.sampling.__class__(temperature=0)
    before = rollout.generate(policy, PROMPTS[:1], version=0)["completion_ids"][0]
    engine = rollout._engine
    assert rollout.generate(policy, PROMPTS[:1], version=0)["completion_ids"][0] == before
    assert rollout._engine is engine  # same step: no refresh
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.mul_(-3.0)
    after = rollout.generate(policy, PROMPTS[:1], version=1)
    assert rollout._engine is not engine
    policy.eval()
    p_ids = after["prompt_ids"][0]
    ref = policy.generate(input_ids=torch.tensor([p_ids]), max_new_tokens=8, do_sample=False,
                          eos_token_id=rollout.stop_ids, pad_token_id=tok.pad_token_id)[0, len(p_ids):]
    assert after["completion_ids"][0] == ref.tolist()


def test_policy_copy_never_changes_the_policy():
    policy, tok = _policy("dora")
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    copy = PolicyCopy(policy)
    copy.sync(policy)
    copy.sync(policy)
    for n, p in policy.named_parameters():
        assert torch.equal(p, before[n]), n
    assert all(not p.requires_grad for p in copy.model.parameters())
