"""Sequence classification: LoRA (or DoRA / full) on AutoModelForSequenceClassification over the same
base model, reported as accuracy and macro-F1 on a held-out split.

    krllm classify-train -c configs/classify/sentiment_lora.yaml

Why here and not in TRL: TRL has no classification trainer; transformers' Trainer does the loop, PEFT
(task_type SEQ_CLS) adapts the backbone and trains the new `score` head fully (saved in the adapter).
For a Llama the class is read from the last non-pad token, so every text ends with EOS. Loading,
PEFT config, trainer arguments, logging and outputs are the shared krllm.train.hf plumbing.

One process only (refused under torchrun / accelerate launch). Run directory (`runs/<name>/`):
config.yaml, lineage.json, metrics.jsonl, tb/, checkpoints/, adapter/ (PEFT + tokenizer +
labels.json; hf/ for full), eval.json (accuracy, macro-F1, per-class P/R/F1, confusion matrix,
majority-class baseline), predictions.jsonl (held-out texts with label and prediction).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field

import torch
from pydantic import Field

from krllm.config import RunName, StrictModel, atomic_write_text
from krllm.data.sets.records import load_examples
from krllm.device import pick_device, pick_dtype
from krllm.errors import DataError, KrllmError
from krllm.runs import write_json, write_lineage
from krllm.train.hf import batching as B
from krllm.train.hf.config import PeftSection, TrackingSection, TrainSection


class ClassifyData(StrictModel):
    train: str = Field("builtin:sentiment", description="JSONL of {text, label} or builtin:sentiment")
    eval: str | None = Field(None, description="held-out JSONL; None = hold out eval_fraction of train")
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of train held out for accuracy/F1 "
                                 "when eval is None")
    n: int | None = Field(None, gt=0, description="examples to use (builtin: how many to generate, default 1000)")
    seed: int = 0
    max_length: int = Field(256, gt=1, description="tokens per text (longer texts are cut)")
    labels: list[str] | None = Field(None, description="label names in class-id order; None = sorted labels "
                                     "found in the train set")


class ClassifyRunConfig(StrictModel):
    name: RunName = Field("classify", description="run name: outputs go to <runs_dir>/<name>/")
    runs_dir: str = "runs"
    base_model: str = Field(..., description="HF causal-LM directory; its backbone gets a classification head")
    tokenizer: str | None = None
    data: ClassifyData = ClassifyData()
    peft: PeftSection = PeftSection(r=8, alpha=16.0)
    train: TrainSection = TrainSection(lr=5e-4, epochs=3.0, batch_size=16, eval_steps=50)
    tracking: TrackingSection = TrackingSection()


# ---------------------------------------------------------------- data

def label_names(cfg: ClassifyRunConfig, train: list[dict], evals: list[dict]) -> list[str]:
    found = sorted({str(r["label"]) for r in train})
    names = cfg.data.labels or found
    unknown = sorted({str(r["label"]) for r in train + evals} - set(names))
    if unknown:
        raise DataError(f"labels {unknown} are not in data.labels {names}")
    if len(names) < 2:
        raise DataError(f"classification needs at least 2 labels; the train set has {names}")
    return names


def split(cfg: ClassifyRunConfig) -> tuple[list[dict], list[dict]]:
    d = cfg.data
    train = load_examples(d.train, "classify", n=d.n, seed=d.seed)
    if d.eval:
        return train, load_examples(d.eval, "classify", seed=d.seed + 1)
    order = list(range(len(train)))
    random.Random(d.seed).shuffle(order)
    held = set(order[: max(1, math.ceil(len(train) * d.eval_fraction))])
    return [r for i, r in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


def encode(records: list[dict], tokenizer, names: list[str], max_length: int) -> list[dict]:
    """text -> ids ending with EOS (the token the head reads), label -> class id."""
    index = {n: i for i, n in enumerate(names)}
    eos = tokenizer.eos_token_id
    rows = []
    for r in records:
        ids = list(tokenizer(r["text"])["input_ids"])[: max_length - 1]
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        rows.append({"input_ids": ids, "label": index[str(r["label"])], "length": len(ids)})
    return rows


@dataclass
class ClassifyCollator:
    """-> input_ids (B, T) right-padded, attention_mask (B, T), labels (B,)."""

    pad_token_id: int
    counter: B.TokenCounter = field(default_factory=B.TokenCounter)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, : len(e["input_ids"])] = torch.as_tensor(e["input_ids"])
            mask[i, : len(e["input_ids"])] = 1
        self.counter.add(int(mask.sum()), ids.numel(), len(examples))
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long)}


# ---------------------------------------------------------------- metrics

def classification_report(y_true: list[int], y_pred: list[int], names: list[str]) -> dict:
    """Accuracy, macro-F1 (unweighted mean over classes; a class never predicted nor present counts 0),
    per-class precision/recall/F1/support, confusion matrix [true][pred], majority-class baseline."""
    k = len(names)
    conf = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred):
        conf[t][p] += 1
    n = len(y_true)
    per, f1s = {}, []
    for c in range(k):
        tp = conf[c][c]
        pred = sum(conf[r][c] for r in range(k))
        true = sum(conf[c])
        prec = tp / pred if pred else 0.0
        rec = tp / true if true else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[names[c]] = {"precision": prec, "recall": rec, "f1": f1, "support": true}
        f1s.append(f1)
    majority = max(sum(row) for row in conf) / n if n else 0.0
    return {"accuracy": sum(conf[c][c] for c in range(k)) / n if n else 0.0, "f1_macro": sum(f1s) / k,
            "per_class": per, "confusion": conf, "labels": names, "n": n, "majority_baseline": majority}


def _compute_metrics(names):
    def fn(pred):
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        rep = classification_report(list(pred.label_ids), list(logits.argmax(-1)), names)
        return {"accuracy": rep["accuracy"], "f1_macro": rep["f1_macro"]}
    return fn


# ---------------------------------------------------------------- the stage

def run_classify(cfg: ClassifyRunConfig, resume: bool = False, overwrite: bool = False) -> dict:
    import datasets
    from transformers import Trainer, TrainingArguments

    from krllm.train.hf.callbacks import KrllmLogCallback, open_logger
    from krllm.train.hf.model import (base_model_path, freeze_below, load_base_model, load_tokenizer, parameter_counts,
                                      peft_config_for)
    from krllm.train.hf.outputs import save_final, start_run, world_size
    from krllm.train.hf.trainer import early_stopping, trainer_arguments, use_krllm_logging, with_length_sampling

    if world_size() > 1:
        raise KrllmError("classify-train runs in one process (a classification head on a small base trains in "
                         "minutes); start it without torchrun / accelerate launch")
    t0 = time.time()
    if cfg.peft.method == "qlora":
        raise KrllmError("classification supports peft.method lora, dora or full (qlora: use krllm sft on CUDA)")
    if cfg.train.batching in ("packed", "padding_free"):
        raise KrllmError("classification reads one label per row: use train.batching auto, length_grouped or random")
    device = pick_device(cfg.train.device)
    dtype = pick_dtype(cfg.train.dtype, device)
    mode = "length_grouped" if cfg.train.batching == "auto" else cfg.train.batching

    tokenizer = load_tokenizer(cfg.tokenizer or cfg.base_model)
    train_recs, eval_recs = split(cfg)
    names = label_names(cfg, train_recs, eval_recs)
    train_rows = encode(train_recs, tokenizer, names, cfg.data.max_length)
    eval_rows = encode(eval_recs, tokenizer, names, cfg.data.max_length)
    base_model_path(cfg.base_model)  # a bad path fails here too, before an old run is touched
    run_dir, resume_from = start_run(cfg, resume, overwrite)  # inputs valid: now an old run may be cleared
    model = load_base_model(
        cfg.base_model, "seq_cls", num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, pad_token_id=tokenizer.pad_token_id)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.peft.method != "full":
        from peft import get_peft_model

        model = get_peft_model(model, peft_config_for(cfg.peft, model, task_type="SEQ_CLS"))
    elif cfg.peft.num_layers is not None:
        freeze_below(model, cfg.peft.num_layers)
        for name, p in model.named_parameters():  # the new head always trains
            p.requires_grad |= name.startswith("score")
    print(f"classify {cfg.name}: {cfg.peft.method} on {cfg.base_model} | device {device.type} | compute dtype "
          f"{str(dtype).removeprefix('torch.')} | labels {names} | {len(train_rows)} train / {len(eval_rows)} "
          "held-out examples")

    args = TrainingArguments(**trainer_arguments(cfg.train, run_dir, device, dtype, has_eval=True))
    counter = B.TokenCounter()
    cols = ["input_ids", "label", "length"]
    trainer = with_length_sampling(Trainer)(
        model=model, args=args, data_collator=ClassifyCollator(tokenizer.pad_token_id, counter),
        train_dataset=datasets.Dataset.from_list(train_rows).select_columns(cols),
        eval_dataset=datasets.Dataset.from_list(eval_rows).select_columns(cols),
        compute_metrics=_compute_metrics(names), callbacks=early_stopping(cfg.train, has_eval=True))
    use_krllm_logging(trainer, mode, counter)
    n_train, _ = parameter_counts(model)

    with open_logger(cfg, run_dir) as logger:
        trainer.add_callback(KrllmLogCallback(logger, counter, label=f"classify {cfg.name}"))
        write_lineage(run_dir, {"base_model": cfg.base_model, "tokenizer": cfg.tokenizer or cfg.base_model,
                                **({"data": cfg.data.train} if not cfg.data.train.startswith("builtin:") else {})},
                      extra={"data": {"train": cfg.data.train, "eval": cfg.data.eval, "n": cfg.data.n,
                                      "seed": cfg.data.seed}})
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        pred = trainer.predict(trainer.eval_dataset)
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        order = list(trainer._get_eval_sampler(trainer.eval_dataset) or range(len(eval_rows)))
        y_pred = [0] * len(eval_rows)  # predictions come in sampler order (sorted by length): map back
        for j, i in enumerate(order):
            y_pred[i] = int(logits[j].argmax())
        report = classification_report([r["label"] for r in eval_rows], y_pred, names)
        logger.log(trainer.state.global_step, "eval", accuracy=report["accuracy"], f1_macro=report["f1_macro"])

    report.update(steps=trainer.state.global_step, method=cfg.peft.method, trainable_params=n_train,
                  wall_s=round(time.time() - t0, 1))
    write_json(run_dir / "eval.json", report)
    atomic_write_text(run_dir / "predictions.jsonl", "".join(
        json.dumps({"text": r["text"], "label": str(r["label"]), "pred": names[p]}, ensure_ascii=False) + "\n"
        for r, p in zip(eval_recs, y_pred)))
    out = run_dir / ("hf" if cfg.peft.method == "full" else "adapter")
    save_final(trainer, tokenizer, out, extra=lambda d: write_json(d / "labels.json", {"labels": names}))
    report["output"] = str(out)
    return report
