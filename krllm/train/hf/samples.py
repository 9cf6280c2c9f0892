"""Greedy answers to a few held-out chat prompts before and after training (samples.md / samples.jsonl),
so a person sees what the run changed. Decoded by krllm's engine (the one `krllm chat` / `serve` / eval
use) on the live model being trained: its transformers path runs any causal LM, PEFT-wrapped or not,
and gives transformers' greedy tokens exactly. Rank 0 of a single-process run only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from krllm.config import atomic_write_text
from krllm.data.tokens.chat_tokens import generation_prompt_ids, stop_ids


def prompt_of(record: dict) -> list[dict] | None:
    """Chat turns up to (not including) the last assistant turn."""
    msgs = record.get("messages")
    if not msgs:
        return None
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> list[dict]:
    """Greedy answers; `stopped` = the model ended its turn itself (emitted an end-of-turn token), which
    `tokens` counts."""
    from krllm.infer.engine import Engine
    from krllm.infer.sampling import SamplingParams
    from krllm.model.config_facts import config_max_len

    if not prompts:
        return []
    ids = [generation_prompt_ids(tokenizer, msgs) for msgs in prompts]
    was_training = model.training
    try:
        needed = max(map(len, ids)) + max_new_tokens + 1
        engine = Engine(model, max_batch=len(ids), max_seq_len=min(needed, config_max_len(model.config) or needed),
                        eos_ids=stop_ids(tokenizer))
        seqs = engine.generate(ids, SamplingParams(temperature=0), max_new_tokens=max_new_tokens)
    finally:
        model.train(was_training)
    return [{"answer": tokenizer.decode(s.output, skip_special_tokens=False), "stopped": s.finish_reason == "stop",
             "tokens": len(s.output) + (s.finish_reason == "stop")} for s in seqs]


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
