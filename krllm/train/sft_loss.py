"""The SFT loss on CPU / MPS with the output head applied to learned positions only.

Why: TRL's fused LM head (`SFTTrainer.compute_loss`) projects only the positions whose label is not
-100 on Triton devices (CUDA), but *every* position elsewhere, "so tile shapes do not change" — a
concern for compiled/XLA devices, not for eager CPU. For a small model the head is the biggest matmul
(16k vocab x 512 wide = a quarter of the 31M model's weights) and TRL runs it in fp32, so on CPU it
measured ~40% of a step; with the loss on assistant turns, prompt and padding positions are half or
more of it. Here the backbone runs as usual and TRL's own `ChunkedLogProbFunction` (the same fp32
kernel) projects only the learned positions: the same loss and gradients (tested against TRL's
`compute_loss`), the same metrics, less work.

Used only where it is exact and safe: one process (no DDP/FSDP wrapper to bypass), no Triton (there
TRL already compacts), loss_type nll, no label smoothing / custom loss, no logit scaling or
soft-capping, no MoE auxiliary loss. Anything else falls back to TRL.
"""

from __future__ import annotations

import torch

CHUNK = 32768  # vocabulary columns per tile (TRL's default)


def compact_ok(trainer, model, return_outputs: bool) -> bool:
    args = trainer.args
    text_cfg = model.config.get_text_config() if hasattr(model, "config") else None
    if text_cfg is None or return_outputs or args.loss_type != "nll":
        return False
    if trainer.compute_loss_func is not None or trainer.label_smoother is not None:
        return False
    if trainer.accelerator.num_processes != 1 or getattr(trainer, "aux_loss_enabled", False):
        return False
    device = next(model.parameters()).device
    if device.type in ("cuda", "xpu"):  # TRL compacts there already (Triton kernels)
        return False
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling"):
        if getattr(text_cfg, attr, None) not in (None, 1.0):
            return False
    return True


def compact_nll(trainer, model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """TRL's SFT loss (sum of -log p over learned tokens / their count) with the head on learned rows only.

    inputs: input_ids (B, T), labels (B, T) unshifted, attention_mask (B, T) or position_ids (B, T).
    Also records TRL's metrics (entropy, mean_token_accuracy, num_tokens) the way TRL does.
    """
    from trl.kernels import ChunkedLogProbFunction

    mode = "train" if trainer.model.training else "eval"
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(causal, causal.base_model_prefix)
    fwd = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    fwd["use_cache"] = False
    # accelerate applies mixed precision by wrapping the top model's forward; the backbone is called
    # directly here, so enter the same autocast explicitly (else its matmuls silently run in fp32)
    with trainer.accelerator.autocast():
        hidden = backbone(**fwd).last_hidden_state[:, :-1]  # (B, T-1, C): position t predicts t+1
        labels = inputs["labels"][:, 1:]
        mask = labels != -100  # (B, T-1)
        head = causal.get_output_embeddings()
        log_probs, entropy, _, _, is_top1 = ChunkedLogProbFunction.apply(
            hidden[mask], head.weight, head.bias, labels[mask], 1.0, CHUNK, None, 1.0,
            ("log_probs", "entropy", "is_top1"))  # each (N,) over the N learned positions
    n = mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = -log_probs.sum() / torch.as_tensor(n).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * trainer.accelerator.num_processes

    with torch.no_grad():  # the metrics TRL logs, computed on the same positions
        n_valid = mask.sum()
        m = trainer._metrics[mode]
        m["entropy"].append((entropy.sum() / n_valid).item() if n_valid > 0 else 0.0)
        m["mean_token_accuracy"].append((is_top1.sum() / n_valid).item() if n_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                trainer._total_train_tokens += int(inputs["attention_mask"].sum())
            else:
                trainer._total_train_tokens += int(inputs["input_ids"].numel())
        m["num_tokens"] = [trainer._total_train_tokens]
    return loss
