"""Records from a Hugging Face Hub dataset by name: `hf:NAME[:CONFIG][@SPLIT]`.

    hf:openai/gsm8k:main              GSM8K's train split ("main" config)
    hf:openai/gsm8k:main@test         its test split
    hf:trl-lib/ultrafeedback_binarized@train

Why: the guides train on public sets (GSM8K for GRPO, preference pairs for DPO, chat sets for SFT) and
users should not have to export them to JSONL first. `datasets.load_dataset` downloads (or reads its
cache); every row then goes through the same validation as a JSONL line, with `spec row N: key: why`
errors. A dataset whose columns have other names is mapped with the data section's `columns`
(dataset column -> our key, e.g. {question: prompt, answer: ground_truth_answer}); GSM8K's answer
column (a worked solution ending in `#### 72`) works as the ground truth as it is, because rewards and
eval read the final answer out of a reference (krllm.data.answers.reference_answer).
"""

from __future__ import annotations

from typing import Iterator

from krllm.errors import DataError

PREFIX = "hf:"


def is_hub_spec(spec) -> bool:
    return str(spec).startswith(PREFIX)


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> (name, config or None, split; default "train")."""
    body, _, split = str(spec).removeprefix(PREFIX).partition("@")
    name, _, config = body.partition(":")
    if not name or "/" not in name and not name.replace("-", "").replace("_", "").isalnum():
        raise DataError(f"{spec!r}: expected hf:NAME[:CONFIG][@SPLIT], e.g. hf:openai/gsm8k:main@train")
    return name, config or None, split or "train"


def hub_rows(spec: str, n: int | None = None) -> Iterator[tuple[int, dict]]:
    """(row index, row) of the first n rows of a Hub dataset split."""
    name, config, split = parse_hub_spec(spec)
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: reading Hub datasets needs the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, unknown name / config / split, offline mode: all end here
        raise DataError(f"{spec}: could not load dataset {name!r} (config {config}, split {split!r}): "
                        f"{type(e).__name__}: {e}. Offline (HF_HUB_OFFLINE=1) only cached datasets load; "
                        "or export it to JSONL and pass the file") from None
    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    for i, row in enumerate(ds):
        yield i, dict(row)
