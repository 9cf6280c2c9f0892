"""Greedy answers to a few held-out chat prompts before and after training (samples.md / samples.jsonl),
so a person sees what the run changed. Uses transformers' `generate` on the model being trained (the
pretraining loop's samples are krllm.train.samples). Rank 0 of a single-process run only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from krllm.config import atomic_write_text
from krllm.data.tokens.chat_tokens import stop_ids


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
