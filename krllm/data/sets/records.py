"""JSONL record schemas for fine-tuning and alignment, validated with file:line errors.

Why a module of its own: every trainer (SFT, classification, DPO, GRPO) reads user JSONL, and a
bad line should say *where* and *what* (`data/sft.jsonl:17: messages[2].role: ...`) before any
model is loaded, not crash an hour into training. All problems of a file are reported at once
(up to `MAX_REPORTED`), so a user fixes them in one pass.

Formats (one JSON object per line; blank lines are skipped; unknown extra keys are ignored, except
in GRPO records, where they are kept because TRL passes every column to the reward functions):

    chat            {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}
    instruction     {"instruction": str, "input": str (optional), "output": str}  -> chat
    text            {"text": str}                                  (plain language modeling)
    classification  {"text": str, "label": str | int}
    dpo             {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}
                    or {"messages": [...prompt turns], "chosen": ..., "rejected": ...}
    grpo            {"prompt": str | messages, "ground_truth_answer": str | number, ...extra fields}
                    ("answer" is accepted for "ground_truth_answer" when that key is absent)

`load_examples(spec, kind)` reads a JSONL path, a Hub dataset (`hf:NAME[:CONFIG][@SPLIT]`,
krllm.data.sets.hub) or a `builtin:` set (generated, or the Korean↔English
help pairs `builtin:ko-en-help[:train|heldout]` as Korean->English translation turns) and returns
normalized dicts: SFT -> {"messages": [...]} or {"text": str}; classification -> {"text", "label"};
DPO -> {"prompt": messages, "chosen": messages, "rejected": messages}; GRPO -> {"prompt": messages,
"ground_truth_answer": str, **extras}. GRPO extras must be JSON values and must not take a name TRL
itself passes to reward functions (`GRPO_RESERVED`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krllm.data.sources import iter_jsonl
from krllm.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("sft", "classify", "dpo", "grpo")
MAX_REPORTED = 20

# builtin:NAME -> which record kinds it can feed (the generators live in krllm.data.sets.generated)
BUILTIN_SETS = {
    "npc": ("sft",),
    "math": ("sft", "dpo", "grpo"),
    "sentiment": ("classify", "sft"),
    "ko-en-help": ("sft",),  # real pairs, fetched once (krllm.data.sets.help_corpus); not generated
}


# keyword arguments TRL's GRPOTrainer passes to reward functions itself; a data column of that name would clash
GRPO_RESERVED = ("prompts", "completions", "completion_ids", "trainer_state", "completion", "log_extra",
                 "log_metric", "environments")


class RecordError(ValueError):
    """One bad record; `key` is the path inside the record (e.g. `messages[2].role`)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


# ---------------------------------------------------------------- field checks

