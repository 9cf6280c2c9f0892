"""The pretraining loop: from token shards to a checkpointed model and an HF directory.

    krllm pretrain -c configs/pretrain/tiny_ko.yaml            # fresh run into runs/<name>/
    krllm pretrain -c configs/pretrain/tiny_ko.yaml --resume   # continue from the latest checkpoint
    torchrun --nproc_per_node 2 -m krllm pretrain -c ...       # DDP (or FSDP2: run.distributed=fsdp)

One optimizer step = `grad_accum` micro-batches of `batch_size` windows on each of `world` ranks.
AdamW with decay on matrices only, warmup + cosine/linear decay, global-norm clipping, autocast in
the dtype from `krllm.device.pick_dtype`, optional activation checkpointing and torch.compile.
Device syncs (`.item()`) happen only at log / eval / save steps. Interrupting (Ctrl-C, SIGTERM)
saves a checkpoint first; a non-finite loss stops the run without saving over the last good one.
Resuming restores weights, optimizer, step, data position and RNG, so on CPU in fp32 the losses
equal those of an uninterrupted run exactly.

Test hooks (environment, used by tests/test_pretrain_*.py): KRLLM_FAULT_NAN_AT_STEP=N makes the
loss of step N NaN; KRLLM_FAULT_STEP_SLEEP=S sleeps S seconds after every step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import yaml

from krllm.config import to_plain, write_resolved
from krllm.device import cpu_supports_bf16, pick_device, pick_dtype
from krllm.errors import KrllmError
from krllm.runs import write_lineage
from krllm.train import checkpoint as ckpt
from krllm.train import distributed as D
from krllm.train.batches import PackedWindows, fixed_windows, load_windows
from krllm.train.cpu_kernels import keep_freed_memory, onednn_available, use_onednn_attention, use_onednn_linears
from krllm.train.flops import flops_per_token, measure_matmul_peak
from krllm.train.pretrain_config import PretrainConfig
from krllm.train.schedule import lr_at


def tokenizer_dir_of(manifest: dict, shards_dir: Path) -> Path | None:
    """The tokenizer directory a shards manifest names (relative paths: to the shards dir, then cwd)."""
    tok = manifest.get("tokenizer")
    path = tok.get("path") if isinstance(tok, dict) else tok
    if not path:
        return None
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_absolute() and not path.exists() and (shards_dir / path).exists():
        path = shards_dir / path
    return path


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (embeddings, projections); never norms or biases (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def enable_grad_checkpointing(model) -> None:
    """Recompute each block's activations in backward instead of storing them."""
    from torch.utils.checkpoint import checkpoint

    blocks = D.blocks_of(model)
    if blocks is None:
        raise KrllmError(f"train.grad_checkpointing: {type(model).__name__} has no `model.layers` blocks to "
                         "checkpoint; set it to false for this model.type")
    for block in blocks:
        inner = block.forward
        block.forward = lambda *a, _f=inner, **k: checkpoint(_f, *a, use_reentrant=False, **k)


