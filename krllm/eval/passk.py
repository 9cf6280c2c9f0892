"""pass@k with sampling: the chance that at least one of k answers is right, estimated from n >= k samples.

Chen et al. 2021 (HumanEval), the unbiased estimator: with n sampled answers per problem of which c
are right, pass@k = 1 - C(n-c, k) / C(n, k), i.e. the share of the k-subsets of the n samples that
hold at least one right answer, averaged over problems. Computing it from n > k samples has less
variance than drawing exactly k. Which answers are right is `krllm.data.answers.is_correct`, the
rule of the greedy exact match and of the GRPO reward.
"""

from __future__ import annotations

from math import comb

from krllm.data.answers import is_correct
from krllm.errors import UsageError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c right answers among n samples (k <= n)."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:  # every k-subset holds a right answer
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def check_ks(ks: list[int], n: int) -> list[int]:
    """Sorted distinct k values, each 1 <= k <= n samples."""
    bad = [k for k in ks if not 1 <= k <= n]
    if bad or not ks:
        raise UsageError(f"pass@k: every k must be between 1 and the number of samples per problem ({n}); got {ks}")
    return sorted(set(ks))


def math_pass_at_k(samples: list[list[str]], truths: list, ks: list[int]) -> dict:
    """{"pass@k": mean over problems, ..., "n": problems, "samples": answers per problem, "correct": [c, ...]}.

    samples[i] holds the sampled answers of problem i (the same number for each), truths[i] its truth."""
    if len(samples) != len(truths):
        raise ValueError(f"{len(samples)} sample lists for {len(truths)} problems")
    if not samples:
        raise UsageError("pass@k: no problems")
    n = len(samples[0])
    if any(len(s) != n for s in samples):
        raise ValueError("every problem needs the same number of samples")
    ks = check_ks(ks, n)
    correct = [sum(is_correct(a, t) for a in answers) for answers, t in zip(samples, truths)]
    out = {f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}
    out.update(n=len(samples), samples=n, correct=correct)
    return out