def _string(obj: dict, key: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise RecordError(key, "required key is missing")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise RecordError(key, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(key, "is empty")
    return value


def check_messages(messages: Any, key: str = "messages", *, need_assistant: bool = True) -> list[dict]:
    """A list of {"role", "content"} with known roles and string content -> clean copies."""
    if not isinstance(messages, list):
        raise RecordError(key, f"must be a list of {{'role', 'content'}} objects, got {type(messages).__name__}")
    if not messages:
        raise RecordError(key, "is an empty list")
    out = []
    for i, m in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise RecordError(where, f"must be an object with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role is None:
            raise RecordError(f"{where}.role", "required key is missing")
        if role not in ROLES:
            raise RecordError(f"{where}.role", f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if "content" not in m or m["content"] is None:
            raise RecordError(f"{where}.content", "required key is missing")
        content = m["content"]
        if not isinstance(content, str):
            raise RecordError(f"{where}.content", f"must be a string (multimodal content lists are not "
                              f"supported), got {type(content).__name__}")
        if role == "assistant" and not content.strip():
            raise RecordError(f"{where}.content", "assistant message is empty (nothing to learn)")
        if role == "system" and i != 0:
            raise RecordError(f"{where}.role", "a system message must come first")
        out.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise RecordError(key, "has no assistant message (nothing to learn)")
    return out


def instruction_to_messages(instruction: str, output: str, input_text: str | None = None,
                            system: str | None = None) -> list[dict]:
    """Alpaca-style record -> chat turns. The input (if any) follows the instruction after a blank line."""
    user = instruction if not input_text or not input_text.strip() else f"{instruction}\n\n{input_text}"
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}] + messages
    return messages


def _string_or_list(value: Any, key: str) -> None:
    if not isinstance(value, list):
        raise RecordError(key, f"must be a string or a list of {{'role', 'content'}} messages, "
                          f"got {type(value).__name__}")


def _json_value(value: Any, key: str) -> None:
    """Strings, numbers, booleans, null, and lists/objects of them (what a JSON line can hold)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _json_value(v, f"{key}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise RecordError(key, f"object keys must be strings, got {type(k).__name__}")
            _json_value(v, f"{key}.{k}")
        return
    raise RecordError(key, f"must be a JSON value (string, number, boolean, null, list or object), "
                      f"got {type(value).__name__}")


def _prompt_messages(value: Any, key: str) -> list[dict]:
    """A prompt given as a string or as chat turns -> chat turns (must not end with the assistant)."""
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(key, "is empty")
        return [{"role": "user", "content": value}]
    _string_or_list(value, key)
    msgs = check_messages(value, key, need_assistant=False)
    if msgs[-1]["role"] == "assistant":
        raise RecordError(key, "must end with a user turn (the model answers it)")
    return msgs


def _completion_messages(value: Any, key: str) -> list[dict]:
    """A completion given as a string or as assistant turns -> assistant turns."""
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(key, "is empty")
        return [{"role": "assistant", "content": value}]
    _string_or_list(value, key)
    msgs = check_messages(value, key, need_assistant=True)
    if any(m["role"] != "assistant" for m in msgs):
        raise RecordError(key, "must contain assistant turns only")
    return msgs


# ---------------------------------------------------------------- one record per kind

def sft_record(obj: Any, system: str | None = None) -> dict:
    """chat / instruction / text record -> {"messages": [...]} or {"text": str}."""
    if not isinstance(obj, dict):
        raise RecordError("", f"each line must be a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        return {"messages": _with_system(check_messages(obj["messages"]), system)}
    if "instruction" in obj:
        instruction = _string(obj, "instruction")
        output = _string(obj, "output")
        input_text = _string(obj, "input", required=False, allow_empty=True)
        return {"messages": instruction_to_messages(instruction, output, input_text, system)}
    if "text" in obj:
        return {"text": _string(obj, "text")}
    raise RecordError("", "unknown record: expected 'messages' (chat), 'instruction'+'output', or 'text'; "
                      f"got keys {sorted(obj)}")


def classification_record(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise RecordError("", f"each line must be a JSON object, got {type(obj).__name__}")
    text = _string(obj, "text")
    if "label" not in obj or obj["label"] is None:
        raise RecordError("label", "required key is missing")
    label = obj["label"]
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise RecordError("label", f"must be a string or an integer, got {type(label).__name__}")
    if isinstance(label, str) and not label.strip():
        raise RecordError("label", "is empty")
    return {"text": text, "label": label}


def dpo_record(obj: Any, system: str | None = None) -> dict:
    if not isinstance(obj, dict):
        raise RecordError("", f"each line must be a JSON object, got {type(obj).__name__}")
    if "prompt" in obj:
        prompt = _prompt_messages(obj["prompt"], "prompt")
    elif "messages" in obj:
        prompt = _prompt_messages(obj["messages"], "messages")
    else:
        raise RecordError("prompt", "required key is missing (or give the prompt turns as 'messages')")
    for key in ("chosen", "rejected"):
        if key not in obj or obj[key] is None:
            raise RecordError(key, "required key is missing")
    chosen = _completion_messages(obj["chosen"], "chosen")
    rejected = _completion_messages(obj["rejected"], "rejected")
    if chosen == rejected:
        raise RecordError("rejected", "is identical to 'chosen' (no preference to learn)")
    return {"prompt": _with_system(prompt, system), "chosen": chosen, "rejected": rejected}


def grpo_record(obj: Any, system: str | None = None) -> dict:
    """{"prompt", "ground_truth_answer" (or "answer"), ...extras} -> {"prompt": messages, "ground_truth_answer": str,
    **extras}; the extras reach the reward functions as keyword arguments (lists over the batch)."""
    if not isinstance(obj, dict):
        raise RecordError("", f"each line must be a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj:
        raise RecordError("prompt", "required key is missing")
    prompt = _prompt_messages(obj["prompt"], "prompt")
    key = "ground_truth_answer" if "ground_truth_answer" in obj or "answer" not in obj else "answer"
    answer = obj.get(key)
    if answer is None:
        raise RecordError("ground_truth_answer", "required key is missing (the alias 'answer' is accepted too)")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise RecordError(key, f"must be a string (or a number), got {type(answer).__name__}")
    if not str(answer).strip():
        raise RecordError(key, "is empty")
    extras = {k: v for k, v in obj.items() if k not in ("prompt", key)}
    for k, v in extras.items():
        if k in GRPO_RESERVED:
            raise RecordError(k, f"is a name TRL passes to reward functions itself ({', '.join(GRPO_RESERVED)}); "
                              "rename this field")
        _json_value(v, k)
    return {"prompt": _with_system(prompt, system), "ground_truth_answer": str(answer).strip(), **extras}


def _convert(obj: Any, kind: str, system: str | None) -> dict:
    if kind == "sft":
        return sft_record(obj, system)
    if kind == "classify":
        return classification_record(obj)
    if kind == "dpo":
        return dpo_record(obj, system)
    if kind == "grpo":
        return grpo_record(obj, system)
    raise ValueError(f"unknown record kind {kind!r}; use one of {', '.join(KINDS)}")


# ---------------------------------------------------------------- files and built-in sets

def load_jsonl(path: str | Path, kind: str, system: str | None = None, columns: dict[str, str] | None = None) -> list[dict]:
    """Validate every line of a JSONL file; raise one DataError listing every bad line (file:line: key: why)."""
    records = validate_rows(((f"{path}:{lineno}", obj) for lineno, obj in iter_jsonl(path)), kind, str(path),
                            system, columns)
    if not records:
        raise DataError(f"{path}: no records (the file is empty)")
    return records


def rename_columns(obj: Any, columns: dict[str, str] | None) -> Any:
    """A row with its keys renamed by `columns` (source key -> record key); other keys stay."""
    if not columns or not isinstance(obj, dict):
        return obj
    return {columns.get(k, k): v for k, v in obj.items()}


def validate_rows(rows, kind: str, source: str, system: str | None = None,
                  columns: dict[str, str] | None = None) -> list[dict]:
    """(where, row) pairs -> normalized records, or one DataError listing every bad row (where: key: why)."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; use one of {', '.join(KINDS)}")
    return convert_rows(rows, lambda obj: _convert(rename_columns(obj, columns), kind, system),
                        f"{kind} record(s)", source)


def convert_rows(rows, convert, what: str, source: str, errors=(RecordError,)) -> list:
    """`convert` over (where, row) pairs -> the results, or one DataError naming every bad row (the first
    MAX_REPORTED of them, as where: why) once all were read, so one run shows the user every mistake."""
    out, problems, n_bad = [], [], 0
    for where, obj in rows:
        try:
            out.append(convert(obj))
        except errors as e:
            n_bad += 1
            if len(problems) < MAX_REPORTED:
                problems.append(f"{where}: {e}")
    if problems:
        more = f"\n  ... and {n_bad - len(problems)} more bad rows" if n_bad > len(problems) else ""
        raise DataError(f"{n_bad} invalid {what} in {source}:\n  " + "\n  ".join(problems) + more)
    return out


def _builtin_rows(name: str, option: str | None, kind: str, n: int | None, seed: int) -> list[dict]:
    """The generator's rows of a built-in set, already in the record format of `kind`."""
    if name == "ko-en-help":
        from krllm.data.sets.help_corpus import sample_pairs, translation_messages

        return [{"messages": translation_messages(p)} for p in sample_pairs(option or "train", n, seed)]
    try:
        from krllm.data.sets import generated
    except ImportError as e:  # the generators are a separate module; say what is missing
        raise DataError(f"builtin:{name} needs krllm.data.sets.generated, which failed to import: {e}") from None
    n = BUILTIN_N if n is None else n
    if name == "npc":
        return generated.npc_dialogues(n, seed=seed)
    if name == "math" and kind == "dpo":
        return [{"prompt": r["question"], "chosen": r["chosen"], "rejected": r["rejected"]}
                for r in generated.math_preference_pairs(n, seed=seed, lang=option or "ko")]
    if name == "math":
        rows = generated.math_problems(n, seed=seed, lang=option or "ko")
        if kind == "grpo":
            return [{"prompt": r["question"], "ground_truth_answer": r["answer"], "lang": r["lang"]} for r in rows]
        return [{"messages": [{"role": "user", "content": r["question"]},
                              {"role": "assistant", "content": r["solution"]}]} for r in rows]
    rows = generated.sentiment_examples(n, seed=seed)
    if kind == "classify":
        return rows
    return [{"messages": [{"role": "user", "content": r["text"]},  # sentiment as SFT: answer with the label
                          {"role": "assistant", "content": str(r["label"])}]} for r in rows]


def builtin_records(spec: str, kind: str, n: int | None = None, seed: int = 0, system: str | None = None) -> list[dict]:
    """`builtin:npc`, `builtin:math[:ko|en|mixed]`, `builtin:sentiment`, `builtin:ko-en-help[:train|heldout]`
    -> normalized records of `kind`. n=None: BUILTIN_N generated records, or every help pair of the split."""
    name, _, option = str(spec).removeprefix("builtin:").partition(":")
    if name not in BUILTIN_SETS:
        raise DataError(f"unknown built-in set {spec!r}; available: "
                        + ", ".join(f"builtin:{k}" for k in BUILTIN_SETS))
    if kind not in BUILTIN_SETS[name]:
        raise DataError(f"builtin:{name} cannot feed {kind} training (it feeds: {', '.join(BUILTIN_SETS[name])})")
    allowed = {"math": ("", "ko", "en", "mixed"), "ko-en-help": ("", "train", "heldout")}.get(name, ("",))
    if option not in allowed:
        raise DataError(f"unknown option in {spec!r}: builtin:math takes :ko, :en or :mixed; builtin:ko-en-help "
                        ":train or :heldout; other sets take none")
    out = []
    for i, obj in enumerate(_builtin_rows(name, option or None, kind, n, seed)):
        try:
            out.append(_convert(obj, kind, system))
        except RecordError as e:  # a generator bug, but still say where
            raise DataError(f"{spec} record {i}: {e}") from None
    return out


BUILTIN_N = 1000  # records generated for a `builtin:` spec when no n is given


def load_examples(spec: str | Path, kind: str, n: int | None = None, seed: int = 0,
                  system: str | None = None, columns: dict[str, str] | None = None) -> list[dict]:
    """A JSONL path, a `builtin:` spec or a Hub dataset `hf:NAME[:CONFIG][@SPLIT]` -> validated, normalized
    records (the first `n` of a file or dataset). `columns` renames keys of file / dataset rows first."""
    if str(spec).startswith("builtin:"):
        return builtin_records(str(spec), kind, n=n, seed=seed, system=system)
    from krllm.data.sets.hub import hub_rows, is_hub_spec

    if is_hub_spec(spec):
        records = validate_rows(((f"{spec} row {i}", row) for i, row in hub_rows(str(spec), n)), kind, str(spec),
                                system, columns)
        if not records:
            raise DataError(f"{spec}: no rows")
        return records
    records = load_jsonl(spec, kind, system, columns)
    return records[:n] if n is not None else records
