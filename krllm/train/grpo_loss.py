"""GRPO's per-token log-probabilities on CPU / MPS: each prompt through the model once, the output head
on completion tokens only.

TRL runs every row of a GRPO batch as prompt + completion in one padded pass and scores every
position on non-Triton devices. But a batch holds `num_generations` completions of each prompt: the
same prompt tokens go through the model that many times, and the head (the largest matmul of a small
model, in fp32, forward and backward) runs on prompt and padding positions whose output is thrown
away. Here the rows of one prompt share it: the prompt runs once, its keys and values (still in the
autograd graph, so the prompt's positions get their gradient) are repeated for the completions, which
run in groups of ROWS_PER_GROUP cut to their own length; krllm.train.hf.compact_head projects only
the real completion tokens with TRL's kernel and temperature. Position ids are the ones TRL's single
pass gives, so the numbers are the same for every model; tests/test_grpo.py checks values and
gradients against TRL's own method. Text-only, left-padded batches of full-attention models where
`can_compact` holds and activations are not recomputed; anything else goes to TRL.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from krllm.train.hf.compact_head import backbone_and_head, can_compact, head_logprobs

ROWS_PER_GROUP = 8  # completions per forward call: fewer rows, less padding but more (smaller) calls


def shared_prompt_ok(trainer, model, attention_mask: torch.Tensor, logits_to_keep: int, extra_inputs: dict) -> bool:
    """Whether `shared_prompt_logps` computes exactly what TRL's method would for this batch."""
    if any(v is not None for v in extra_inputs.values()) or not can_compact(trainer, model):
        return False
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    checkpointing = "is_activation_checkpointing" if hasattr(causal, "is_activation_checkpointing") \
        else "is_gradient_checkpointing"  # transformers 5 / 4.x
    if getattr(causal, checkpointing, False):
        return False  # recomputing layers drops the cache that carries the prompt
    layer_types = getattr(causal.config.get_text_config(), "layer_types", None) or ["full_attention"]
    if set(layer_types) != {"full_attention"} or getattr(causal.config.get_text_config(), "sliding_window", None):
        return False
    prompt = attention_mask[:, :attention_mask.size(1) - logits_to_keep]
    return bool((prompt.cummax(dim=1).values == prompt).all())  # left padding only: 0...0 1...1


def prompt_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> list[torch.Tensor]:
    """Row indices of each distinct prompt (the first T - K columns, padding ignored), every group's
    rows sorted by where their completion ends, so a chunk of them shares little padding."""
    P = input_ids.size(1) - logits_to_keep
    key = input_ids[:, :P].masked_fill(attention_mask[:, :P] == 0, -1)
    _, which = torch.unique(key, dim=0, return_inverse=True)  # (B,) group of each row
    ends = attention_mask[:, P:].sum(dim=1)  # (B,) real completion tokens
    groups = []
    for g in which.unique(sorted=False).tolist():
        rows = (which == g).nonzero().squeeze(1)
        groups.append(rows[torch.argsort(ends[rows], stable=True)])
    return groups


def _cache_kwarg(backbone) -> str:
    """transformers 5 calls the decoder cache `cache`, 4.x `past_key_values`."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def _repeated(prompt_cache, n: int):
    """A new DynamicCache holding the prompt's keys / values for n rows (views until a layer appends)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, layer in enumerate(prompt_cache.layers):
        cache.update(layer.keys.expand(n, -1, -1, -1), layer.values.expand(n, -1, -1, -1), i)
    return cache


def shared_prompt_logps(trainer, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        batch_size: int | None = None, compute_entropy: bool = False):
    """-> (logps (B, K), entropies (B, K) or None, None) for the last K = logits_to_keep tokens of each row
    (input_ids, attention_mask: (B, T), prompts left-padded); padded completion slots hold 0, as in TRL."""
    from transformers import DynamicCache

    backbone, head = backbone_and_head(model)
    cache_kw = _cache_kwarg(backbone)
    outputs = ("log_probs", "entropy") if compute_entropy else ("log_probs",)
    B, T = input_ids.shape
    P = T - logits_to_keep  # first completion column
    rows_per_call = min(ROWS_PER_GROUP, batch_size or B)
    device = input_ids.device
    pieces_lp, pieces_ent, order = [], [], []
    for rows in prompt_groups(input_ids, attention_mask, logits_to_keep):
        first = int(attention_mask[rows[0], :P].argmax())  # first real prompt column
        prompt_cache = DynamicCache()
        with trainer.accelerator.autocast():
            out = backbone(input_ids=input_ids[rows[:1], first:P], position_ids=torch.arange(first, P, device=device)[None],
                           use_cache=True, **{cache_kw: prompt_cache})
        last = out.last_hidden_state[:, -1:]  # (1, 1, C): predicts completion slot 0
        for chunk in rows.split(rows_per_call):
            n = len(chunk)
            end = max(int(attention_mask[chunk, P:].sum(dim=1).max()), 1)  # real completion slots (>= 1)
            ids, mask = input_ids[chunk, P:P + end], attention_mask[chunk, P:P + end]  # (n, k)
            with trainer.accelerator.autocast():
                hidden = backbone(input_ids=ids, attention_mask=torch.cat([mask.new_ones(n, P - first), mask], dim=1),
                                  position_ids=torch.arange(P, P + end, device=device).expand(n, -1),
                                  use_cache=True, **{cache_kw: _repeated(prompt_cache, n)}).last_hidden_state
                hidden = torch.cat([last.expand(n, 1, -1), hidden[:, :-1]], dim=1)  # (n, k, C): slot t's predictor
                keep = mask.bool()
                lp, ent, *_ = head_logprobs(head, hidden[keep], ids[keep], trainer.temperature, outputs)
            pad = (0, logits_to_keep - end)  # back to K slots
            pieces_lp.append(F.pad(lp.new_zeros(keep.shape).masked_scatter(keep, lp), pad))
            if compute_entropy:
                pieces_ent.append(F.pad(ent.new_zeros(keep.shape).masked_scatter(keep, ent), pad))
            order.append(chunk)
    back = torch.argsort(torch.cat(order))  # chunks -> the batch's row order
    return torch.cat(pieces_lp)[back], torch.cat(pieces_ent)[back] if compute_entropy else None, None
