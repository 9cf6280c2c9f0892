"""A transformers tokenizer -> the `tokenizer.ggml.*` fields of a GGUF, such that llama.cpp tokenizes
exactly as the HF tokenizer does (checked against llama.cpp itself in tests/test_export_gguf.py).

llama.cpp does not read tokenizer.json's regexes: it splits text with a fixed set of built-in
pre-tokenizers chosen by the name in `tokenizer.ggml.pre`. An unknown name is refused at load and a
wrong one silently splits differently, so the name is inferred, never guessed:

  1. llama.cpp's own fingerprint (convert_hf_to_gguf.py): the ids of one check string, hashed. This
     recognises released tokenizers (Llama 3's, Qwen2's) whatever their tokenizer.json looks like.
  2. the structure of tokenizer.json: a byte-level BPE whose Split regex is exactly the one llama.cpp
     runs under a name (krllm.tokenizer.pretokenize.LLAMA_CPP_PRE: qwen2, llama3 -> llama-bpe, gpt2),
     with the matching `ignore_merges`. This recognises every tokenizer krllm trains.

Anything else is refused with a message that says what to change; krllm's `korean` pre-tokenizer
has no llama.cpp twin, so such a tokenizer must be retrained with `pre_tokenizer: llama3`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from krllm.errors import KrllmError

# llama.cpp's check string and the hashes of its ids (convert_hf_to_gguf.py, get_vocab_base_pre).
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_HASHES: dict[str, str] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}
# llama.cpp's `llama-bpe` skips the merges of a piece that is itself in the vocabulary; the others do not.
LLAMA_CPP_IGNORES_MERGES = {"llama-bpe": True, "qwen2": False, "gpt-2": False}

# gguf.TokenType values (llama.cpp's llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

RETRAIN_HINT = ("retrain the tokenizer with `pre_tokenizer: llama3` (and `merge_unit: char`), as "
                "configs/tokenizer/ko_bpe.yaml does, then train the model on it (docs/export.md)")

_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


@dataclass
class GGUFVocab:
    """What a GGUF's tokenizer.ggml.* keys hold (tokens padded to the model's vocab size)."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int | None
    bos_id: int | None
    pad_id: int | None
    eot_id: int | None
    chat_template: str | None
    add_bos: bool  # llama.cpp prepends BOS exactly when the HF tokenizer does (krllm's never do)
    add_eos: bool
    how: str  # how `pre` was found, for the export summary
    notes: list[str] = field(default_factory=list)


def gguf_chat_template(template: str | None) -> str | None:
    """The template to embed: transformers' `{% generation %}` markers removed (they only mark which tokens
    are trained on; jinja2 without transformers' extension, llama-cpp-python's formatter among them, cannot
    parse them). What the template renders is unchanged."""
    if not template:
        return None
    return _GENERATION_TAG.sub("", template)


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KrllmError(f"{path} not found: a GGUF export needs the model's tokenizer.json (a byte-level BPE)") from None
    except json.JSONDecodeError as e:
        raise KrllmError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise KrllmError(f"{path}: expected a JSON object")
    return data


def _split_pattern(pre: dict | None) -> tuple[str | None, bool]:
    """(the Split regex, whether the rest is a plain ByteLevel) of a tokenizer.json pre_tokenizer."""
    if not pre:
        return None, False
    if pre.get("type") == "ByteLevel":
        return ("<gpt2>" if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None), True
    if pre.get("type") != "Sequence":
        return None, False
    parts = pre.get("pretokenizers") or []
    if len(parts) != 2 or parts[0].get("type") != "Split" or parts[1].get("type") != "ByteLevel":
        return None, False
    split, byte_level = parts
    ok = (split.get("behavior") == "Isolated" and not split.get("invert")
          and not byte_level.get("add_prefix_space") and not byte_level.get("use_regex", True))
    return (split.get("pattern") or {}).get("Regex"), ok


