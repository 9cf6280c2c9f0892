"""Facts every caller reads from a model's config, whether krllm's ModelConfig or a transformers
config (multimodal ones nest the decoder's): eos ids, context length, vocabulary size.

One place, so the engine, the loader and the adapter merge agree on e.g. which key is a model's
context length (GPT-2 says `n_positions`, Llama `max_position_embeddings`).
"""

from __future__ import annotations

# Config keys different architectures use for their longest sequence (first one present wins).
MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def text_config(config):
    """The decoder's config (multimodal configs nest it); a plain config is returned as it is."""
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if callable(get) else config


def config_max_len(config) -> int | None:
    """Longest sequence the config names (None: the architecture has no position limit, e.g. SSMs)."""
    cfg = text_config(config)
    for key in MAX_LEN_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def config_eos_ids(config) -> list[int]:
    """`eos_token_id` of a krllm ModelConfig or a transformers config (int, list or None) as a list."""
    ids = getattr(config, "eos_ids", None)  # krllm's ModelConfig
    if ids is None:
        eos = getattr(text_config(config), "eos_token_id", None)
        ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return [int(i) for i in ids]


def config_vocab_size(config) -> int:
    return int(text_config(config).vocab_size)
