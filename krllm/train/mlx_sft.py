"""`krllm sft --backend mlx`: the same SFT config, trained by mlx-lm (LoRA / DoRA / full) on Apple Silicon's GPU
or, anywhere MLX installs, on the CPU.

    krllm sft -c configs/sft/npc_lora.yaml --backend mlx
    krllm sft -c configs/sft/npc_lora.yaml --backend mlx --set peft.method=dora --set mlx.optimizer=adam

What is ours: the records, tokenization and assistant-only labels (the same rows the PyTorch path trains
on, so a multi-turn chat learns every assistant turn, not only mlx-lm's one prompt/completion split),
the key mapping below, and the run directory. mlx-lm's `tuner.trainer.train` runs the loop, and
`tuner.utils.linear_to_lora_layers` builds the adapters, exactly as `mlx_lm.lora` does.

    our key                       mlx_lm.lora argument
    peft.method lora|dora|full    --fine-tune-type
    peft.r, peft.alpha            lora_parameters.rank, .scale = alpha / r
    peft.dropout                  lora_parameters.dropout
    peft.target_modules           lora_parameters.keys (all-linear: mlx-lm's default, every Linear in a block)
    peft.num_layers (None = all)  --num-layers (-1 = all)
    train.max_steps / epochs      --iters = optimizer steps * grad_accum (mlx-lm counts micro-batches)
    train.batch_size, grad_accum  --batch-size, --grad-accumulation-steps
    train.lr, schedule, warmup    --learning-rate, lr_schedule (cosine_decay / linear_schedule + warmup)
    train.weight_decay            optimizer_config.adamw.weight_decay
    train.max_grad_norm           (mlx-lm has none: the optimizer clips the gradient norm first)
    train.gradient_checkpointing  --grad-checkpoint
    train.logging_steps           --steps-per-report     (these three: optimizer steps * grad_accum)
    train.eval_steps, save_steps  --steps-per-eval, --save-every
    data.max_length               --max-seq-length
    train.seed                    --seed
    mlx.optimizer, val_batches    --optimizer, --val-batches
    mlx.bias_correction           optimizer_config.adam(w).bias_correction (default true here: torch's AdamW)
    mlx.resume_adapter_file       --resume-adapter-file (--resume: the run's own adapters.safetensors)

Run directory, as the PyTorch path's plus mlx-lm's own adapter:
    adapter_mlx/  adapter_config.json + adapters.safetensors + NNNNNNN_adapters.safetensors (every save_steps)
    adapter/      the same adapter converted to PEFT (krllm.model.mlx; exact)        [lora/dora]
    merged/       base + adapter as one HF directory (merge: true)                     [lora/dora]
    hf/           the fine-tuned HF directory                                          [full]
    config.yaml  lineage.json  metrics.jsonl  tb/  summary.json  samples.md  samples.jsonl
"""

from __future__ import annotations

import importlib.util
import math
import platform
import time
from pathlib import Path

import numpy as np

from krllm.errors import KrllmError, UsageError
from krllm.train.sft_config import SFTRunConfig

ADAPTER_MLX = "adapter_mlx"
PAD_TO = 32  # mlx-lm pads each batch to 1 + a multiple of this (fewer distinct shapes to compile)


# ---------------------------------------------------------------- which backend

def mlx_installed() -> bool:
    return importlib.util.find_spec("mlx") is not None and importlib.util.find_spec("mlx_lm") is not None


def apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def resolve_backend(requested: str) -> str:
    """auto -> mlx on Apple Silicon with mlx-lm installed, else torch; mlx without MLX is an error."""
    if requested == "auto":
        return "mlx" if apple_silicon() and mlx_installed() else "torch"
    if requested == "mlx" and not mlx_installed():
        raise UsageError("backend: mlx needs MLX and mlx-lm: pip install 'krllm[mlx]' (Linux: mlx[cpu] needs "
                         "glibc >= 2.35; macOS: Apple Silicon)")
    return requested


# ---------------------------------------------------------------- config -> mlx-lm

