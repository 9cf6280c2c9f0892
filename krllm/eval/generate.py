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

    ids = [chat_prompt_ids(lm.tokenizer, p, system) for p in prompts]
    return [{"prompt": p, **a} for p, a in zip(prompts, decode_ids(lm, ids, [SamplingParams(temperature=0)] * len(ids),
                                                                   max_new_tokens, batch_size))]


def decode_ids(lm: LoadedModel, ids: list[list[int]], sampling: list, max_new_tokens: int = 64,
               batch_size: int = 8) -> list[dict]:
    """[{"answer", "tokens", "finish"}] for each prompt of token ids, decoded by the engine with its own
    SamplingParams, `batch_size` at a time (continuous batching)."""
    from krllm.infer.startup import make_engine

    longest = max((len(x) for x in ids), default=0) + max_new_tokens
    max_len = min(lm.context_length or longest, longest)
    engine = make_engine(lm, max_batch=max(1, min(batch_size, len(ids))), max_seq_len=max_len)  # no idle KV slots
    seqs = engine.generate(ids, sampling, max_new_tokens=max_new_tokens)
    return [{"answer": lm.tokenizer.decode(s.output, skip_special_tokens=True).strip(), "tokens": len(s.output),
             "finish": s.finish_reason} for s in seqs]


def sampled_answers(lm: LoadedModel, prompts: list[str], n: int, temperature: float = 0.8, top_p: float = 0.95,
                    seed: int = 0, max_new_tokens: int = 64, system: str | None = None,
                    batch_size: int = 8) -> list[list[dict]]:
    """n sampled answers per user prompt ([prompt][sample] -> {"answer", "tokens", "finish"}), for pass@k.

    Sample j of prompt i draws with seed `seed + i * n + j` (its own generator), so the answers do not
    depend on the batch size or on which other prompts decode beside it."""
    from krllm.infer.sampling import SamplingParams

    ids, params = [], []
    for i, p in enumerate(prompts):
        prompt = chat_prompt_ids(lm.tokenizer, p, system)
        for j in range(n):
            ids.append(prompt)
            params.append(SamplingParams(temperature=temperature, top_p=top_p, seed=seed + i * n + j))
    flat = decode_ids(lm, ids, params, max_new_tokens, batch_size)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]