def pre_from_structure(tokenizer_json: dict, source: str) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json whose split llama.cpp runs exactly; errors say why not."""
    from krllm.tokenizer.pretokenize import LLAMA_CPP_PRE, SPLIT_PATTERNS

    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise KrllmError(f"{source}: model.type is {model.get('type')!r}; GGUF export writes byte-level BPE "
                         "tokenizers (llama.cpp `gpt2` vocab) only")
    pattern, plain = _split_pattern(tokenizer_json.get("pre_tokenizer"))
    kind = "gpt2" if pattern == "<gpt2>" else next((k for k, p in SPLIT_PATTERNS.items() if p == pattern), None)
    if kind == "korean":
        raise KrllmError(f"{source}: this tokenizer uses krllm's `korean` pre-tokenizer, which llama.cpp has no "
                         f"equivalent of (it would split text differently and the GGUF would answer worse); "
                         f"{RETRAIN_HINT}")
    if kind is None or not plain:
        raise KrllmError(f"{source}: llama.cpp has no pre-tokenizer known to split exactly like this tokenizer.json "
                         f"(pre_tokenizer {json.dumps(tokenizer_json.get('pre_tokenizer'))[:200]}); exportable: "
                         "krllm tokenizers with pre_tokenizer qwen2 / llama3 / gpt2, and Llama 3 / Qwen2 tokenizers; "
                         + RETRAIN_HINT)
    name = LLAMA_CPP_PRE[kind]
    ignore = bool(model.get("ignore_merges", False))
    if ignore != LLAMA_CPP_IGNORES_MERGES[name]:
        raise KrllmError(f"{source}: model.ignore_merges is {ignore}, but llama.cpp's {name!r} pre-tokenizer "
                         f"{'always' if not ignore else 'never'} skips merges of whole-vocabulary pieces; ids "
                         f"would differ (retrain with krllm's trainer, which sets it to match)")
    return name


def llama_cpp_pre(tokenizer, tokenizer_dir: Path) -> tuple[str, str]:
    """(tokenizer.ggml.pre, how it was found) for a transformers fast tokenizer saved in `tokenizer_dir`."""
    ids = tokenizer.encode(CHECK_TEXT, add_special_tokens=True)
    digest = sha256(str(ids).encode()).hexdigest()
    if digest in KNOWN_HASHES:
        return KNOWN_HASHES[digest], f"llama.cpp fingerprint {digest[:12]}"
    path = tokenizer_dir / "tokenizer.json"
    return pre_from_structure(_load_json(path), str(path)), "tokenizer.json pre_tokenizer"


def _merge_strings(model: dict, source: str) -> list[str]:
    merges = []
    for m in model.get("merges") or []:
        pair = m if isinstance(m, list) else m.split(" ", 1)
        if len(pair) != 2 or " " in pair[0] or " " in pair[1]:
            raise KrllmError(f"{source}: merge {m!r} cannot be written as GGUF's 'a b' form")
        merges.append(f"{pair[0]} {pair[1]}")
    return merges


def gguf_vocab(tokenizer, tokenizer_dir: str | Path, n_vocab: int) -> GGUFVocab:
    """All tokenizer.ggml.* fields for a model whose embedding has `n_vocab` rows (ids past the tokenizer's
    last are padded as unused, as convert_hf_to_gguf.py does)."""
    tokenizer_dir = Path(tokenizer_dir)
    pre, how = llama_cpp_pre(tokenizer, tokenizer_dir)
    source = str(tokenizer_dir / "tokenizer.json")
    data = _load_json(tokenizer_dir / "tokenizer.json")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise KrllmError(f"{source}: token id {max(vocab.values())} has no row in the model's embedding "
                         f"(vocab_size {n_vocab}); tokenizer and model do not belong together")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    notes = []
    if (data.get("normalizer") or {}).get("type") not in (None, "NFC"):
        raise KrllmError(f"{source}: normalizer {data['normalizer'].get('type')!r} is not run by llama.cpp; "
                         "export needs no normalizer or NFC")
    if data.get("normalizer"):
        notes.append("llama.cpp does not apply the tokenizer's NFC normalizer: give it NFC text "
                     "(decomposed Hangul jamo, e.g. from macOS file names, tokenize differently)")
    eot = next((vocab[t] for t in ("<|im_end|>", "<|eot_id|>") if t in vocab), None)
    plain, framed = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("a", add_special_tokens=True)
    add_bos = tokenizer.bos_token_id is not None and framed[:1] == [tokenizer.bos_token_id] and plain[:1] != framed[:1]
    add_eos = tokenizer.eos_token_id is not None and framed[-1:] == [tokenizer.eos_token_id] and plain[-1:] != framed[-1:]
    return GGUFVocab(pre=pre, tokens=tokens, token_types=types, merges=_merge_strings(data.get("model") or {}, source),
                     eos_id=tokenizer.eos_token_id, bos_id=tokenizer.bos_token_id, pad_id=tokenizer.pad_token_id,
                     eot_id=eot, chat_template=gguf_chat_template(getattr(tokenizer, "chat_template", None)),
                     add_bos=add_bos, add_eos=add_eos, how=how, notes=notes)
