"""GRPO's per-token log-probabilities on CPU / MPS with the output head on completion tokens only.

TRL scores every position of prompt + completion on non-Triton devices and keeps the last
`logits_to_keep`; a GRPO batch is mostly prompt and right-padding, so most of that head work (the
largest matmul of a small model, in fp32, forward and backward) is thrown away. Here the backbone
runs as TRL runs it and krllm.train.hf.compact_head projects only the real completion tokens, with
TRL's kernel and temperature: the same log-probabilities and gradients (tests/test_grpo.py checks
them against TRL's own method). Text-only batches where `can_compact` holds; anything else (images,
several processes, Triton) goes to TRL.
"""

from __future__ import annotations

import torch

from krllm.train.hf.compact_head import backbone_and_head, can_compact, head_logprobs


def compact_logps_ok(trainer, model, extra_inputs: dict) -> bool:
    return not any(v is not None for v in extra_inputs.values()) and can_compact(trainer, model)


def compact_logps(trainer, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                  batch_size: int | None = None, compute_entropy: bool = False):
    """-> (logps (B, K), entropies (B, K) or None, None) for the last K = logits_to_keep tokens of each row
    (input_ids, attention_mask: (B, T)); padded completion slots hold 0, as in TRL."""
    backbone, head = backbone_and_head(model)
    outputs = ("log_probs", "entropy") if compute_entropy else ("log_probs",)
    batch_size = batch_size or input_ids.size(0)
    all_logps, all_entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids, am = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
        with trainer.accelerator.autocast():
            hidden = backbone(input_ids=ids, attention_mask=am, use_cache=False).last_hidden_state
            hidden = hidden[:, -logits_to_keep - 1:-1]  # (b, K, C): position t predicts token t + 1
            mask = am[:, -logits_to_keep:].bool()  # (b, K) real completion tokens
            lp, ent, *_ = head_logprobs(head, hidden[mask], ids[:, -logits_to_keep:][mask], trainer.temperature,
                                        outputs)
        all_logps.append(lp.new_zeros(mask.shape).masked_scatter(mask, lp))
        if compute_entropy:
            all_entropies.append(ent.new_zeros(mask.shape).masked_scatter(mask, ent))
    return torch.cat(all_logps), torch.cat(all_entropies) if compute_entropy else None, None
