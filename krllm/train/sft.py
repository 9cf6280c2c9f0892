"""Supervised fine-tuning of any HF causal LM with LoRA / DoRA / QLoRA / full, on TRL's SFTTrainer.

    krllm sft -c configs/sft/npc_lora.yaml [--set peft.method=dora] [--resume]

Our part is the glue users otherwise write by hand: validated records (krllm.data.sets.records), our own
tokenization with assistant-only labels and a learned end-of-turn (sft_data), the compact loss on CPU
(sft_loss); and, shared with the other methods in krllm.train.hf: device-aware batching, PEFT config
from a YAML (incl. `num_layers` from the top), metrics + progress, atomic outputs. The training loop,
optimizer, checkpoints and resume are TRL/transformers'.

Run directory (`runs/<name>/`):
    config.yaml  lineage.json  metrics.jsonl  tb/  summary.json  samples.md  samples.jsonl
    checkpoints/checkpoint-N/   transformers Trainer checkpoints (weights + optimizer + scheduler + RNG)
    adapter/     PEFT adapter (adapter_config.json + adapter_model.safetensors) + tokenizer  [lora/dora/qlora]
    adapter_mlx/ mlx-lm's adapter, with `backend: mlx` (krllm.train.mlx_sft)                    [lora/dora/full]
    merged/      base + adapter as one HF directory (when `merge: true`)                     [lora/dora]
    hf/          the fine-tuned HF directory                                                [full]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from krllm.device import pick_device, pick_dtype
from krllm.runs import write_json
from krllm.train.hf import batching as B
from krllm.train.hf import outputs as O
from krllm.train.hf import samples as S
from krllm.train.hf.callbacks import KrllmLogCallback, open_logger
from krllm.train.hf.model import load_causal_lm, load_tokenizer, parameter_counts, peft_config_for
from krllm.train.hf.trainer import (early_stopping, last_eval, trainer_arguments, use_krllm_logging,
                                    with_length_sampling)
from krllm.train.sft_config import SFTRunConfig
from krllm.train.sft_data import split_and_tokenize


# ---------------------------------------------------------------- the stage

@dataclass
class Prepared:
    """Everything decided before the trainer exists (what `make_trainer` and the samples need)."""

    device: torch.device
    dtype: torch.dtype
    mode: str  # resolved batching
    tokenizer: object
    model: object
    train_records: list[dict]
    eval_records: list[dict]
    train_rows: list[dict]
    eval_rows: list[dict]
    stats: object


def prepare(cfg: SFTRunConfig) -> Prepared:
    """Device, dtype, batching, tokenizer, validated + tokenized data, base model."""
    device = pick_device(cfg.train.device)
    dtype = pick_dtype(cfg.train.dtype, device)
    mode = B.resolve_batching(cfg.train.batching, device)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.base_model, cfg.data.chat_template)
    train_records, eval_records, train_rows, eval_rows, stats = split_and_tokenize(cfg, tokenizer)
    model = load_causal_lm(cfg.base_model, tokenizer, cfg.peft, dtype, cfg.train.gradient_checkpointing)
    if mode == "packed":
        B.check_packing_isolation(model, len(tokenizer))
    return Prepared(device, dtype, mode, tokenizer, model, train_records, eval_records, train_rows, eval_rows,
                    stats)


def make_trainer(cfg: SFTRunConfig, p: Prepared, run_dir: Path, counter: B.TokenCounter | None = None):
    """TRL SFTTrainer over our tokenized rows, collator and sampler for `p.mode`, PEFT config from YAML."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    counter = counter if counter is not None else B.TokenCounter()
    collator = None
    if p.mode in ("length_grouped", "random"):
        collator = B.PadCollator(p.tokenizer.pad_token_id, counter=counter)
    elif p.mode == "packed":
        collator = B.PackedCollator(p.tokenizer.pad_token_id, cfg.data.max_length, counter=counter)
    has_eval = bool(p.eval_rows)
    args = SFTConfig(
        **trainer_arguments(cfg.train, run_dir, p.device, p.dtype, has_eval),
        max_length=cfg.data.max_length,
        packing=p.mode == "padding_free", packing_strategy="bfd",
        dataset_kwargs=None if p.mode == "padding_free" else {"skip_prepare_dataset": True},
    )
    if p.mode == "padding_free":  # varlen kernels: the flattened batch attends per document
        p.model.set_attn_implementation("flash_attention_2")
    peft_config = peft_config_for(cfg.peft, p.model) if cfg.peft.method != "full" else None
    cols = ["input_ids", "labels", "length"]
    train_ds = datasets.Dataset.from_list(p.train_rows).select_columns(cols)
    eval_ds = datasets.Dataset.from_list(p.eval_rows).select_columns(cols) if has_eval else None
    trainer = _sft_trainer_class(SFTTrainer)(
        model=p.model, args=args, data_collator=collator, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=p.tokenizer, peft_config=peft_config, callbacks=early_stopping(cfg.train, has_eval))
    use_krllm_logging(trainer, p.mode, counter)
    return trainer


