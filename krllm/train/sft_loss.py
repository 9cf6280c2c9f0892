"""The SFT loss on CPU / MPS with the output head applied to learned positions only
(krllm.train.hf.compact_head says why): the same loss and gradients as TRL's `compute_loss` (tested),
the same metrics, less work. Falls back to TRL for loss types other than nll, label smoothing or a
custom loss, and wherever `can_compact` says no.
"""

from __future__ import annotations

import torch

from krllm.train.hf.compact_head import backbone_and_head, can_compact, head_logprobs


def compact_ok(trainer, model, return_outputs: bool) -> bool:
    args = trainer.args
    if return_outputs or args.loss_type != "nll":
        return False
    if trainer.compute_loss_func is not None or trainer.label_smoother is not None:
        return False
    return can_compact(trainer, model)


def compact_nll(trainer, model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """TRL's SFT loss (sum of -log p over learned tokens / their count) with the head on learned rows only.

    inputs: input_ids (B, T), labels (B, T) unshifted, attention_mask (B, T) or position_ids (B, T).
    Also records TRL's metrics (entropy, mean_token_accuracy, num_tokens) the way TRL does.
    """
    mode = "train" if trainer.model.training else "eval"
    backbone, head = backbone_and_head(model)
    fwd = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    fwd["use_cache"] = False
    # accelerate applies mixed precision by wrapping the top model's forward; the backbone is called
    # directly here, so enter the same autocast explicitly (else its matmuls silently run in fp32)
    with trainer.accelerator.autocast():
        hidden = backbone(**fwd).last_hidden_state[:, :-1]  # (B, T-1, C): position t predicts t+1
        labels = inputs["labels"][:, 1:]
        mask = labels != -100  # (B, T-1)
        log_probs, entropy, _, _, is_top1 = head_logprobs(
            head, hidden[mask], labels[mask], outputs=("log_probs", "entropy", "is_top1"))  # each (N,), N learned
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
