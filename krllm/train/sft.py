"""Supervised fine-tuning of any HF causal LM with LoRA / DoRA / QLoRA / full, on TRL's SFTTrainer.

    krllm sft -c configs/sft/npc_lora.yaml [--set peft.method=dora] [--resume]

Our part is the glue users otherwise write by hand: validated records (krllm.data.sets.records), our own
tokenization with assistant-only labels and a learned end-of-turn (sft_data), device-aware batching
(batching), PEFT config from a YAML (incl. `num_layers` from the top), metrics + progress, atomic
outputs. The training loop, optimizer, checkpoints and resume are TRL/transformers'.

Run directory (`runs/<name>/`):
    config.yaml  lineage.json  metrics.jsonl  tb/  summary.json  samples.md  samples.jsonl
    checkpoints/checkpoint-N/   transformers Trainer checkpoints (weights + optimizer + scheduler + RNG)
    adapter/     PEFT adapter (adapter_config.json + adapter_model.safetensors) + tokenizer  [lora/dora/qlora]
    merged/      base + adapter as one HF directory (when `merge: true`)                     [lora/dora]
    hf/          the fine-tuned HF directory                                                [full]
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from krllm.config import write_resolved
from krllm.data.tokens.chat_tokens import stop_ids
from krllm.data.sets.records import load_examples
from krllm.device import pick_device, pick_dtype
from krllm.errors import KrllmError
from krllm.runs import write_json, write_lineage
from krllm.tracking import MetricsLogger
from krllm.train import batching as B
from krllm.train import sft_outputs as O
from krllm.train.sft_config import PeftSection, SFTRunConfig
from krllm.train.sft_data import tokenize_records

CHECKPOINTS = O.CHECKPOINTS


# ---------------------------------------------------------------- inputs

def load_tokenizer(cfg: SFTRunConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.base_model)
    if cfg.data.chat_template:
        path = Path(cfg.data.chat_template)
        if not path.is_file():
            raise KrllmError(f"data.chat_template: {path} not found")
        tok.chat_template = path.read_text(encoding="utf-8")
    if tok.pad_token is None:  # padding is masked out of attention and loss, any id works
        tok.pad_token = tok.eos_token
    return tok


def split_records(cfg: SFTRunConfig, kind: str = "sft") -> tuple[list[dict], list[dict]]:
    """(train, eval) records: a separate eval file, or a seeded hold-out of `eval_fraction`."""
    d = cfg.data
    train = load_examples(d.train, kind, n=d.n, seed=d.seed, system=d.system_prompt)
    if d.eval:  # a built-in eval set: fresh records (seed + 1), eval_fraction of the train size
        n_eval = max(1, math.ceil(len(train) * (d.eval_fraction or 0.05))) if d.eval.startswith("builtin:") else None
        return train, load_examples(d.eval, kind, n=n_eval, seed=d.seed + 1, system=d.system_prompt)
    if d.eval_fraction == 0 or len(train) < 2:
        return train, []
    order = list(range(len(train)))
    random.Random(d.seed).shuffle(order)
    n_eval = max(1, math.ceil(len(train) * d.eval_fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


def _layers(model) -> int:
    return int(model.config.get_text_config().num_hidden_layers)


def block_linear_names(model) -> list[str]:
    """Names (last component) of the Linear layers inside the transformer blocks: q_proj, ..., down_proj."""
    names = set()
    for full, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in full:
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def peft_config_for(p: PeftSection, model, task_type: str = "CAUSAL_LM"):
    """Our YAML section -> peft.LoraConfig (DoRA = LoRA + use_dora; QLoRA = LoRA on a 4-bit base).

    `num_layers` (adapt the top N blocks, as mlx-lm) maps to PEFT's `layers_to_transform`, which PEFT
    refuses together with the string `all-linear`: then the block's Linear names are listed explicitly.
    """
    from peft import LoraConfig

    n = _layers(model)
    layers, targets = None, p.target_modules
    if p.num_layers is not None:
        if p.num_layers > n:
            raise KrllmError(f"peft.num_layers={p.num_layers} but the model has {n} layers")
        layers = list(range(n - p.num_layers, n))
        if targets == "all-linear":
            targets = block_linear_names(model)
    return LoraConfig(
        r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, task_type=task_type,
        target_modules=targets, use_dora=p.method == "dora", layers_to_transform=layers,
        modules_to_save=p.modules_to_save,
    )


def _quantization_config(dtype: torch.dtype):
    """QLoRA's 4-bit NF4 base: CUDA + bitsandbytes only, said plainly otherwise."""
    if not torch.cuda.is_available():
        raise KrllmError("peft.method=qlora loads the base model in 4 bits with bitsandbytes, which needs a CUDA "
                         "GPU; none is available here. Use peft.method=lora (same adapter, full-precision base) "
                         "on CPU/MPS.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise KrllmError("peft.method=qlora needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16)


