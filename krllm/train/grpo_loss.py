"""GRPO's per-token log-probabilities on CPU / MPS: each prompt through the model once, the output head
on completion tokens only.

TRL runs every row of a GRPO batch as prompt + completion in one padded pass and scores every
position on non-Triton devices. But a batch holds `num_generations` completions of each prompt: the
same prompt tokens go through the model that many times, and the head (the largest matmul of a small
model, in fp32, forward and backward) runs on prompt and padding positions whose output is thrown
away. Here every distinct prompt runs once (one batched pass); its keys and values, still in the
autograd graph so the prompt's positions get their gradient, are handed to each of its completions,
which run sorted by length in chunks of ROWS_PER_GROUP rows cut to their own length; and
krllm.train.hf.compact_head projects only the real completion tokens with TRL's kernel and
temperature. Position ids are the ones TRL's single pass gives, so the numbers are the same for every
model; tests/test_grpo.py checks values and gradients against TRL's own method. Text-only, left-padded batches of full-attention models where
`can_compact` holds and activations are not recomputed; anything else goes to TRL.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from krllm.train.hf.compact_head import backbone_and_head, can_compact, head_logprobs

ROWS_PER_GROUP = 8  # completions per forward call: fewer rows, less padding but more calls (8 measured best)


def shared_prompt_ok(trainer, model, attention_mask: torch.Tensor, logits_to_keep: int, extra_inputs: dict) -> bool:
    """Whether `shared_prompt_logps` computes exactly what TRL's method would for this batch."""
    if any(v is not None for v in extra_inputs.values()) or not can_compact(trainer, model):
        return False
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    checkpointing = "is_activation_checkpointing" if hasattr(causal, "is_activation_checkpointing") \
        else "is_gradient_checkpointing"  # transformers 5 / 4.x
    if getattr(causal, checkpointing, False):
        return False  # recomputing layers drops the cache that carries the prompt
    text_cfg = causal.config.get_text_config()
    layer_types = getattr(text_cfg, "layer_types", None) or ["full_attention"]
    if set(layer_types) != {"full_attention"} or getattr(text_cfg, "sliding_window", None):
        return False
    prompt = attention_mask[:, :attention_mask.size(1) - logits_to_keep]
    return bool((prompt.cummax(dim=1).values == prompt).all())  # left padding only: 0...0 1...1


def prompt_index(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first row of each distinct prompt (U,), the prompt of each row (B,) as an index into it);
    a prompt is the first T - K columns with padding ignored."""
    P = input_ids.size(1) - logits_to_keep
    key = input_ids[:, :P].masked_fill(attention_mask[:, :P] == 0, -1)
    _, which = torch.unique(key, dim=0, return_inverse=True)  # (B,)
    first = torch.full((int(which.max()) + 1,), input_ids.size(0), dtype=torch.long, device=which.device)
    first.scatter_reduce_(0, which, torch.arange(input_ids.size(0), device=which.device), reduce="amin")
    return first, which


def _cache_kwarg(backbone) -> str:
    """transformers 5 calls the decoder cache `cache`, 4.x `past_key_values`."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def _rows_of(cache, rows: torch.Tensor):
    """A new DynamicCache with the given batch rows of `cache` (a row may repeat), still in the graph."""
    from transformers import DynamicCache

    out = DynamicCache()
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys[rows], layer.values[rows], i)
    return out


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
    device = input_ids.device
    first, which = prompt_index(input_ids, attention_mask, logits_to_keep)
    prompt_mask = attention_mask[first, :P]  # (U, P)
    lo = int(prompt_mask.argmax(dim=1).min())  # no prompt starts before this column
    prompt_mask = prompt_mask[:, lo:]
    prompt_cache = DynamicCache()
    with trainer.accelerator.autocast():  # every distinct prompt once
        out = backbone(input_ids=input_ids[first, lo:P], attention_mask=prompt_mask,
                       position_ids=torch.arange(lo, P, device=device).expand(len(first), -1),  # as in TRL's pass
                       use_cache=True, **{cache_kw: prompt_cache})
    last = out.last_hidden_state[:, -1:]  # (U, 1, C): predicts completion slot 0
    lengths = attention_mask[:, P:].sum(dim=1)  # (B,) real completion tokens
    pieces_lp, pieces_ent, done = [], [], []
    for chunk in torch.argsort(lengths, stable=True).split(min(ROWS_PER_GROUP, batch_size or B)):
        n, prompts = len(chunk), which[chunk]
        end = max(int(lengths[chunk].max()), 1)  # the chunk's completion slots (>= 1)
        ids, mask = input_ids[chunk, P:P + end], attention_mask[chunk, P:P + end]  # (n, k)
        with trainer.accelerator.autocast():
            hidden = backbone(input_ids=ids, attention_mask=torch.cat([prompt_mask[prompts], mask], dim=1),
                              position_ids=torch.arange(P, P + end, device=device).expand(n, -1),
                              use_cache=True, **{cache_kw: _rows_of(prompt_cache, prompts)}).last_hidden_state
            hidden = torch.cat([last[prompts], hidden[:, :-1]], dim=1)  # (n, k, C): slot t's predictor
            keep = mask.bool()
            lp, ent, *_ = head_logprobs(head, hidden[keep], ids[keep], trainer.temperature, outputs)
        pad = (0, logits_to_keep - end)  # back to K slots
        pieces_lp.append(F.pad(lp.new_zeros(keep.shape).masked_scatter(keep, lp), pad))
        if compute_entropy:
            pieces_ent.append(F.pad(ent.new_zeros(keep.shape).masked_scatter(keep, ent), pad))
        done.append(chunk)
    back = torch.argsort(torch.cat(done))  # chunks -> the batch's row order
    return torch.cat(pieces_lp)[back], torch.cat(pieces_ent)[back] if compute_entropy else None, None
