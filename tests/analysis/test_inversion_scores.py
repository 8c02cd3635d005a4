"""Likelihood shifts and hypothesis scores, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from tinylens.analysis.inversion import InversionSamples
from tinylens.analysis.inversion_scores import (
    hypothesis_score,
    likelihood_shift,
    token_log_likelihoods,
)
from tinylens.decoder import DecoderConfig, InversionDecoder
from tinylens.errors import ConfigError


def _decoder() -> InversionDecoder:
    cfg = DecoderConfig(d_vocab=7, n_ctx=5, d_act=6, n_sites=2, d_model=16, n_heads=2, n_cond_blocks=1)
    return InversionDecoder(cfg, seed=1).eval()


def test_token_log_likelihoods_match_a_softmax_by_hand() -> None:
    decoder = _decoder()
    tokens = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(0))
    act = torch.randn(6, generator=torch.Generator().manual_seed(1))
    got = token_log_likelihoods(decoder, tokens, act, 1)
    for row in range(3):  # one input at a time, probabilities by hand
        logits = decoder(tokens[row : row + 1], act[None], torch.tensor([1]))[0]
        for pos in range(5):
            p = logits[pos].exp() / logits[pos].exp().sum()
            assert math.isclose(float(got[row, pos]), math.log(float(p[tokens[row, pos]])), abs_tol=1e-5)
    # the site matters: the same activation read as another site gives other likelihoods
    assert not torch.allclose(got, token_log_likelihoods(decoder, tokens, act, 0))


def test_likelihood_shift_is_zero_against_itself_and_antisymmetric() -> None:
    decoder = _decoder()
    tokens = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(2))
    query, null = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(likelihood_shift(decoder, tokens, query, query, 0), torch.zeros(4, 5))
    there = likelihood_shift(decoder, tokens, query, null, 0)
    back = likelihood_shift(decoder, tokens, null, query, 0)
    torch.testing.assert_close(there, -back)
    assert float(there.abs().max()) > 0
    with pytest.raises(ConfigError, match="one vector"):
        likelihood_shift(decoder, tokens, query[None], null, 0)


def _samples(tokens: list[list[int]], distances: list[float], counts: list[int]) -> InversionSamples:
    return InversionSamples(
        torch.tensor(tokens), torch.tensor(distances), torch.tensor(counts), epsilon=0.1
    )


def test_hypothesis_score_counts_in_epsilon_samples_that_agree_with_the_query() -> None:
    first = lambda t: t[:, 0]  # noqa: E731  the feature: the first token
    samples = _samples(
        [[1, 0], [1, 5], [2, 0], [1, 1]], distances=[0.01, 0.05, 0.08, 0.5], counts=[3, 1, 2, 7]
    )
    query = torch.tensor([1, 9])
    reference = torch.tensor([[1, 0], [2, 0], [3, 0], [4, 0]])
    score = hypothesis_score(samples, first, query, reference)
    # inside ε: rows 0–2 written 3 + 1 + 2 times; rows 0 and 1 (4 of 6) agree; row 3 is outside
    assert score.n_inside == 6 and math.isclose(score.consistency, 4 / 6)
    assert math.isclose(score.base_rate, 1 / 4)
    both = lambda t: t  # noqa: E731  a whole-row feature: every token must agree
    assert hypothesis_score(samples, both, torch.tensor([1, 0]), reference).consistency == 0.5
    outside = _samples([[1, 0]], [0.3], [5])
    assert math.isnan(hypothesis_score(outside, first, query, reference).consistency)
    with pytest.raises(ConfigError, match="non-empty"):
        hypothesis_score(samples, first, query, reference[:0])