def load_model(cfg: SFTRunConfig, tokenizer, dtype: torch.dtype):
    """Base model in fp32 master weights (autocast does the low precision), or 4-bit for QLoRA."""
    from transformers import AutoModelForCausalLM

    kw = {"dtype": torch.float32}
    if cfg.peft.method == "qlora":
        kw = {"quantization_config": _quantization_config(dtype), "dtype": torch.bfloat16}
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, **kw)
    if cfg.peft.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise KrllmError(f"the tokenizer has {len(tokenizer)} tokens but {cfg.base_model} embeds only {rows}: "
                         "use the tokenizer the model was trained with")
    stops = stop_ids(tokenizer)
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.peft.method == "full" and cfg.peft.num_layers is not None:
        freeze_below(model, cfg.peft.num_layers)
    return model


def freeze_below(model, num_layers: int) -> None:
    """Full fine-tuning of the top `num_layers` blocks (+ final norm) only; everything else frozen."""
    n = _layers(model)
    if num_layers > n:
        raise KrllmError(f"peft.num_layers={num_layers} but the model has {n} layers")
    keep = {f".layers.{i}." for i in range(n - num_layers, n)}
    for name, p in model.named_parameters():
        p.requires_grad = any(k in name for k in keep) or name.endswith("model.norm.weight")


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
    tokenizer = load_tokenizer(cfg)
    train_records, eval_records = split_records(cfg)
    train_rows, stats = tokenize_records(train_records, tokenizer, cfg.data.max_length, cfg.data.loss_on)
    eval_rows, _ = tokenize_records(eval_records, tokenizer, cfg.data.max_length, cfg.data.loss_on)
    if not train_rows:
        raise KrllmError("no training example has a token to learn (all dropped); check data.loss_on / max_length")
    model = load_model(cfg, tokenizer, dtype)
    if mode == "packed":
        B.check_packing_isolation(model, len(tokenizer))
    return Prepared(device, dtype, mode, tokenizer, model, train_records, eval_records, train_rows, eval_rows,
                    stats)


