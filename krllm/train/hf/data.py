"""Train / validation records of a tuning run, from a method's `data` section (a DataSourceSection).

Every method (sft, dpo, grpo) reads its records the same way: validated with file:line errors by
krllm.data.sets.records, then either a separate eval set or a seeded hold-out of `eval_fraction`.
"""

from __future__ import annotations

import math
import random

from krllm.data.sets.records import load_examples
from krllm.train.hf.config import DataSourceSection


def split_records(d: DataSourceSection, kind: str) -> tuple[list[dict], list[dict]]:
    """(train, eval) records of `kind` (sft | dpo | grpo): a separate eval set, or a seeded hold-out."""
    train = load_examples(d.train, kind, n=d.n, seed=d.seed, system=d.system_prompt, columns=d.columns)
    if d.eval:  # a built-in eval set: fresh records (seed + 1), eval_fraction of the train size
        n_eval = max(1, math.ceil(len(train) * (d.eval_fraction or 0.05))) if d.eval.startswith("builtin:") else None
        return train, load_examples(d.eval, kind, n=n_eval, seed=d.seed + 1, system=d.system_prompt,
                                    columns=d.columns)
    if d.eval_fraction == 0 or len(train) < 2:
        return train, []
    order = list(range(len(train)))
    random.Random(d.seed).shuffle(order)
    n_eval = max(1, math.ceil(len(train) * d.eval_fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
