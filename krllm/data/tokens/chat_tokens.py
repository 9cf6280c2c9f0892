"""ChatML messages (or plain text) -> token ids + labels: the loss on assistant turns, a learned end-of-turn.

Shared by every stage that needs to know which tokens a conversation teaches: SFT trains on these
labels (`krllm.train.sft_data.tokenize_records`), eval scores exactly them (`krllm.eval`).

    ids, labels = tokenize_chat(tokenizer, [{"role": "user", "content": "..."},
                                            {"role": "assistant", "content": "..."}])
    labels[i] == ids[i] where the token is learned, IGNORE (-100) elsewhere (unshifted: the model shifts)

The assistant mask comes from the template's `{% generation %}` markers when it has them
(transformers' `return_assistant_tokens_mask`, what TRL's `assistant_only_loss` uses), else from the
spans found by rendering each conversation prefix; the end-of-turn token (`<|im_end|>` for ChatML)
is *always* learned, even when a template leaves it outside the markers, or the tuned model never
learns to stop. `tokenizer` is a transformers fast tokenizer (any object with its methods).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from krllm.errors import DataError

IGNORE = -100
# End-of-turn tokens of common chat formats, tried in order (ChatML, Llama 3, Phi/Gemma-like).
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and bool(_GENERATION.search(template))


def turn_end_id(tokenizer) -> int:
    """The token that ends an assistant turn: <|im_end|> for ChatML, else the tokenizer's EOS."""
    vocab = tokenizer.get_vocab()
    for tok in TURN_END_TOKENS:
        if tok in vocab:
            return vocab[tok]
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no end-of-turn token (<|im_end|>, <|eot_id|>, ...) and no eos_token: "
                        "the model could never learn to stop")
    return tokenizer.eos_token_id


def stop_ids(tokenizer, model_dir: str | Path | Iterable[str | Path] | None = None, config=None) -> list[int]:
    """THE stop-id rule: every id that should end generation, deduplicated, in this order:

    1. the chat end-of-turn token (the first of TURN_END_TOKENS the vocabulary has),
    2. the tokenizer's EOS,
    3. the model config's eos ids (`config.eos_token_id`: int, list or None; krllm's ModelConfig
       and transformers configs alike),
    4. `eos_token_id` of `generation_config.json` in `model_dir` (one directory or several, e.g.
       an adapter directory and its base).

    `tokenizer` is a transformers tokenizer or a raw `tokenizers.Tokenizer` (anything with
    `get_vocab()`; `eos_token_id` is used when it has one), or None (config and files only).
    The loader, eval, SFT, pretraining samples and `save_hf` all call this, so every caller stops
    on the same ids.
    """
    ids: list[int | None] = []
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        ids.append(next((vocab[t] for t in TURN_END_TOKENS if t in vocab), None))
        ids.append(getattr(tokenizer, "eos_token_id", None))
    if config is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        ids.extend(_as_ids(getattr(text_config, "eos_token_id", None)))
    dirs = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir or [])
    for d in dirs:
        gen = Path(d) / "generation_config.json"
        if gen.is_file():
            try:
                data = json.loads(gen.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"{gen}:{e.lineno}: invalid JSON ({e.msg})") from None
            ids.extend(_as_ids(data.get("eos_token_id") if isinstance(data, dict) else None))
    out: list[int] = []
    for i in ids:
        if i is not None and int(i) not in out:
            out.append(int(i))
    return out


def _as_ids(eos) -> list[int]:
    """eos_token_id as stored (int, list of ints or None) -> a list."""
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def generation_prompt_ids(tokenizer, messages: list[dict], **template_kwargs) -> list[int]:
    """Chat turns through the tokenizer's template, ending with the assistant's generation prompt -> ids:
    what every generator (chat, serve, eval, training samples, RL rollouts) feeds the model."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        **template_kwargs)
    return [int(i) for i in out["input_ids"]]


def _render(tokenizer, messages, **kw) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kw)


def _mask_from_markers(tokenizer, messages) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


def _mask_from_prefixes(tokenizer, messages) -> tuple[list[int], list[int]]:
    """Assistant spans = what rendering turn i adds after the generation prompt of turns < i."""
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if not (full.startswith(upto) and upto.startswith(prompt)):
            raise DataError("the chat template renders a conversation prefix differently from the whole "
                            "conversation, so assistant tokens cannot be located; add {% generation %} markers "
                            "to the template (data.chat_template) or set data.loss_on: all")
        spans.append((len(prompt), len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= a and b <= e and b > a for s, e in spans)) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def finish_labels(ids: list[int], mask: list[int], eot: int) -> tuple[list[int], list[int]]:
    """Labels from an assistant mask, so that each assistant turn ends with a learned `eot` and nothing after.

    Inside a span, tokens after the first `eot` (e.g. ChatML's trailing newline) are not learned; a span
    not followed by `eot` gets the next token learned if it is `eot`; if the conversation ends without
    one, `eot` is appended and learned.
    """
    ids, labels = list(ids), [IGNORE] * len(ids)
    i, n = 0, len(ids)
    while i < n:
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < n and mask[j]:
            j += 1
        k = i
        while k < j and ids[k] != eot:
            labels[k] = ids[k]
            k += 1
        if k < j:  # eot inside the span: learn it, not what follows
            labels[k] = eot
        elif j < n and ids[j] == eot:  # template put eot just outside the markers
            labels[j] = eot
            j += 1
        elif j == n:  # the conversation ends without an end-of-turn token
            ids.append(eot)
            labels.append(eot)
        i = j
    return ids, labels


def tokenize_chat(tokenizer, messages: list[dict], loss_on: str = "assistant") -> tuple[list[int], list[int]]:
    eot = turn_end_id(tokenizer)
    if loss_on == "all":  # every token, including the template's own end-of-turn tokens
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        if eot not in ids:  # a template that never ends turns: end the conversation ourselves
            ids.append(eot)
        return ids, list(ids)
    if has_generation_markers(tokenizer.chat_template):
        ids, mask = _mask_from_markers(tokenizer, messages)
    else:
        ids, mask = _mask_from_prefixes(tokenizer, messages)
    return finish_labels(ids, mask, eot)


def tokenize_text(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Plain text: every token learned, EOS appended (and learned) so generation stops."""
    ids = list(tokenizer(text)["input_ids"])
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else turn_end_id(tokenizer)
    if not ids or ids[-1] != eos:
        ids.append(eos)
    return ids, list(ids)
