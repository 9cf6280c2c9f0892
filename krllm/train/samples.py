"""Generations from fixed prompts during pretraining: a quick look at what the model has learned.

Sampling uses its own `torch.Generator` seeded from (seed, step), so looking at samples never
changes the training RNG stream (a run with samples has the same losses as one without). Every
rank runs it under FSDP (forward gathers shards), only rank 0 prints.
"""

from __future__ import annotations

import contextlib

import torch

from krllm.data.tokens import chat_tokens
from krllm.model.cache import KVCache


@torch.no_grad()
def generate_ids(model, cfg, prompt_ids: list[int], *, max_new_tokens: int, temperature: float, top_k: int,
                 generator: torch.Generator, device: torch.device, autocast, stop_ids: set[int],
                 stop_early: bool = True) -> list[int]:
    """Token ids continuing `prompt_ids` (KV cache, one sequence), cut at the first id in `stop_ids`.

    stop_early=False always runs `max_new_tokens` forwards (then cuts): under FSDP every rank must
    run the same number of forwards, whatever it samples.
    """
    limit = cfg.max_position_embeddings
    prompt_ids = prompt_ids[-(limit - max_new_tokens):] if len(prompt_ids) + max_new_tokens > limit else prompt_ids
    if not prompt_ids:
        prompt_ids = [cfg.bos_token_id or 0]
    dtype = autocast.fast_dtype if isinstance(autocast, torch.autocast) else torch.float32
    cache = KVCache(cfg, 1, len(prompt_ids) + max_new_tokens, device=device, dtype=dtype)
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    out: list[int] = []
    for _ in range(max_new_tokens):
        with autocast:
            logits, _ = model(ids, cache=cache)
        logits = logits[0, -1].float()  # (V,)
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k > 0 and top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        out.append(nxt)
        if nxt in stop_ids and stop_early:
            break
        ids = torch.tensor([[nxt]], device=device)
    cut = next((i for i, t in enumerate(out) if t in stop_ids), len(out))
    return out[:cut]


def sample_texts(model, cfg, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 top_k: int, seed: int, step: int, device: torch.device, autocast=None,
                 stop_early: bool = True) -> list[tuple[str, str]]:
    """[(prompt, continuation)] for each fixed prompt; the model is put back in train mode after."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    stop = set(chat_tokens.stop_ids(tokenizer, config=cfg))  # config eos + <|im_end|> (raw Tokenizer)
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt in prompts:
            ids = tokenizer.encode(prompt).ids
            new = generate_ids(model, cfg, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_k=top_k, generator=gen, device=device,
                               autocast=autocast or contextlib.nullcontext(), stop_ids=stop,
                               stop_early=stop_early)
            out.append((prompt, tokenizer.decode(new)))
    finally:
        model.train(was_training)
    return out
