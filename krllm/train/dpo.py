"""Direct preference optimization of any HF causal LM with LoRA / DoRA / QLoRA / full, on TRL's DPOTrainer.

    krllm dpo -c configs/dpo/math_lora.yaml [--set dpo.beta=0.2] [--resume]

DPO raises the policy's log-probability of the chosen answer relative to the rejected one, measured
against a frozen reference (the starting model), with no reward model and no sampling:
loss = -log sigmoid(beta * ((logp(chosen) - ref_logp(chosen)) - (logp(rejected) - ref_logp(rejected)))).

Our part is the glue: validated pairs (krllm.data.sets.records, file:line errors), handed to TRL in the
conversational form so TRL renders them with the model's chat template; every completion ends with the
end-of-turn token (`<|im_end|>`) and nothing after it, as in SFT, so the aligned model still stops; the
reference (adapter: the base with the adapter switched off, no second copy; full: a frozen copy loaded by
the same loader); and, shared with the other methods in krllm.train.hf, batching, PEFT config, metrics and
the progress line (loss, reward margin, reward accuracy), atomic outputs, samples.

Run directory (`runs/<name>/`), as for `krllm sft`:
    config.yaml  lineage.json  metrics.jsonl  tb/  summary.json  samples.md  samples.jsonl
    checkpoints/checkpoint-N/   transformers Trainer checkpoints (weights + optimizer + scheduler + RNG)
    adapter/     PEFT adapter + tokenizer             [lora/dora/qlora]
    merged/      base + adapter as one HF directory   [lora/dora, when `merge: true`]
    hf/          the aligned HF directory             [full]
metrics.jsonl carries TRL's DPO metrics under their names: rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies, logps/chosen, logps/rejected (train and eval splits).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from krllm.data.tokens.chat_tokens import turn_end_id
from krllm.device import pick_device, pick_dtype
from krllm.errors import KrllmError
from krllm.runs import write_json
from krllm.train.dpo_config import DPORunConfig
from krllm.train.hf import batching as B
from krllm.train.hf import outputs as O
from krllm.train.hf import samples as S
from krllm.train.hf.callbacks import KrllmLogCallback, open_logger
from krllm.train.hf.data import split_records
from krllm.train.hf.model import load_base_model, load_causal_lm, load_tokenizer, parameter_counts, peft_config_for
from krllm.train.hf.trainer import (early_stopping, last_eval, trainer_arguments, use_krllm_logging,
                                    with_length_sampling)

PAIR_KEYS = ("prompt", "chosen", "rejected")


# ---------------------------------------------------------------- data as TRL tokenizes it

def end_at_turn_end(row: dict, eot: int) -> dict:
    """A tokenized pair whose completions end with `eot` and nothing after it (ChatML renders `<|im_end|>\\n`:
    the newline belongs to the template, not to the answer); a completion without one gets it appended.
    Adds `length` (tokens of the longer sequence of the pair) for length-grouped batching."""
    out = {}
    for key in ("chosen_ids", "rejected_ids"):
        ids = list(row[key])
        last = max((i for i, t in enumerate(ids) if t == eot), default=None)
        out[key] = ids[: last + 1] if last is not None else ids + [eot]
    out["length"] = len(row["prompt_ids"]) + max(len(out["chosen_ids"]), len(out["rejected_ids"]))
    return out


def pair_stats(ds, n_records: int, max_length: int) -> dict:
    """Counts of a prepared split: pairs kept, pairs TRL dropped (prompt alone fills max_length), pairs cut
    at max_length, and tokens (both sequences of every pair)."""
    prompt, chosen, rejected = (ds[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    longest = [len(p) + max(len(c), len(r)) for p, c, r in zip(prompt, chosen, rejected)]
    return {"pairs": len(ds), "dropped": n_records - len(ds), "truncated": sum(n > max_length for n in longest),
            "tokens": sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(prompt, chosen, rejected))}


@dataclass
class CountingCollator:
    """TRL's preference collator, counting real and padded tokens for the tokens/s of the progress line.

    -> input_ids (2B, T): the B chosen sequences, then the B rejected ones; attention_mask, completion_mask (2B, T).
    """

    inner: object
    counter: B.TokenCounter

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.inner(examples)
        mask = batch["attention_mask"]
        self.counter.add(int(mask.sum()), mask.numel(), len(examples))
        return batch


def _dpo_trainer_class():
    """DPOTrainer + length-aware sampling + completions that end at the end-of-turn token + split counts."""
    from trl import DPOTrainer

    class KrllmDPO(with_length_sampling(DPOTrainer)):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            n_records = len(dataset)
            ds = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            ds = ds.map(end_at_turn_end, fn_kwargs={"eot": turn_end_id(processing_class)})
            if not hasattr(self, "krllm_data"):
                self.krllm_data = {}
            self.krllm_data[dataset_name] = pair_stats(ds, n_records, args.max_length)
            return ds

    return KrllmDPO


# ---------------------------------------------------------------- the stage

@dataclass
class Prepared:
    """Everything decided before the trainer exists (what `make_trainer` and the samples need)."""

    device: torch.device
    dtype: torch.dtype
    mode: str  # batching: length_grouped | random
    tokenizer: object
    model: object
    train_records: list[dict]
    eval_records: list[dict]


def prepare(cfg: DPORunConfig) -> Prepared:
    """Device, dtype, batching, tokenizer, validated pairs, base model."""
    device = pick_device(cfg.train.device)
    dtype = pick_dtype(cfg.train.dtype, device)
    mode = "length_grouped" if cfg.train.batching == "auto" else cfg.train.batching
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.base_model, cfg.data.chat_template)
    if not tokenizer.chat_template:
        raise KrllmError(f"the tokenizer of {cfg.tokenizer or cfg.base_model} has no chat template; DPO renders the "
                         "pairs as chats: set data.chat_template to a .jinja file")
    train_records, eval_records = split_records(cfg.data, "dpo")
    model = load_causal_lm(cfg.base_model, tokenizer, cfg.peft, dtype, cfg.train.gradient_checkpointing)
    return Prepared(device, dtype, mode, tokenizer, model, train_records, eval_records)


def reference_model(cfg: DPORunConfig):
    """Full fine-tuning: a frozen copy of the starting model, loaded like the policy. Adapters: None (TRL runs
    the policy with its adapter switched off, which is exactly the base)."""
    if cfg.peft.method != "full":
        return None
    ref = load_base_model(cfg.base_model).eval()
    ref.requires_grad_(False)
    return ref


def make_trainer(cfg: DPORunConfig, p: Prepared, run_dir: Path, counter: B.TokenCounter | None = None):
    """TRL DPOTrainer over the conversational pairs, our counting collator and sampler, PEFT config from YAML."""
    import datasets
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    counter = counter if counter is not None else B.TokenCounter()
    has_eval = bool(p.eval_records)
    d = cfg.dpo
    args = DPOConfig(
        **trainer_arguments(cfg.train, run_dir, p.device, p.dtype, has_eval),
        max_length=cfg.data.max_length, beta=d.beta, loss_type=list(d.loss_type), loss_weights=d.loss_weights,
        label_smoothing=d.label_smoothing,
    )
    collator = CountingCollator(DataCollatorForPreference(
        pad_token_id=p.tokenizer.pad_token_id, max_length=args.max_length, truncation_mode=args.truncation_mode,
        pad_to_multiple_of=args.pad_to_multiple_of), counter)
    peft_config = peft_config_for(cfg.peft, p.model) if cfg.peft.method != "full" else None

    def as_dataset(records):
        return datasets.Dataset.from_list([{k: r[k] for k in PAIR_KEYS} for r in records])

    quiet = datasets.is_progress_bar_enabled()
    if quiet:  # TRL tokenizes with datasets.map: one progress bar per pass and split, noise in the run log
        datasets.disable_progress_bars()
    try:
        trainer = _dpo_trainer_class()(
            model=p.model, ref_model=reference_model(cfg), args=args, data_collator=collator,
            train_dataset=as_dataset(p.train_records), eval_dataset=as_dataset(p.eval_records) if has_eval else None,
            processing_class=p.tokenizer, peft_config=peft_config, callbacks=early_stopping(cfg.train, has_eval))
    finally:
        if quiet:
            datasets.enable_progress_bars()
    for split, counts in trainer.krllm_data.items():
        if not counts["pairs"]:
            raise KrllmError(f"every {split} pair was dropped: each prompt alone fills data.max_length="
                             f"{cfg.data.max_length} tokens; raise it")
    use_krllm_logging(trainer, p.mode, counter)
    return trainer


def _margins(metrics: dict) -> dict:
    """Reward margin / accuracy and the policy's log-prob margin (chosen - rejected) of one evaluation."""
    if not metrics:
        return {"reward_margin": None, "reward_accuracy": None, "logp_margin": None}
    return {"reward_margin": metrics.get("eval_rewards/margins"),
            "reward_accuracy": metrics.get("eval_rewards/accuracies"),
            "logp_margin": metrics["eval_logps/chosen"] - metrics["eval_logps/rejected"]}