def _sft_trainer_class(base):
    """SFTTrainer + length-aware sampling + the compact loss on CPU/MPS (see sft_loss)."""
    from krllm.train.sft_loss import compact_nll, compact_ok

    class KrllmSFT(with_length_sampling(base)):
        krllm_compact_loss = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.krllm_compact_loss and compact_ok(self, model, return_outputs):
                return compact_nll(self, model, inputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return KrllmSFT


def run_sft(cfg: SFTRunConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train, save adapter/merged (or hf/), write samples and summary. Returns the summary dict.

    Safe under `accelerate launch` (several processes): rank 0 alone writes config, metrics, samples and
    outputs; merged/ and samples are written only by single-process runs (then: `krllm merge`).
    """
    from krllm.train.mlx_sft import resolve_backend

    if resolve_backend(cfg.backend) == "mlx":  # mlx-lm's trainer, same config and run layout (docs/mlx.md)
        from krllm.train.mlx_sft import run_sft_mlx

        return run_sft_mlx(cfg, resume=resume, overwrite=overwrite)
    t_start = time.time()
    main, single = O.rank() == 0, O.world_size() == 1
    p = prepare(cfg)  # every input validated before an old run directory is touched (--overwrite clears it)
    run_dir, resume_from = O.start_run(cfg, resume, overwrite)
    tokenizer, stats = p.tokenizer, p.stats
    if main:
        print(f"sft {cfg.name}: {cfg.peft.method} on {cfg.base_model} | device {p.device.type} | compute dtype "
              f"{str(p.dtype).removeprefix('torch.')} | batching {p.mode} | {stats.examples} train examples, "
              f"{stats.tokens:,} tokens ({stats.target_tokens:,} learned), {len(p.eval_rows)} eval examples")
        if stats.truncated:
            print(f"note: {stats.truncated} examples were longer than data.max_length={cfg.data.max_length} and "
                  "were cut (their end-of-turn token is lost)")

    source = p.eval_records or p.train_records
    sample_src = [r for r in source if S.prompt_of(r)][: cfg.samples.n] if single else []
    sample_prompts = [S.prompt_of(r) for r in sample_src]
    before = S.generate_answers(p.model, tokenizer, sample_prompts, cfg.samples.max_new_tokens)

    counter = B.TokenCounter()
    trainer = make_trainer(cfg, p, run_dir, counter)
    n_train, n_all = parameter_counts(trainer.model)
    if main:
        print(f"trainable parameters: {n_train:,} of {n_all:,} ({100 * n_train / n_all:.2f}%)")

    has_eval = bool(p.eval_rows)
    logger = open_logger(cfg, run_dir) if main else None
    try:
        if logger is not None:
            trainer.add_callback(KrllmLogCallback(logger, counter if p.mode != "padding_free" else None,
                                                  label=f"sft {cfg.name}"))
            O.write_run_lineage(cfg, run_dir, resume_from)
        # the base model's validation loss (fresh adapters are a no-op), logged at step 0
        loss_before = trainer.evaluate()["eval_loss"] if has_eval and not resume_from else None
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        final_eval = last_eval(trainer) if has_eval else {}
        if has_eval and not final_eval:
            final_eval = trainer.evaluate()
            if logger is not None:
                logger.log(trainer.state.global_step, "eval", **{
                    k[5:]: v for k, v in final_eval.items() if k.startswith("eval_") and isinstance(v, float)})
    finally:
        if logger is not None:
            logger.close()

    model = trainer.model
    after = S.generate_answers(model, tokenizer, sample_prompts, cfg.samples.max_new_tokens)
    if main and sample_prompts:
        refs = [r["messages"][len(q)]["content"] for r, q in zip(sample_src, sample_prompts)]
        S.write_samples(run_dir, sample_prompts, before, after, refs)

    outputs = O.save_outputs(trainer, tokenizer, run_dir, cfg.peft.method, cfg.merge)

    state = trainer.state
    summary = {
        "method": cfg.peft.method, "batching": p.mode, "device": p.device.type,
        "dtype": str(p.dtype).removeprefix("torch."), "processes": O.world_size(),
        "steps": state.global_step, "max_steps": state.max_steps,
        "stopped_early": bool(cfg.train.early_stopping_patience and state.global_step < state.max_steps),
        "best_checkpoint": state.best_model_checkpoint if trainer.args.load_best_model_at_end else None,
        "train_loss": result.training_loss, "eval_loss": final_eval.get("eval_loss"),
        "eval_loss_before": loss_before, "trainable_params": n_train, "total_params": n_all, "data": stats.as_dict(),
        "eval_examples": len(p.eval_rows), "train_runtime_s": result.metrics.get("train_runtime"),
        "wall_s": round(time.time() - t_start, 1), "samples_stopped_before": [b["stopped"] for b in before],
        "samples_stopped_after": [a["stopped"] for a in after], "outputs": outputs,
    }
    if main:
        write_json(run_dir / "summary.json", summary)
    return summary

