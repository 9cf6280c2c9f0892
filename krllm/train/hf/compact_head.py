"""The output head on the positions a loss reads, and nowhere else (CPU / MPS).

Why: TRL's fused LM head projects only valid positions on Triton devices (CUDA) but *every* position
elsewhere, "so tile shapes do not change" — a concern for compiled/XLA devices, not for eager CPU. For
a small model the head is the biggest matmul (16k vocab x 512 wide = a quarter of the 31M model's
weights) and TRL runs it in fp32, so on CPU it measured ~40% of an SFT step; prompt and padding
positions are half or more of it, in GRPO more (the prompt and every padded completion slot). Here the
backbone runs as usual and TRL's own `ChunkedLogProbFunction` (the same fp32 kernel) projects only the
positions asked for: same values and gradients, less work. Used by sft_loss and grpo_loss.

Safe only where exact: one process (no DDP/FSDP wrapper to bypass), no Triton (there TRL already
compacts), no logit scaling or soft-capping, no MoE auxiliary loss. `can_compact` says so.
"""

from __future__ import annotations

import torch

CHUNK = 32768  # vocabulary columns per tile (TRL's default)
_SCALING_ATTRS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                  "logits_scaling")


def can_compact(trainer, model) -> bool:
    """Whether `head_logprobs` on the backbone computes exactly what TRL's fused head would."""
    text_cfg = model.config.get_text_config() if hasattr(model, "config") else None
    if text_cfg is None or trainer.accelerator.num_processes != 1 or getattr(trainer, "aux_loss_enabled", False):
        return False
    if next(model.parameters()).device.type in ("cuda", "xpu"):  # TRL compacts there already (Triton kernels)
        return False
    return all(getattr(text_cfg, attr, None) in (None, 1.0) for attr in _SCALING_ATTRS)


def backbone_and_head(model):
    """(the transformer body, the output head) of a causal LM, PEFT-wrapped or not."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(causal, causal.base_model_prefix), causal.get_output_embeddings()


def head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  outputs: tuple[str, ...] = ("log_probs",)) -> tuple:
    """TRL's chunked fp32 kernel on N selected positions: hidden (N, C), targets (N,) ->
    (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1), each (N,) or None when not asked for."""
    from trl.kernels import ChunkedLogProbFunction

    return ChunkedLogProbFunction.apply(hidden, head.weight, head.bias, targets, temperature, CHUNK, None, 1.0,
                                        outputs)
