"""Exact-match accuracy on arithmetic word problems, read the way the GRPO reward reads them.

The final answer comes from `krllm.data.answers.extract_answer` (a cued answer such as `정답: 42`,
`#### 42`, `\\boxed{42}`, else the last number; two different cued answers count as none) and is
compared with the truth (or the truth's own cued answer, for a worked solution) as an exact number
(`3/4 == 0.75`, `12.0 == 12`): `krllm.data.answers.is_correct`, the one rule of eval and reward, so a
model is scored the way it was trained.
"""

from __future__ import annotations

from krllm.data.answers import is_correct


def exact_match(predictions: list[str], truths: list[str]) -> dict:
    """{"accuracy", "correct", "n"} over paired predictions and true answers."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} answers")
    correct = sum(is_correct(p, t) for p, t in zip(predictions, truths))
    return {"accuracy": correct / len(truths) if truths else 0.0, "correct": correct, "n": len(truths)}
