"""Sampling transforms equal transformers' logits processors; seeded draws are reproducible."""

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from krllm.infer.sampling import (
    SamplingParams,
    SamplingRows,
    apply_repetition_penalty,
    min_p_filter,
    process_logits,
    sample,
    top_k_filter,
    top_p_filter,
)

V = 50


def _logits(b=3, v=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, generator=g) * 3


def test_repetition_penalty_matches_transformers():
    logits = _logits()
    ids = torch.tensor([[1, 5, 7, 7], [0, 2, 49, 3], [10, 11, 12, 13]])
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, ids, True)
    ours = apply_repetition_penalty(logits, seen, torch.full((3, 1), 1.3))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(ours, ref)
    assert not torch.equal(ours, logits)


@pytest.mark.parametrize("k", [1, 3, 17])
def test_top_k_matches_transformers(k):
    logits = _logits()
    ours = top_k_filter(logits, torch.full((3,), k))
    ref = TopKLogitsWarper(k)(None, logits.clone())
    assert torch.equal(ours, ref)
    assert (ours[0] > float("-inf")).sum() == k


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers(p):
    logits = _logits()
    ours = top_p_filter(logits, torch.full((3, 1), p))
    ref = TopPLogitsWarper(p)(None, logits.clone())
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("m", [0.05, 0.3])
def test_min_p_matches_transformers(m):
    logits = _logits()
    ours = min_p_filter(logits, torch.full((3, 1), m))
    ref = MinPLogitsWarper(m)(None, logits.clone())
    assert torch.equal(ours, ref)


def test_per_row_parameters_apply_to_their_row_only():
    logits = _logits()
    params = [SamplingParams(temperature=0.5, top_k=2), SamplingParams(temperature=1.0, top_p=0.5),
              SamplingParams(temperature=2.0)]
    rows = SamplingRows.build(params, V)
    out = process_logits(logits, rows)
    ref0 = TopKLogitsWarper(2)(None, TemperatureLogitsWarper(0.5)(None, logits[:1].clone()))
    ref1 = TopPLogitsWarper(0.5)(None, logits[1:2].clone())
    torch.testing.assert_close(out[:1], ref0)
    torch.testing.assert_close(out[1:2], ref1)
    torch.testing.assert_close(out[2:], logits[2:] / 2.0)


def test_greedy_is_argmax_even_with_other_rows_sampling():
    logits = _logits()
    rows = SamplingRows.build([SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=3),
                               SamplingParams(temperature=0)], V)
    out = sample(logits, rows)
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


def test_greedy_with_repetition_penalty_avoids_seen_top_token():
    logits = torch.zeros(1, V)
    logits[0, 7] = 5.0
    logits[0, 8] = 4.0
    rows = SamplingRows.build([SamplingParams(temperature=0, repetition_penalty=2.0)], V)
    assert sample(logits, rows).item() == 7
    rows.mark_seen(0, [7])
    assert sample(logits, rows).item() == 8  # 5/2 < 4


def test_seeded_sampling_is_reproducible_and_independent_of_batch():
    logits = (_logits(b=1) / 6).expand(4, V).contiguous()  # flat enough that draws differ
    p = SamplingParams(temperature=1.0, seed=1234)

    def draws(rows, n=20):
        return [sample(logits[: len(rows.params)], rows).tolist() for _ in range(n)]

    alone = [d[0] for d in draws(SamplingRows.build([p], V))]
    mixed = draws(SamplingRows.build([SamplingParams(temperature=1.0, seed=9), p,
                                      SamplingParams(temperature=0), SamplingParams(temperature=0.7)], V))
    assert alone == [d[1] for d in mixed]
    assert len(set(alone)) > 1  # it really samples
    other = [d[0] for d in draws(SamplingRows.build([SamplingParams(temperature=1.0, seed=99)], V))]
    assert other != alone


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0]]))
    rows = SamplingRows.build([SamplingParams(temperature=1.0, seed=0)], 4)
    counts = torch.bincount(torch.cat([sample(logits, rows) for _ in range(3000)]), minlength=4)
    freq = counts.float() / counts.sum()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.03, rtol=0)


def test_sampling_never_draws_a_zero_probability_token():
    """Inverse-CDF draws: masked tokens at the ends and between kept ones have zero width."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.5, 0.0]])
    rows = SamplingRows.build([SamplingParams(temperature=1.0, seed=s) for s in range(64)], 6)
    draws = torch.cat([sample(torch.log(probs).expand(64, 6), rows) for _ in range(50)])
    assert set(draws.tolist()) == {1, 4}


def test_top_k_one_is_greedy_when_sampling():
    logits = _logits()
    rows = SamplingRows.build([SamplingParams(temperature=1.5, top_k=1, seed=s) for s in range(3)], V)
    assert torch.equal(sample(logits, rows), logits.argmax(-1))


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                 dict(min_p=2), dict(repetition_penalty=0)])
def test_invalid_params_are_rejected_with_the_field_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)