def make_trainer(cfg: SFTRunConfig, p: Prepared, run_dir: Path, counter: B.TokenCounter | None = None):
    """TRL SFTTrainer over our tokenized rows, collator and sampler for `p.mode`, PEFT config from YAML."""
    import datasets
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    counter = counter if counter is not None else B.TokenCounter()
    collator = None
    if p.mode in ("length_grouped", "random"):
        collator = B.PadCollator(p.tokenizer.pad_token_id, counter=counter)
    elif p.mode == "packed":
        collator = B.PackedCollator(p.tokenizer.pad_token_id, cfg.data.max_length, counter=counter)
    t = cfg.train
    has_eval = bool(p.eval_rows)
    early = bool(t.early_stopping_patience and has_eval)
    args = SFTConfig(
        output_dir=str(run_dir / CHECKPOINTS), seed=t.seed, data_seed=t.seed,
        learning_rate=t.lr, lr_scheduler_type=t.schedule, warmup_steps=t.warmup, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, gradient_checkpointing=t.gradient_checkpointing,
        bf16=p.dtype == torch.bfloat16, fp16=p.dtype == torch.float16, use_cpu=p.device.type == "cpu",
        max_length=cfg.data.max_length,
        packing=p.mode == "padding_free", packing_strategy="bfd",
        dataset_kwargs=None if p.mode == "padding_free" else {"skip_prepare_dataset": True},
        remove_unused_columns=False,
        eval_strategy="steps" if has_eval else "no", eval_steps=t.eval_steps,
        # early stopping keeps the best evaluation, so every evaluation must leave a checkpoint
        save_strategy="steps", save_steps=t.eval_steps if early else t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=early, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=t.logging_steps, logging_first_step=True, report_to="none", disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if p.mode == "padding_free":  # varlen kernels: the flattened batch attends per document
        p.model.set_attn_implementation("flash_attention_2")
    callbacks = [EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_min_delta)] if early else []
    peft_config = peft_config_for(cfg.peft, p.model) if cfg.peft.method != "full" else None
    cols = ["input_ids", "labels", "length"]
    train_ds = datasets.Dataset.from_list(p.train_rows).select_columns(cols)
    eval_ds = datasets.Dataset.from_list(p.eval_rows).select_columns(cols) if has_eval else None
    trainer = _sft_trainer_class(SFTTrainer)(
        model=p.model, args=args, data_collator=collator, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=p.tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.krllm_batching, trainer.krllm_counter = p.mode, counter
    trainer.remove_callback(PrinterCallback)  # our KrllmLogCallback prints
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


def with_length_sampling(base):
    """`base` (SFTTrainer or Trainer) whose train sampler groups by length (`length_grouped` mode), whose
    evaluation batches are sorted by length (less padding, same loss), and whose evaluation batches are
    not counted as training throughput."""

    class LengthAware(base):
        krllm_batching: str | None = None
        krllm_counter: B.TokenCounter | None = None

        def evaluate(self, *args, **kwargs):
            return self._without_counting(super().evaluate, *args, **kwargs)

        def predict(self, *args, **kwargs):
            return self._without_counting(super().predict, *args, **kwargs)

        def _without_counting(self, fn, *args, **kwargs):
            """Batches collated while evaluating are not training throughput."""
            if self.krllm_counter is None:
                return fn(*args, **kwargs)
            self.krllm_counter.paused = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.krllm_counter.paused = False

        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            if self.krllm_batching == "length_grouped" and "length" in ds.column_names:
                return B.LengthGroupedSampler(ds["length"], self.args.train_batch_size * max(
                    1, self.args.gradient_accumulation_steps), seed=self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            if "length" in getattr(eval_dataset, "column_names", ()) and self.args.world_size <= 1:
                lengths = eval_dataset["length"]
                return sorted(range(len(lengths)), key=lambda i: -lengths[i])
            return super()._get_eval_sampler(eval_dataset)

    return LengthAware


def run_sft(cfg: SFTRunConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train, save adapter/merged (or hf/), write samples and summary. Returns the summary dict.

    Safe under `accelerate launch` (several processes): rank 0 alone writes config, metrics, samples and
    outputs; merged/ and samples are written only by single-process runs (then: `krllm merge`).
    """
    from krllm.train.hf_callbacks import KrllmLogCallback

    t_start = time.time()
    run_dir = Path(cfg.runs_dir) / cfg.name
    main, single = O.rank() == 0, O.world_size() == 1
    resume_from = O.prepare_run_dir(run_dir, resume, overwrite)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_resolved(cfg, run_dir / "config.yaml")

    p = prepare(cfg)
    tokenizer, stats = p.tokenizer, p.stats
    if main:
        print(f"sft {cfg.name}: {cfg.peft.method} on {cfg.base_model} | device {p.device.type} | compute dtype "
              f"{str(p.dtype).removeprefix('torch.')} | batching {p.mode} | {stats.examples} train examples, "
              f"{stats.tokens:,} tokens ({stats.target_tokens:,} learned), {len(p.eval_rows)} eval examples")
        if stats.truncated:
            print(f"note: {stats.truncated} examples were longer than data.max_length={cfg.data.max_length} and "
                  "were cut (their end-of-turn token is lost)")

    source = p.eval_records or p.train_records
    sample_src = [r for r in source if O.prompt_of(r)][: cfg.samples.n] if single else []
    sample_prompts = [O.prompt_of(r) for r in sample_src]
    before = O.generate_answers(p.model, tokenizer, sample_prompts, cfg.samples.max_new_tokens)

    counter = B.TokenCounter()
    trainer = make_trainer(cfg, p, run_dir, counter)
    n_train = sum(x.numel() for x in trainer.model.parameters() if x.requires_grad)
    n_all = sum(x.numel() for x in trainer.model.parameters())
    if main:
        print(f"trainable parameters: {n_train:,} of {n_all:,} ({100 * n_train / n_all:.2f}%)")

    has_eval = bool(p.eval_rows)
    logger = MetricsLogger(run_dir, tensorboard=cfg.tracking.tensorboard, wandb_project=cfg.tracking.wandb_project,
                           run_name=cfg.name) if main else None
    try:
        if logger is not None:
            trainer.add_callback(KrllmLogCallback(logger, counter if p.mode != "padding_free" else None,
                                                  label=f"sft {cfg.name}"))
            write_lineage(run_dir, _lineage_inputs(cfg), extra={"data": {
                "train": cfg.data.train, "eval": cfg.data.eval, "n": cfg.data.n, "seed": cfg.data.seed,
                "resumed_from": str(resume_from) if resume_from else None}})
        # the base model's validation loss (fresh adapters are a no-op), logged at step 0
        loss_before = trainer.evaluate()["eval_loss"] if has_eval and not resume_from else None
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        final_eval = _last_eval(trainer) if has_eval else {}
        if has_eval and not final_eval:
            final_eval = trainer.evaluate()
            if logger is not None:
                logger.log(trainer.state.global_step, "eval", **{
                    k[5:]: v for k, v in final_eval.items() if k.startswith("eval_") and isinstance(v, float)})
    finally:
        if logger is not None:
            logger.close()

    model = trainer.model
    after = O.generate_answers(model, tokenizer, sample_prompts, cfg.samples.max_new_tokens)
    if main and sample_prompts:
        refs = [r["messages"][len(q)]["content"] for r, q in zip(sample_src, sample_prompts)]
        O.write_samples(run_dir, sample_prompts, before, after, refs)

    outputs = {}
    out_name = "hf" if cfg.peft.method == "full" else "adapter"
    O.save_final(trainer, tokenizer, run_dir / out_name)
    outputs[out_name] = str(run_dir / out_name)
    if cfg.merge and cfg.peft.method in ("lora", "dora"):
        if single:
            O.save_merged(model.merge_and_unload(), tokenizer, run_dir / "merged")
            outputs["merged"] = str(run_dir / "merged")
        elif main:
            print(f"note: multi-process run: merge with `krllm merge {run_dir / 'adapter'} --out "
                  f"{run_dir / 'merged'}`")

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


def _last_eval(trainer) -> dict:
    """The evaluation logged at the final step, if the schedule already ran one there (no second pass).

    With early stopping the best checkpoint was reloaded: its evaluation is the one that counts.
    """
    state = trainer.state
    want = state.global_step
    if state.best_model_checkpoint and trainer.args.load_best_model_at_end:
        want = int(Path(state.best_model_checkpoint).name.split("-")[-1])
    for rec in reversed(state.log_history):
        if "eval_loss" in rec and rec.get("step") == want:
            return rec
    return {}


def _lineage_inputs(cfg: SFTRunConfig) -> dict:
    inputs = {"base_model": cfg.base_model, "tokenizer": cfg.tokenizer or cfg.base_model}
    for role, spec in (("data", cfg.data.train), ("eval_data", cfg.data.eval)):
        if spec and not str(spec).startswith("builtin:"):
            inputs[role] = spec
    return inputs