def run_dpo(cfg: DPORunConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Align, save adapter/merged (or hf/), write samples and summary. Returns the summary dict.

    Safe under `accelerate launch` (several processes): rank 0 alone writes config, metrics, samples and
    outputs; merged/ and samples are written only by single-process runs (then: `krllm merge`).
    """
    t_start = time.time()
    main, single = O.rank() == 0, O.world_size() == 1
    p = prepare(cfg)  # every input validated before an old run directory is touched (--overwrite clears it)
    run_dir, resume_from = O.start_run(cfg, resume, overwrite)
    tokenizer = p.tokenizer
    source = p.eval_records or p.train_records
    sample_src = source[: cfg.samples.n] if single else []
    sample_prompts = [r["prompt"] for r in sample_src]
    before = S.generate_answers(p.model, tokenizer, sample_prompts, cfg.samples.max_new_tokens)

    counter = B.TokenCounter()
    trainer = make_trainer(cfg, p, run_dir, counter)
    stats = trainer.krllm_data
    n_train, n_all = parameter_counts(trainer.model)
    if main:
        ref = "the base with the adapter off" if cfg.peft.method != "full" else "a frozen copy of the base"
        print(f"dpo {cfg.name}: {cfg.peft.method} on {cfg.base_model} | device {p.device.type} | compute dtype "
              f"{str(p.dtype).removeprefix('torch.')} | batching {p.mode} | loss {'+'.join(cfg.dpo.loss_type)}, "
              f"beta {cfg.dpo.beta:g} | reference: {ref} | {stats['train']['pairs']} train pairs "
              f"({stats['train']['tokens']:,} tokens), {stats.get('eval', {}).get('pairs', 0)} eval pairs")
        print(f"trainable parameters: {n_train:,} of {n_all:,} ({100 * n_train / n_all:.2f}%)")
        for split, s in stats.items():
            if s["dropped"] or s["truncated"]:
                print(f"note: {split}: {s['dropped']} pairs dropped (prompt alone fills data.max_length="
                      f"{cfg.data.max_length}), {s['truncated']} cut at max_length (their end-of-turn token is lost)")

    has_eval = "eval" in stats
    logger = open_logger(cfg, run_dir) if main else None
    try:
        if logger is not None:
            trainer.add_callback(KrllmLogCallback(logger, counter, label=f"dpo {cfg.name}"))
            O.write_run_lineage(cfg, run_dir, resume_from)
        # the starting point, logged at step 0: loss ln 2 and reward margin 0 (policy == reference), and the
        # base model's own log-prob margin between chosen and rejected answers
        first = trainer.evaluate() if has_eval and not resume_from else {}
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        final_eval = last_eval(trainer) if has_eval else {}
        if has_eval and not final_eval:
            final_eval = trainer.evaluate()
    finally:
        if logger is not None:
            logger.close()

    model = trainer.model
    after = S.generate_answers(model, tokenizer, sample_prompts, cfg.samples.max_new_tokens)
    if main and sample_prompts:
        refs = [r["chosen"][-1]["content"] for r in sample_src]
        S.write_samples(run_dir, sample_prompts, before, after, refs)

    outputs = O.save_outputs(trainer, tokenizer, run_dir, cfg.peft.method, cfg.merge)

    state = trainer.state
    m_before, m_after = _margins(first), _margins(final_eval)
    summary = {
        "method": cfg.peft.method, "loss_type": list(cfg.dpo.loss_type), "beta": cfg.dpo.beta,
        "batching": p.mode, "device": p.device.type, "dtype": str(p.dtype).removeprefix("torch."),
        "processes": O.world_size(), "steps": state.global_step, "max_steps": state.max_steps,
        "stopped_early": bool(cfg.train.early_stopping_patience and state.global_step < state.max_steps),
        "best_checkpoint": state.best_model_checkpoint if trainer.args.load_best_model_at_end else None,
        "train_loss": result.training_loss, "eval_loss": final_eval.get("eval_loss"),
        "eval_loss_before": first.get("eval_loss"),
        "eval_reward_margin": m_after["reward_margin"], "eval_reward_accuracy": m_after["reward_accuracy"],
        "eval_reward_margin_before": m_before["reward_margin"],
        "eval_logp_margin": m_after["logp_margin"], "eval_logp_margin_before": m_before["logp_margin"],
        "trainable_params": n_train, "total_params": n_all, "data": stats,
        "train_runtime_s": result.metrics.get("train_runtime"), "wall_s": round(time.time() - t_start, 1),
        "samples_stopped_before": [b["stopped"] for b in before],
        "samples_stopped_after": [a["stopped"] for a in after], "outputs": outputs,
    }
    if main:
        write_json(run_dir / "summary.json", summary)
    return summary

