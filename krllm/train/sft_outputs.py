"""What a fine-tuning run leaves behind, written so a crash or a second process never leaves a half file:
run-directory checks (resume / overwrite), final adapter / HF directories (atomic, multi-process safe),
and before/after sample answers.

Multi-process (accelerate launch, FSDP, DeepSpeed): `trainer.save_model` is a collective (it gathers
sharded weights) that writes on rank 0; every other write here happens on rank 0 only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from krllm.config import atomic_write_text
from krllm.data.tokens.chat_tokens import stop_ids
from krllm.errors import KrllmError
from krllm.runs import replace_dir

CHECKPOINTS = "checkpoints"
STALE_FILES = ("metrics.jsonl", "summary.json", "samples.md", "samples.jsonl", "eval.json", "predictions.jsonl")


def rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------- run directory

def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (or None); refuse to silently mix a new run into an old one."""
    ckpts = sorted((run_dir / CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if resume:
        if not ckpts:
            raise KrllmError(f"--resume: no checkpoint in {run_dir / CHECKPOINTS}")
        return ckpts[-1]
    if ckpts or (run_dir / "metrics.jsonl").exists():
        if not overwrite:
            raise KrllmError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to "
                             "start over (deletes its checkpoints, metrics and outputs), or change name")
        if rank() == 0:  # everything a previous run wrote, so nothing stale is mistaken for this run's
            for sub in (CHECKPOINTS, "tb", "adapter", "merged", "hf"):
                shutil.rmtree(run_dir / sub, ignore_errors=True)
            for name in STALE_FILES:
                (run_dir / name).unlink(missing_ok=True)
    return None


# ---------------------------------------------------------------- final directories

def publish_dir(staging: Path, final: Path) -> None:
    """Rename a complete `staging` directory to `final`, replacing an old one (krllm.runs.replace_dir)."""
    replace_dir(staging, final)


def _top_level_rope_theta(config_json: Path) -> None:
    """transformers 5 keeps rope_theta inside rope_parameters; mlx-lm reads only the top-level key."""
    cfg = json.loads(config_json.read_text())
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in cfg:
        cfg["rope_theta"] = theta
        config_json.write_text(json.dumps(cfg, indent=2) + "\n")


def save_final(trainer, tokenizer, out: Path, extra=None) -> None:
    """The trained model (PEFT: the adapter only) + tokenizer + generation config, published atomically.

    Call on every rank. `extra(path)` may add files (rank 0, before publishing).
    """
    staging = out.parent / f".{out.name}.staging"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # collective under FSDP / ZeRO-3; writes on rank 0
    if trainer.is_world_process_zero():
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle of TrainingArguments: not needed
        tokenizer.save_pretrained(staging)
        gen = getattr(trainer.model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(staging)  # stop ids (<|im_end|>) for `krllm merge` and servers
        if (staging / "config.json").exists():
            _top_level_rope_theta(staging / "config.json")
        if extra is not None:
            extra(staging)
        publish_dir(staging, out)
    trainer.accelerator.wait_for_everyone()


def save_merged(model, tokenizer, out: Path) -> None:
    """A merged (plain) model as an HF directory; single process, rank 0."""
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _top_level_rope_theta(staging / "config.json")
    publish_dir(staging, out)


# ---------------------------------------------------------------- samples

def prompt_of(record: dict) -> list[dict] | None:
    """Chat turns up to (not including) the last assistant turn."""
    msgs = record.get("messages")
    if not msgs:
        return None
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> list[dict]:
    """Greedy answers; `stopped` = the model ended its turn itself (emitted an end-of-turn token)."""
    stops = stop_ids(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for msgs in prompts:
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt")["input_ids"].to(device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        stopped = bool(new) and new[-1] in stops
        text = tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=False)
        out.append({"answer": text, "stopped": stopped, "tokens": len(new)})
    model.train(was_training)
    return out


def write_samples(run_dir: Path, prompts, before, after, references) -> None:
    """samples.jsonl (machine-readable) + samples.md (for people): prompt, answers before/after, reference."""
    rows, md = [], ["# Samples (greedy decoding)\n"]
    for p, b, a, ref in zip(prompts, before, after, references):
        rows.append({"prompt": p, "before": b, "after": a, "reference": ref})
        md.append(f"## {p[-1]['content']}\n")
        md.append(f"- **before**: {b['answer']!r}{'' if b['stopped'] else ' (did not stop)'}")
        md.append(f"- **after**: {a['answer']!r}{'' if a['stopped'] else ' (did not stop)'}")
        md.append(f"- **reference**: {ref!r}\n")
    atomic_write_text(run_dir / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(run_dir / "samples.md", "\n".join(md) + "\n")