def _num_parameters(model, exclude_embeddings: bool = False) -> int:
    """The model's own count where it has one (Llama: a tied head counts once), else unique parameters."""
    if hasattr(model, "num_parameters"):
        return model.num_parameters(exclude_embeddings)
    params = {id(p): p for name, p in model.named_parameters()
              if not (exclude_embeddings and "embed" in name)}
    return sum(p.numel() for p in params.values())


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Pretrainer:
    """Holds the state of one run; `fit()` trains to the end (or to an interrupt) and returns a summary."""

    def __init__(self, cfg: PretrainConfig, resume: bool = False, console=None):
        from rich.console import Console

        from krllm.data.tokens.shards import TokenShards
        from krllm.model.registry import pretrainable_family

        self.cfg, tc = cfg, cfg.train
        self._threads_before = torch.get_num_threads()
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.console = console or Console(highlight=False, soft_wrap=True)
        device = pick_device(cfg.run.device)
        self.dist = D.init_distributed(device)
        self.device = D.rank_device(device, self.dist)
        self.dtype = pick_dtype(tc.dtype, self.device)
        self.main = self.dist.is_main
        self.run_dir = cfg.run.dir
        self.ckpt_root = self.run_dir / "checkpoints"

        # ---- data
        shards_dir = Path(cfg.data.shards)
        self.train_tokens = TokenShards(shards_dir, cfg.data.train_split)
        self.manifest = self.train_tokens.manifest
        self.tokenizer_dir = tokenizer_dir_of(self.manifest, shards_dir)
        if self.tokenizer_dir is not None and not (self.tokenizer_dir / "tokenizer.json").is_file():
            self._note(f"the shards' tokenizer {self.tokenizer_dir} is gone: no samples, and hf/ gets no tokenizer")
            self.tokenizer_dir = None
        self.train_data = PackedWindows(self.train_tokens, cfg.data.seq_len, tc.seed, cfg.data.train_split)
        self.val_starts, self.val_tokens = self._val_subset(TokenShards, shards_dir)

        # ---- model (the registry family `model.type` names), built identically on every rank from the seed
        self.family = pretrainable_family(cfg.model.type)
        ov = [f"{k}={json.dumps(v)}" for k, v in cfg.model.overrides.items()]
        self.model_cfg = self.family.make_config(cfg.model.preset, ov, vocab_size=self.train_tokens.vocab_size)
        if cfg.data.seq_len > self.model_cfg.max_position_embeddings:
            raise KrllmError(f"data.seq_len={cfg.data.seq_len} exceeds the model's max_position_embeddings="
                             f"{self.model_cfg.max_position_embeddings}")
        torch.manual_seed(tc.seed)
        self.raw = self.family.build_model(self.model_cfg, device=self.device)

        # ---- resume point (weights load before wrapping; optimizer state after)
        self.step, self.tokens_seen = 0, 0
        state = self._find_resume(resume)
        if state is not None:
            self._check_model_config(state)
            self.raw.load_state_dict(state["model"], strict=True)
        self.onednn = 0
        if self.device.type == "cpu" and onednn_available():
            self.onednn = use_onednn_linears(self.raw)  # fp32 GEMMs ~2x faster than MKL's on AMD
            use_onednn_attention(self.raw)  # fp32 causal attention on the same GEMMs
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults on re-allocated activations every step
        if tc.grad_checkpointing:
            enable_grad_checkpointing(self.raw)
        self.model = D.wrap(self.raw, cfg.run.distributed, self.dist, self.device)
        fsdp = self.dist.enabled and cfg.run.distributed == "fsdp"
        fused = self.device.type in ("cuda", "cpu") and not fsdp
        self.opt = torch.optim.AdamW(param_groups(self.model, tc.weight_decay), lr=tc.lr, betas=tc.betas,
                                     eps=tc.eps, fused=fused or None, foreach=None if fused else True)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        if state is not None:
            D.load_full_optim_state(self.model, self.opt, state["optim"])
            self._restore_progress(state)
        self.fwd = torch.compile(self.model) if tc.compile else self.model
        self.autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32
                         else contextlib.nullcontext())

        # ---- geometry and accounting
        self.micro_global = tc.batch_size * self.dist.world  # windows per micro-step, all ranks
        self.tokens_per_step = self.micro_global * tc.grad_accum * cfg.data.seq_len
        self.total = tc.max_steps or math.ceil(tc.max_tokens / self.tokens_per_step)
        self.flops_tok = flops_per_token(self.model_cfg, cfg.data.seq_len)
        self.peak = self._peak_flops()
        self.resumed_from = state["path"] if state is not None else None
        del state

    # ------------------------------------------------------------------ set-up helpers

    def _val_subset(self, TokenShards, shards_dir):
        """Fixed validation windows (the same every eval), split evenly across ranks."""
        cfg = self.cfg
        try:
            val = TokenShards(shards_dir, cfg.data.val_split)
        except (FileNotFoundError, KrllmError) as e:
            self._note(f"no validation split {cfg.data.val_split!r} ({e}); evaluation is off")
            return None, None
        n = cfg.eval.eval_batches * cfg.train.batch_size * self.dist.world
        starts = fixed_windows(val, cfg.data.seq_len, n) if len(val) > cfg.data.seq_len else []
        usable = len(starts) // self.dist.world * self.dist.world
        if usable == 0:
            self._note(f"validation split has {len(val)} tokens, fewer than {self.dist.world} window(s) of "
                       f"{cfg.data.seq_len + 1}: evaluation is off (lower data.seq_len or add data)")
            return None, None
        per = usable // self.dist.world
        return starts[self.dist.rank * per:(self.dist.rank + 1) * per], val

    def _find_resume(self, resume: bool) -> dict | None:
        have = ckpt.list_step_dirs(self.ckpt_root)
        if not resume:
            if have:
                raise KrllmError(f"{self.run_dir} already has checkpoints ({', '.join(sorted(p.name for p in have))}): "
                                 "pass --resume to continue it, or set run.name to start a new run")
            return None
        if self.main:
            for p in ckpt.remove_partial(self.ckpt_root):
                self._note(f"removed unfinished checkpoint {p.name} (the run was killed while saving)")
        latest = ckpt.find_latest(self.ckpt_root, report=self._note)
        if latest is None:
            self._note(f"--resume: no complete checkpoint in {self.ckpt_root}; starting from step 0")
            return None
        return ckpt.load_checkpoint(latest)

    def _model_config_record(self) -> dict:
        """What checkpoints store about the model: its config, plus `type` for families other than llama."""
        record = self.model_cfg.model_dump(mode="json")
        return record if self.family.model_type == "llama" else {**record, "type": self.family.model_type}

    def _check_model_config(self, state: dict) -> None:
        now, then = self._model_config_record(), state["model_config"]
        diff = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
        if diff:
            raise KrllmError(f"{state['path']}: the checkpoint's model differs from this config in "
                             + ", ".join(f"{k} ({then.get(k)!r} -> {now.get(k)!r})" for k in diff))

    def _restore_progress(self, state: dict) -> None:
        s = state["state"]
        self.step, self.tokens_seen = int(s["step"]), int(s["tokens_seen"])
        self.train_data.load_state(s["data"])
        if s.get("scaler") and self.scaler is not None:
            self.scaler.load_state_dict(s["scaler"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world else rngs[0])
        then = int(s.get("world", 1)) * int(s.get("batch_size", 0)) * int(s.get("grad_accum", 1))
        now = self.dist.world * self.cfg.train.batch_size * self.cfg.train.grad_accum
        if then != now:
            self._note(f"the global batch changed from {then} to {now} sequences per step (world x batch_size x "
                       "grad_accum): training continues on the same data stream, but not as the original run would")

    def _peak_flops(self) -> float:
        """Sum of every rank's matmul peak (FLOP/s) in the compute dtype; 0 = MFU off."""
        if self.cfg.log.peak_tflops is not None:
            return self.cfg.log.peak_tflops * 1e12 * self.dist.world
        peak = torch.tensor([measure_matmul_peak(self.dtype, self.device, seconds=0.4)], dtype=torch.float64)
        return float(D.all_reduce(peak, self.dist)[0])

    def _note(self, msg: str) -> None:
        if self.dist.is_main:
            self.console.print(f"[yellow]note:[/] {msg}", markup=True, highlight=False)

    # ------------------------------------------------------------------ the loop

    def banner(self) -> None:
        if not self.main:
            return
        c, tc, m = self.cfg, self.cfg.train, self.model_cfg
        how = "resumed from " + self.resumed_from.name if self.resumed_from else "fresh run"
        dname = {torch.float32: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + grad scaler"}
        why = ""
        if tc.dtype == "auto" and self.dtype == torch.bfloat16 and self.device.type == "cpu" and cpu_supports_bf16():
            why = " (auto: this CPU has native bf16 matmuls, AVX-512 BF16/AMX; train.dtype=fp32 for full fp32)"
        world = (f"{self.dist.world} processes, {c.run.distributed.upper()} over {self.dist.backend}"
                 if self.dist.enabled else "1 process")
        n, n_body = _num_parameters(self.raw), _num_parameters(self.raw, exclude_embeddings=True)
        p = self.console.print
        p(f"[bold]krllm pretrain[/] {self.run_dir} — {how}")
        kern = " · fp32 matmuls on oneDNN" if self.onednn and self.dtype == torch.float32 else ""
        p(f"device {self.device} · dtype {dname[self.dtype]}{why} · {world} · {torch.get_num_threads()} threads{kern}")
        kind = "" if c.model.type == "llama" else f"{c.model.type} "
        p(f"model {kind}{c.model.preset}: {n:,} parameters ({n_body:,} without embeddings) · "
          f"L{m.num_hidden_layers} C{m.hidden_size} H{m.num_attention_heads}/{m.kv_heads} V{m.vocab_size} · "
          f"{self.flops_tok / 1e6:.1f} MFLOP/token")
        val = f"{len(self.val_tokens):,} val tokens ({len(self.val_starts) * self.dist.world} windows)" \
            if self.val_tokens is not None else "no validation"
        p(f"data {c.data.shards}: {len(self.train_tokens):,} train tokens · {val} · "
          f"{self.tokens_per_step:,} tokens/step ({tc.batch_size} × {c.data.seq_len} × accum {tc.grad_accum}"
          f" × {self.dist.world} rank)")
        p(f"schedule {self.total:,} steps ({self.total * self.tokens_per_step / 1e6:.2f}M tokens) · warmup "
          f"{tc.warmup_steps} · {tc.schedule} {tc.lr:g} → {tc.min_lr:g} · peak "
          + (f"{self.peak / 1e12:.2f} TFLOP/s (measured matmul)" if self.peak else "n/a (MFU off)"))
        if tc.compile:
            p("torch.compile is on: the first step compiles (tens of seconds)")

    def fit(self) -> dict:
        """Train to `total` steps; returns {"status": done|interrupted, "step", "val_loss", ...}."""
        cfg = self.cfg
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_resolved(cfg, self.run_dir / "config.yaml")
            write_lineage(self.run_dir, {"data": Path(cfg.data.shards) / "manifest.json",
                                         "tokenizer": self.tokenizer_dir},
                          extra={"stage": "pretrain", "resumed_from": str(self.resumed_from or "") or None})
        self.logger = None
        if self.main:
            from krllm.tracking import MetricsLogger

            self.logger = MetricsLogger(self.run_dir, tensorboard=cfg.log.tensorboard,
                                        wandb_project=cfg.log.wandb_project, run_name=cfg.run.name,
                                        config=to_plain(cfg), purge_step=self.step + 1 if self.step else 0)
        self.banner()
        self._stop = False
        old = self._install_signals()
        try:
            return self._loop()
        finally:
            self._restore_signals(old)
            if self.logger is not None:
                self.logger.close()

    def _loop(self) -> dict:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        cfg = self.cfg
        self.model.train()
        val_loss = None
        if self.step == 0 and self.val_starts is not None and cfg.eval.eval_interval:
            val_loss = self._evaluate()
        nan_at = int(os.environ.get("KRLLM_FAULT_NAN_AT_STEP", "0"))
        sleep = float(os.environ.get("KRLLM_FAULT_STEP_SLEEP", "0"))
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, grad norm) since last log
        last_saved = self.step
        t_log, paused, steps_in_window = time.perf_counter(), 0.0, 0
        step_time = float("nan")
        progress = Progress(TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=self.console, disable=not self.main, transient=False)
        with progress:
            task = progress.add_task("steps", total=self.total, completed=self.step)
            while self.step < self.total:
                loss, gnorm = self._train_step(nan_fault=self.step + 1 == nan_at)
                self.step += 1
                self.tokens_seen += self.tokens_per_step
                steps_in_window += 1
                pending.append((self.step, loss, gnorm))
                progress.update(task, completed=self.step)
                if sleep:
                    time.sleep(sleep)
                stop = self._stop_requested()
                last = self.step == self.total
                do_eval = self.val_starts is not None and (
                    (cfg.eval.eval_interval and self.step % cfg.eval.eval_interval == 0) or last)
                do_sample = (cfg.sample.sample_interval and self.step % cfg.sample.sample_interval == 0) or last
                every_save = cfg.checkpoint.save_interval and self.step % cfg.checkpoint.save_interval == 0
                do_save = every_save or last or stop
                # metrics are complete up to every checkpoint, so a resumed run's metrics.jsonl has every step
                do_log = self.step % cfg.log.log_interval == 0 or do_save
                if do_log or do_eval or do_save or do_sample:
                    self._check_finite(pending, last_saved)
                elif self.device.type != "cuda":  # no GPU queue to stall: check every step, not at log steps
                    self._check_finite(pending[-1:], last_saved)
                if do_log:
                    now = time.perf_counter()
                    step_time = (now - t_log - paused) / max(1, steps_in_window)
                    self._log_train(pending, step_time, progress)
                    pending, t_log, paused, steps_in_window = [], now, 0.0, 0
                t0 = time.perf_counter()
                if do_eval:
                    val_loss = self._evaluate()
                if do_save:
                    self._save()
                    last_saved = self.step
                if do_sample and self.tokenizer_dir is not None:
                    self._sample()
                paused += time.perf_counter() - t0
                if stop and not last:
                    if self.main:
                        self.console.print(f"[bold yellow]interrupted[/] at step {self.step}/{self.total}: "
                                           f"checkpoint saved to {self.ckpt_root / f'step_{self.step}'}; "
                                           "continue with --resume")
                    return {"status": "interrupted", "step": self.step, "val_loss": val_loss}
        self._export_hf()
        if self.main:
            self.console.print(f"[bold green]done[/] {self.step} steps, {self.tokens_seen:,} tokens"
                               + (f", val loss {val_loss:.4f}" if val_loss is not None else "")
                               + f" → {self.run_dir / 'hf'}")
        return {"status": "done", "step": self.step, "val_loss": val_loss, "run_dir": str(self.run_dir)}

    def _train_step(self, nan_fault: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm) as tensors."""
        tc = self.cfg.train
        lr = lr_at(self.step, lr=tc.lr, min_lr=tc.min_lr, warmup=tc.warmup_steps, total=self.total, kind=tc.schedule)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self._lr = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(tc.grad_accum):
            x, y = self.train_data.next_batch(self.micro_global, self.dist.rank, self.dist.world)  # (B, T) each
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with D.grad_sync(self.model, micro == tc.grad_accum - 1), self.autocast:
                _, loss = self.fwd(x, targets=y, return_logits=False)
            loss = loss / tc.grad_accum
            if nan_fault:
                loss = loss * float("nan")
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        gnorm = D.total_norm_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss_sum, gnorm.detach()

    def _check_finite(self, pending, last_saved: int) -> None:
        """Stop cleanly (no checkpoint written) at the first non-finite loss since the last check."""
        if not pending:
            return
        losses = torch.stack([p[1].float() for p in pending])
        bad = (~torch.isfinite(losses)).to(torch.float32)
        if self.scaler is None:  # fp16 + scaler skips inf-gradient steps by design
            bad = torch.maximum(bad, (~torch.isfinite(torch.stack([p[2].float() for p in pending]))).float())
        bad = D.all_reduce(bad.cpu(), self.dist, "max")
        if bad.any():
            i = int(bad.nonzero()[0])
            step, value, gnorm = pending[i][0], float(losses[i]), float(pending[i][2])
            good = ckpt.find_latest(self.ckpt_root, report=lambda m: None) if last_saved else None
            what = (f"loss became {value}" if not math.isfinite(value)
                    else f"the gradient norm became {gnorm} (loss {value:.4g})")
            msg = (f"{what} at step {step}: stopping without saving. "
                   + (f"The last good checkpoint is {good}; " if good else "No checkpoint was saved yet; ")
                   + self._divergence_advice() + ", then "
                   + ("continue with --resume." if good else "start again."))
            if self.logger is not None:
                self.logger.log(step, "train", event="nonfinite", loss=value, grad_norm=gnorm)
            raise KrllmError(msg)

    def _divergence_advice(self) -> str:
        """What to change, for this run: the learning rate and warm-up it has, clipping if off, fp32 if not fp32."""
        tc = self.cfg.train
        advice = [f"lower train.lr (now {tc.lr:g})", f"raise train.warmup_steps (now {tc.warmup_steps})"]
        if tc.grad_clip <= 0:
            advice.append("set train.grad_clip=1.0 (now off)")
        if self.dtype != torch.float32:
            advice.append(f"use train.dtype=fp32 (now {str(self.dtype).removeprefix('torch.')})")
        return ", ".join(advice[:-1]) + " or " + advice[-1]

    def _log_train(self, pending, step_time: float, progress) -> None:
        losses = torch.stack([p[1].float() for p in pending]).cpu()
        losses = D.all_reduce(losses, self.dist, "avg")  # global mean over ranks, per step
        loss = float(losses.mean())
        gnorm = float(pending[-1][2])
        tok_s = self.tokens_per_step / step_time if step_time > 0 else float("nan")
        mfu = self.flops_tok * tok_s / self.peak if self.peak else float("nan")
        eta = step_time * (self.total - self.step)
        if not self.main:
            return
        for (step, _, _), step_loss in zip(pending[:-1], losses[:-1].tolist()):
            self.logger.log(step, "train", loss=step_loss)  # every step's loss is kept (intervals > 1)
        self.logger.log(self.step, "train", loss=float(losses[-1]), loss_avg=loss, lr=self._lr, grad_norm=gnorm,
                        tokens=self.tokens_seen, tok_per_s=tok_s, mfu=mfu, step_time=step_time)
        progress.console.print(
            f"step {self.step:>{len(str(self.total))}}/{self.total} | loss {loss:.4f} | lr {self._lr:.2e} | "
            f"gnorm {gnorm:.3f} | {tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {_fmt_time(eta)}",
            highlight=False)

    @torch.no_grad()
    def _evaluate(self) -> float:
        """Mean loss over the fixed validation windows (every window counts equally); logs loss + ppl."""
        B = self.cfg.train.batch_size
        totals = torch.zeros(2, dtype=torch.float64)
        self.model.eval()
        try:
            for i in range(0, len(self.val_starts), B):
                starts = self.val_starts[i:i + B]
                x, y = load_windows(self.val_tokens, starts, self.cfg.data.seq_len)
                with self.autocast:
                    _, loss = self.fwd(x.to(self.device), targets=y.to(self.device), return_logits=False)
                totals += torch.tensor([float(loss) * len(starts), len(starts)], dtype=torch.float64)
        finally:
            self.model.train()
        totals = D.all_reduce(totals, self.dist)
        val = float(totals[0] / totals[1])
        if self.main:
            ppl = math.exp(min(val, 50.0))
            self.logger.log(self.step, "val", loss=val, ppl=ppl)
            self.console.print(f"[cyan]eval[/] step {self.step}: val loss {val:.4f} · ppl {ppl:,.2f}", highlight=False)
        return val

    def _sample(self) -> None:
        from tokenizers import Tokenizer

        from krllm.model.llama import Llama
        from krllm.train.samples import sample_texts

        s = self.cfg.sample
        if not s.prompts:
            return
        model = D.unwrap(self.model)
        if not isinstance(model, Llama):  # samples decode with krllm's KV cache, which only Llama takes
            if not getattr(self, "_noted_samples", False):
                self._note(f"model.type {self.cfg.model.type!r}: no samples during training (they need krllm's "
                           "Llama KV cache)")
                self._noted_samples = True
            return
        tok = Tokenizer.from_file(str(self.tokenizer_dir / "tokenizer.json"))
        outs = sample_texts(model, self.model_cfg, tok, s.prompts, max_new_tokens=s.max_new_tokens,
                            temperature=s.temperature, top_k=s.top_k, seed=self.cfg.train.seed, step=self.step,
                            device=self.device, autocast=self.autocast,
                            stop_early=not (self.dist.enabled and self.cfg.run.distributed == "fsdp"))
        if self.main:
            for i, (prompt, text) in enumerate(outs):
                self.logger.log(self.step, "sample", prompt=prompt, text=text)
                self.logger.log_text(self.step, f"sample/{i}", f"**{prompt}**{text}")
                self.console.print(f"[magenta]sample[/] {prompt}[dim]…[/]", highlight=False, end="")
                self.console.print(text.replace("\n", " ⏎ "), markup=False, highlight=False)

    def _save(self) -> None:
        """Checkpoint (collective: every rank calls; rank 0 writes)."""
        model_state = D.full_model_state(self.model)
        optim_state = D.full_optim_state(self.model, self.opt)
        rngs = D.gather_objects(ckpt.rng_state(), self.dist)
        if self.main:
            tc = self.cfg.train
            trainer_state = {
                "tokens_seen": self.tokens_seen, "total_steps": self.total, "lr": self._lr,
                "data": self.train_data.state(), "world": self.dist.world, "batch_size": tc.batch_size,
                "grad_accum": tc.grad_accum, "seq_len": self.cfg.data.seq_len,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            path = ckpt.save_checkpoint(
                self.ckpt_root, self.step, model_state=model_state, optim_state=optim_state,
                trainer_state=trainer_state, rng_states=rngs,
                config_text=yaml.safe_dump(to_plain(self.cfg), sort_keys=False, allow_unicode=True),
                model_config=self._model_config_record(), keep_last=self.cfg.checkpoint.keep_last)
            self.console.print(f"[green]saved[/] {path}", highlight=False)
        D.barrier(self.dist)

    def _export_hf(self) -> None:
        """Final weights as an HF directory (with the tokenizer) that transformers loads (the family's `save`)."""
        fsdp = self.dist.enabled and self.cfg.run.distributed == "fsdp"
        state = D.full_model_state(self.model) if fsdp else None
        if self.main:
            model = D.unwrap(self.model)
            if fsdp:
                model = self.family.build_model(self.model_cfg, device="cpu")
                model.load_state_dict(state, strict=True)
            if self.family.save_model(model, self.run_dir / "hf", tokenizer_dir=self.tokenizer_dir) is None:
                self._note(f"model.type {self.cfg.model.type!r} has no HF export: the weights are in "
                           f"{self.ckpt_root}")
        D.barrier(self.dist)

    # ------------------------------------------------------------------ interrupts

    def _install_signals(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop:  # second Ctrl-C: give up immediately
                raise KeyboardInterrupt
            self._stop = True
            if self.main:
                self.console.print(f"[yellow]{signal.Signals(signum).name}[/]: finishing this step, saving a "
                                   "checkpoint, then exiting (press Ctrl-C again to abort without saving)")

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def _restore_signals(self, old) -> None:
        for s, h in (old or {}).items():
            signal.signal(s, h)

    def _stop_requested(self) -> bool:
        if not self.dist.enabled:
            return self._stop
        flag = torch.tensor([1.0 if self._stop else 0.0])
        return bool(D.all_reduce(flag, self.dist, "max")[0] > 0)

    def close(self) -> None:
        D.shutdown(self.dist)
        torch.set_num_threads(self._threads_before)  # run.threads is for this run only


def pretrain(cfg: PretrainConfig, resume: bool = False, console=None) -> dict:
    """Run (or resume) a pretraining run; the entry point of `krllm pretrain`."""
    try:
        trainer = Pretrainer(cfg, resume=resume, console=console)
    except BaseException:
        D.shutdown(D.Dist(world=int(os.environ.get("WORLD_SIZE", "1"))))  # leave no process group behind
        raise
    try:
        return trainer.fit()
    finally:
        trainer.close()