def check_supported(cfg: SFTRunConfig) -> None:
    """What the PyTorch path does but mlx-lm cannot, said before anything loads."""
    import os

    problems = []
    if cfg.peft.method == "qlora":
        problems.append("peft.method=qlora: use lora (mlx-lm trains LoRA on an MLX-quantized base only; "
                        "that adapter would not fit the full-precision base the other tools load)")
    if cfg.peft.modules_to_save:
        problems.append("peft.modules_to_save: mlx-lm adapters hold LoRA weights only")
    if cfg.train.device not in ("auto", "cpu", "gpu", "mps"):
        problems.append(f"train.device={cfg.train.device}: MLX runs on auto / gpu (Metal) / cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        problems.append("several processes (torchrun / accelerate): the mlx backend trains in one process")
    if cfg.train.early_stopping_patience:
        problems.append("train.early_stopping_patience: mlx-lm's trainer has no early stopping")
    if problems:
        raise UsageError("backend: mlx cannot run this config:\n  " + "\n  ".join(problems))


def lora_keys(model, targets) -> list[str] | None:
    """peft.target_modules -> mlx-lm's lora_parameters.keys (paths inside a block); all-linear -> None
    (mlx-lm's default: every Linear of a block, which is what PEFT's all-linear adapts there)."""
    import mlx.nn as nn

    if targets == "all-linear":
        return None
    linears = [name for name, m in model.layers[0].named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    keys = [name for name in linears if name.split(".")[-1] in targets]
    missing = [t for t in targets if not any(k.split(".")[-1] == t for k in keys)]
    if missing:
        raise UsageError(f"peft.target_modules: {missing} match no Linear of a block; there are "
                         f"{sorted({n.split('.')[-1] for n in linears})} (or use all-linear)")
    return keys


def optimizer_steps(cfg: SFTRunConfig, n_train: int) -> int:
    """Optimizer steps (krllm's unit); mlx-lm counts micro-batch iterations, grad_accum per step."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    per_epoch = n_train // cfg.train.batch_size  # mlx-lm drops the last partial batch
    return max(1, math.ceil(cfg.train.epochs * per_epoch / cfg.train.grad_accum))


def schedule(cfg: SFTRunConfig, steps: int):
    """train.lr / schedule / warmup over `steps` optimizer steps as an mlx.optimizers schedule (warmup:
    linear from 0, then cosine or linear to 0, as transformers' schedules)."""
    import mlx.optimizers as optim

    t = cfg.train
    if t.schedule == "constant":
        return t.lr
    warm = min(int(t.warmup * steps) if t.warmup < 1 else int(t.warmup), steps - 1)
    rest = max(steps - warm, 1)
    main = {"cosine": lambda: optim.cosine_decay(t.lr, rest, 0.0),
            "linear": lambda: optim.linear_schedule(t.lr, 0.0, rest),
            "constant_with_warmup": lambda: optim.linear_schedule(t.lr, t.lr, 1)}[t.schedule]()
    if warm == 0:
        return main
    return optim.join_schedules([optim.linear_schedule(0.0, t.lr, warm), main], [warm])


def optimizer(cfg: SFTRunConfig, lr):
    """mlx.optimizers.<mlx.optimizer>, clipping the gradient norm to train.max_grad_norm first."""
    import mlx.optimizers as optim

    classes = {"adamw": optim.AdamW, "adam": optim.Adam, "sgd": optim.SGD, "adafactor": optim.Adafactor,
               "muon": optim.Muon}
    base = classes[cfg.mlx.optimizer]
    kwargs = {}
    if cfg.mlx.optimizer in ("adam", "adamw"):
        kwargs["bias_correction"] = cfg.mlx.bias_correction
    if cfg.mlx.optimizer == "adamw":
        kwargs["weight_decay"] = cfg.train.weight_decay
    max_norm = cfg.train.max_grad_norm

    class Clipped(base):
        def update(self, model, gradients):
            if max_norm > 0:
                gradients, _ = optim.clip_grad_norm(gradients, max_norm)
            return super().update(model, gradients)

    return Clipped(learning_rate=lr, **kwargs)


# ---------------------------------------------------------------- data

class Rows:
    """Tokenized rows (krllm.train.sft_data) as mlx-lm's trainer indexes a dataset."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def make_batches(pad_id: int, seed: int):
    """An `iterate_batches` for mlx-lm's trainer: length-sorted batches in random order (mlx-lm's scheme),
    yielding (ids (B, L), learn mask (B, L)) where the mask is our labels != -100."""
    import mlx.core as mx

    def iterate_batches(dataset, batch_size, max_seq_length, loop=False, **_):
        order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
        if len(dataset) < batch_size:
            raise KrllmError(f"{len(dataset)} examples but train.batch_size={batch_size}: lower the batch size")
        batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        rng = np.random.default_rng(seed)
        while True:
            for b in rng.permutation(len(batches)):
                rows = [dataset[j] for j in batches[b]]
                longest = max(len(r["input_ids"]) for r in rows)
                width = min(1 + PAD_TO * ((longest + PAD_TO - 1) // PAD_TO), max_seq_length)
                ids = np.full((len(rows), width), pad_id, np.int32)
                learn = np.zeros((len(rows), width), np.float32)
                for k, r in enumerate(rows):
                    n = min(len(r["input_ids"]), width)
                    ids[k, :n] = r["input_ids"][:n]
                    learn[k, :n] = [lab != -100 for lab in r["labels"][:n]]
                yield mx.array(ids), mx.array(learn)
            if not loop:
                break

    return iterate_batches


def masked_loss(model, ids, learn):
    """Mean next-token cross-entropy over the learned tokens -> (loss, token count), as mlx-lm's loss returns."""
    import mlx.core as mx
    import mlx.nn as nn

    logits = model(ids[:, :-1])
    mask = learn[:, 1:]
    ce = nn.losses.cross_entropy(logits, ids[:, 1:]) * mask
    ntoks = mask.sum()
    return ce.astype(mx.float32).sum() / mx.maximum(ntoks, 1), ntoks


# ---------------------------------------------------------------- logging

def make_callback(logger, report: dict, grad_accum: int = 1, step0: int = 0):
    """mlx-lm reports -> the guide's log lines (mlx-lm's iteration numbers), metrics.jsonl / TensorBoard (at
    optimizer steps = iterations / grad_accum, as the PyTorch path, after `step0` steps of a resumed run), and
    `report` (for summary.json)."""
    from mlx_lm.tuner.callbacks import TrainingCallback

    class KrllmMlxCallback(TrainingCallback):
        def on_train_loss_report(self, info: dict):
            it = info["iteration"]
            print(f"Iter {it}: Train loss {info['train_loss']:.3f}, Learning Rate {info['learning_rate']:.3e}, "
                  f"It/sec {info['iterations_per_second']:.3f}, Tokens/sec {info['tokens_per_second']:.3f}, "
                  f"Trained Tokens {info['trained_tokens']}, Peak mem {info['peak_memory']:.3f} GB", flush=True)
            report.update(train_loss=info["train_loss"], steps=it // grad_accum, trained_tokens=info["trained_tokens"],
                          peak_mem_gb=info["peak_memory"])
            report.setdefault("tok_per_s", []).append(info["tokens_per_second"])
            if logger is not None:
                logger.log(step0 + it // grad_accum, "train", loss=info["train_loss"], lr=info["learning_rate"],
                           tok_per_s=info["tokens_per_second"], it_per_s=info["iterations_per_second"],
                           peak_mem_gb=info["peak_memory"])

        def on_val_loss_report(self, info: dict):
            it = info["iteration"]  # mlx-lm validates before iteration it+1, i.e. after `it` iterations
            print(f"Iter {it + 1}: Val loss {info['val_loss']:.3f}, Val took {info['val_time']:.3f}s", flush=True)
            report.setdefault("val", []).append((it, info["val_loss"]))
            if logger is not None:
                logger.log(step0 + it // grad_accum, "eval", loss=info["val_loss"])

    return KrllmMlxCallback()


# ---------------------------------------------------------------- the stage

def _set_device(device: str) -> str:
    import mlx.core as mx

    if device == "cpu":
        mx.set_default_device(mx.cpu)
    elif device in ("gpu", "mps"):
        mx.set_default_device(mx.gpu)
    return mx.default_device().type.name  # "cpu" | "gpu"


def _load_mlx_model(base_dir: Path):
    """The base in mlx-lm, with the RoPE keys mlx-lm reads (krllm.model.mlx.mlx_rope_keys)."""
    import json

    from mlx_lm.utils import load_model

    from krllm.model.mlx import mlx_rope_keys

    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    try:
        model, _ = load_model(base_dir, model_config=mlx_rope_keys(config))
    except (ValueError, FileNotFoundError) as e:
        raise KrllmError(f"{base_dir}: mlx-lm cannot load this model ({e})") from None
    return model


def _apply_method(cfg: SFTRunConfig, model) -> dict:
    """Freeze, then LoRA/DoRA layers or unfrozen blocks -> the adapter_config.json mlx-lm will load."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    p = cfg.peft
    n_blocks = len(model.layers)
    if p.num_layers is not None and p.num_layers > n_blocks:
        raise UsageError(f"peft.num_layers={p.num_layers} but the model has {n_blocks} layers")
    num_layers = p.num_layers if p.num_layers is not None else -1
    model.freeze()
    params = None
    if p.method == "full":
        for block in model.layers[-max(num_layers, 0):]:
            block.unfreeze()
    else:
        params = {"rank": p.r, "scale": p.alpha / p.r, "dropout": p.dropout}
        keys = lora_keys(model, p.target_modules)
        if keys is not None:
            params["keys"] = keys
        linear_to_lora_layers(model, num_layers, params, use_dora=p.method == "dora")
    return {"model": None, "fine_tune_type": p.method, "num_layers": num_layers, "lora_parameters": params}


def _resume_file(cfg: SFTRunConfig, run_dir: Path, resume: bool) -> Path | None:
    if cfg.mlx.resume_adapter_file:
        f = Path(cfg.mlx.resume_adapter_file)
        if not f.is_file():
            raise UsageError(f"mlx.resume_adapter_file: {f} does not exist")
        return f
    if resume:
        f = run_dir / ADAPTER_MLX / "adapters.safetensors"
        if not f.is_file():
            raise KrllmError(f"--resume: {f} not found (nothing to continue from)")
        return f
    return None


def _steps_done(run_dir: Path) -> int:
    """Optimizer steps an earlier run in `run_dir` logged (mlx-lm resumes weights only: its counts restart)."""
    from krllm.tracking import read_metrics

    path = run_dir / "metrics.jsonl"
    return max((int(r["step"]) for r in read_metrics(path)), default=0) if path.exists() else 0


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """A fresh run must not mix into an old one (mlx-lm keeps no checkpoints/: its adapters mark a run)."""
    from krllm.train.hf.outputs import clear_previous_run

    if resume or not ((run_dir / "metrics.jsonl").exists() or (run_dir / ADAPTER_MLX).exists()):
        return
    clear_previous_run(run_dir, overwrite, extra_dirs=(ADAPTER_MLX,))


def run_sft_mlx(cfg: SFTRunConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train with mlx-lm; write adapter_mlx/, adapter/ (PEFT) + merged/ (or hf/), samples, summary."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.trainer import TrainingArgs, evaluate, train

    from krllm.config import write_resolved
    from krllm.runs import write_json
    from krllm.tracking import MetricsLogger
    from krllm.train.hf import outputs as O
    from krllm.train.hf import samples as S
    from krllm.train.hf.model import base_model_path, load_tokenizer
    from krllm.train.sft_data import split_and_tokenize

    t_start = time.time()
    check_supported(cfg)
    device = _set_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.base_model, cfg.data.chat_template)
    train_records, eval_records, train_rows, eval_rows, stats = split_and_tokenize(cfg, tokenizer)
    if len(train_rows) < cfg.train.batch_size:
        raise UsageError(f"{len(train_rows)} training examples but train.batch_size={cfg.train.batch_size}")
    base_dir = Path(base_model_path(cfg.base_model))
    if not base_dir.is_dir():
        raise UsageError(f"base_model {cfg.base_model}: the mlx backend needs a local model directory")
    model = _load_mlx_model(base_dir)
    mx.random.seed(cfg.train.seed)
    adapter_cfg = _apply_method(cfg, model)
    adapter_cfg["model"] = str(base_dir.resolve())

    run_dir = Path(cfg.runs_dir) / cfg.name
    _check_run_dir(run_dir, resume, overwrite)
    resume_file = _resume_file(cfg, run_dir, resume)
    if resume_file is not None:
        model.load_weights(str(resume_file), strict=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, run_dir / "config.yaml")
    O.write_run_lineage(cfg, run_dir, resume_file)
    adapter_dir = run_dir / ADAPTER_MLX
    adapter_dir.mkdir(exist_ok=True)
    write_json(adapter_dir / "adapter_config.json", adapter_cfg)  # a valid mlx-lm adapter from the first save

    if len(eval_rows) < cfg.train.batch_size and eval_rows:
        print(f"note: {len(eval_rows)} validation examples < train.batch_size={cfg.train.batch_size}: mlx-lm "
              "validates whole batches, so validation is off (raise data.eval_fraction)")
        eval_rows = []
    steps = optimizer_steps(cfg, len(train_rows))
    ga = cfg.train.grad_accum
    iters = steps * ga
    n_train = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    n_all = sum(v.size for _, v in tree_flatten(model.parameters()))
    dtype = str(next(v for _, v in tree_flatten(model.parameters())).dtype).removeprefix("mlx.core.")
    print(f"sft {cfg.name}: {cfg.peft.method} on {cfg.base_model} | backend mlx ({device}) | weights {dtype} | "
          f"{stats.examples} train examples, {stats.tokens:,} tokens ({stats.target_tokens:,} learned), "
          f"{len(eval_rows)} eval examples | {steps} steps ({iters} iters)")
    print(f"trainable parameters: {n_train:,} of {n_all:,} ({100 * n_train / n_all:.3f}%)")

    sample_src = [r for r in (eval_records or train_records) if S.prompt_of(r)][: cfg.samples.n]
    prompts = [S.prompt_of(r) for r in sample_src]
    before = _answers(base_dir, tokenizer, prompts, cfg.samples.max_new_tokens)

    args = TrainingArgs(batch_size=cfg.train.batch_size, iters=iters, val_batches=cfg.mlx.val_batches,
                        steps_per_report=cfg.train.logging_steps * ga, steps_per_eval=cfg.train.eval_steps * ga,
                        steps_per_save=cfg.train.save_steps * ga, max_seq_length=cfg.data.max_length,
                        adapter_file=str(adapter_dir / "adapters.safetensors"),
                        grad_checkpoint=cfg.train.gradient_checkpointing,
                        grad_accumulation_steps=cfg.train.grad_accum)
    report: dict = {}
    step0 = _steps_done(run_dir) if resume else 0  # metrics of a resumed run continue the step axis
    logger = MetricsLogger(run_dir, tensorboard=cfg.tracking.tensorboard, wandb_project=cfg.tracking.wandb_project,
                           run_name=cfg.name)
    mx.reset_peak_memory()
    t_train = time.time()
    try:
        train(model=model, optimizer=optimizer(cfg, schedule(cfg, steps)), train_dataset=Rows(train_rows),
              val_dataset=Rows(eval_rows) if eval_rows else None, args=args, loss=masked_loss,
              iterate_batches=make_batches(tokenizer.pad_token_id, cfg.train.seed),
              training_callback=make_callback(logger, report, ga, step0))
        train_s = time.time() - t_train
        if eval_rows:  # mlx-lm's last validation runs before the last iteration: validate the final weights
            val_loss = evaluate(model=model, dataset=Rows(eval_rows), batch_size=cfg.train.batch_size,
                                num_batches=cfg.mlx.val_batches, max_seq_length=cfg.data.max_length,
                                loss=masked_loss, iterate_batches=make_batches(tokenizer.pad_token_id, cfg.train.seed))
            print(f"Iter {iters}: Val loss {val_loss:.3f} (final weights)", flush=True)
            report.setdefault("val", []).append((iters, val_loss))
            logger.log(step0 + steps, "eval", loss=val_loss)
    finally:
        logger.close()
    _check_finite(adapter_dir / "adapters.safetensors")

    outputs = _write_outputs(cfg, run_dir, adapter_dir, tokenizer, base_dir)
    after = _answers(Path(outputs.get("merged") or outputs.get("hf") or outputs["adapter"]), tokenizer, prompts,
                     cfg.samples.max_new_tokens)
    if prompts:
        refs = [r["messages"][len(q)]["content"] for r, q in zip(sample_src, prompts)]
        S.write_samples(run_dir, prompts, before, after, refs)
    val = report.get("val", [])
    summary = {
        "method": cfg.peft.method, "backend": "mlx", "batching": "length_grouped", "device": f"mlx-{device}",
        "dtype": dtype, "processes": 1, "steps": report.get("steps", steps), "max_steps": steps,
        "stopped_early": False, "best_checkpoint": None, "train_loss": report.get("train_loss"),
        "eval_loss": val[-1][1] if val else None, "eval_loss_before": val[0][1] if val and val[0][0] == 0 else None,
        "trainable_params": int(n_train), "total_params": int(n_all), "data": stats.as_dict(),
        "eval_examples": len(eval_rows), "train_runtime_s": round(train_s, 2),
        "tokens_per_s": float(np.mean(report["tok_per_s"])) if report.get("tok_per_s") else None,
        "peak_mem_gb": report.get("peak_mem_gb"), "wall_s": round(time.time() - t_start, 1),
        "samples_stopped_before": [b["stopped"] for b in before], "samples_stopped_after": [a["stopped"] for a in after],
        "outputs": outputs,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def _check_finite(weights: Path) -> None:
    from safetensors.numpy import load_file

    bad = [k for k, v in load_file(str(weights)).items() if not np.isfinite(v.astype(np.float32)).all()]
    if bad:
        raise KrllmError(f"{weights}: training diverged (NaN/inf in {bad[:3]}); lower train.lr or raise "
                         "train.warmup, then --overwrite")


def _write_outputs(cfg: SFTRunConfig, run_dir: Path, adapter_dir: Path, tokenizer, base_dir: Path) -> dict[str, str]:
    """adapter/ (PEFT, converted exactly) + merged/, or hf/ for full: the layout every other stage reads."""
    from krllm.model.mlx import peft_view, write_adapter_dir

    tokenizer.save_pretrained(str(adapter_dir))  # the chat template trained with travels with the adapter
    if cfg.peft.method == "full":
        _save_merged(cfg, base_dir, adapter_dir, tokenizer, run_dir / "hf")
        return {ADAPTER_MLX: str(adapter_dir), "hf": str(run_dir / "hf")}
    peft_cfg, tensors = peft_view(adapter_dir)
    write_adapter_dir(run_dir / "adapter", peft_cfg, tensors, "peft", copy_from=adapter_dir)
    outputs = {ADAPTER_MLX: str(adapter_dir), "adapter": str(run_dir / "adapter")}
    if cfg.merge:
        _save_merged(cfg, base_dir, run_dir / "adapter", tokenizer, run_dir / "merged")
        outputs["merged"] = str(run_dir / "merged")
    return outputs


def _save_merged(cfg: SFTRunConfig, base_dir: Path, adapter: Path, tokenizer, out: Path) -> None:
    """Base (transformers, fp32, generation stop ids from the tokenizer) + adapter folded in by krllm's one
    merge, saved as the PyTorch path saves merged/."""
    import torch

    from krllm.model.adapters import merge_adapter
    from krllm.train.hf.model import load_causal_lm
    from krllm.train.hf.outputs import save_merged

    model = load_causal_lm(str(base_dir), tokenizer, cfg.peft, torch.float32)
    merge_adapter(model, adapter)
    save_merged(model.eval(), tokenizer, out)


def _answers(model_dir: Path, tokenizer, prompts, max_new_tokens: int) -> list[dict]:
    """Greedy sample answers with krllm's engine (PyTorch, CPU): the same code the PyTorch path uses."""
    if not prompts:
        return []
    from krllm.model.load import load
    from krllm.train.hf import samples as S

    return S.generate_answers(load(model_dir, device="cpu").model, tokenizer, prompts, max_new_tokens)
