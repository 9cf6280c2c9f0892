"""Greedy answers to chat prompts with krllm's inference engine (the code `krllm serve` runs).

Prompts are rendered with the tokenizer's chat template (`add_generation_prompt=True`), decoded
greedily (temperature 0) in batches by `krllm.infer.engine.Engine`, and stop at
`lm.stop_ids` (krllm's one stop-id rule: EOS, `<|im_end|>`, ...). Greedy makes eval.json
reproducible: the same model gives the same answers.
"""

from __future__ import annotations

from krllm.data.tokens.chat_tokens import generation_prompt_ids
from krllm.model.load import LoadedModel


def chat_prompt_ids(tokenizer, user: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return generation_prompt_ids(tokenizer, messages)


def greedy_answers(lm: LoadedModel, prompts: list[str], max_new_tokens: int = 64, system: str | None = None,
                   batch_size: int = 8) -> list[dict]:
    """[{"prompt", "answer", "tokens", "finish"}] for each user prompt, in order.

    All prompts go to the engine in one `generate` call: `batch_size` of them decode together (engine
    slots) and a finished one's slot takes the next waiting prompt (continuous batching)."""
    from krllm.infer.sampling import SamplingParams
    from krllm.infer.startup import make_engine

    ids = [chat_prompt_ids(lm.tokenizer, p, system) for p in prompts]
    longest = max((len(x) for x in ids), default=0) + max_new_tokens
    max_len = min(lm.context_length or longest, longest)
    engine = make_engine(lm, max_batch=max(1, min(batch_size, len(ids))), max_seq_len=max_len)  # no idle KV slots
    seqs = engine.generate(ids, SamplingParams(temperature=0), max_new_tokens=max_new_tokens)
    return [{"prompt": p, "answer": lm.tokenizer.decode(s.output, skip_special_tokens=True).strip(),
             "tokens": len(s.output), "finish": s.finish_reason} for p, s in zip(prompts, seqs)]
