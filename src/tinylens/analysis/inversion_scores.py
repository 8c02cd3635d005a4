"""Reading an inversion: which tokens an activation makes likely, and how well a hypothesis fits.

Background:
    InversionView's samples show what the inputs of an activation's ε-preimage have in common.
    Two measurements turn that into numbers:

    * the **likelihood shift** of each token of a sample: log p(token | prefix, z_q) −
      log p(token | prefix, z_null) under the decoder, where z_null is the site's no-information
      activation (the paper colours tokens by it: what the activation tells the decoder);
    * the **hypothesis score** (InverseScope's feature consistency rate) of a feature of the input,
      e.g. "the query letter's count": the share of the in-ε samples that agree with the query on
      it. It comes with its control, the share of random inputs that agree by chance; a site
      encodes the feature when the score is high and well above the control.

Usage:
    shift = likelihood_shift(decoder, samples.tokens, query, null, site_index)   # [sample, pos]
    score = hypothesis_score(samples, feature, query_tokens, reference_tokens)
    score.consistency, score.base_rate

References:
    Huang, Panwar, Goyal and Hahn, "InversionView", NeurIPS 2024 (arXiv:2405.17653); Luo et al.
    2025, "InverseScope" (the feature consistency rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, no_type_check

import torch
from jaxtyping import Float, Int

from tinylens.analysis.inversion import InversionSamples
from tinylens.errors import ConfigError


class Scorer(Protocol):
    """A decoder that gives next-token logits for whole inputs (teacher forcing)."""

    def __call__(
        self, tokens: torch.Tensor, acts: torch.Tensor, sites: torch.Tensor
    ) -> torch.Tensor: ...


@no_type_check  # checks its own inputs with tinylens errors
def token_log_likelihoods(
    decoder: Scorer,
    tokens: Int[torch.Tensor, "batch pos"],
    act: Float[torch.Tensor, " d_act"],
    site_index: int,
) -> Float[torch.Tensor, "batch pos"]:
    """log p(token_t | token_<t, act) for every token of every input, in nats."""
    if tokens.ndim != 2 or act.ndim != 1:
        raise ConfigError("tokens must be [batch, pos] and the activation one vector [d_act]")
    n = tokens.shape[0]
    with torch.no_grad():
        logits = decoder(tokens, act.float().expand(n, -1), torch.full((n,), site_index))
    return logits.float().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]


@no_type_check  # checks its own inputs with tinylens errors
def likelihood_shift(
    decoder: Scorer,
    tokens: Int[torch.Tensor, "batch pos"],
    query: Float[torch.Tensor, " d_act"],
    null: Float[torch.Tensor, " d_act"],
    site_index: int,
) -> Float[torch.Tensor, "batch pos"]:
    """Per token, how much more likely the query activation makes it than the no-information one
    (nats; positive: the activation speaks for that token)."""
    return token_log_likelihoods(decoder, tokens, query, site_index) - token_log_likelihoods(
        decoder, tokens, null, site_index
    )


@dataclass(frozen=True)
class HypothesisScore:
    """How well "the site encodes this feature" fits one query's preimage."""

    consistency: float
    """Share of the in-ε samples (counted as often as written) whose feature equals the query's;
    NaN when no sample is inside ε."""
    base_rate: float
    """The control: share of reference inputs whose feature equals the query's by chance."""
    n_inside: int
    """In-ε samples behind ``consistency`` (duplicates counted)."""


@no_type_check  # checks its own inputs with tinylens errors
def hypothesis_score(
    samples: InversionSamples,
    feature: Callable[[torch.Tensor], torch.Tensor],
    query_tokens: Int[torch.Tensor, " pos"],
    reference: Int[torch.Tensor, "ref pos"],
) -> HypothesisScore:
    """Feature consistency of one query's in-ε samples, with its chance-level control.

    Args:
        samples: the query's inversion.
        feature: ``tokens [batch, pos] → values [batch]`` or ``[batch, k]`` (rows compared whole);
            it must accept any token sequence a decoder may write (malformed ones included) and
            give them a value no well-formed query has, e.g. −1.
        query_tokens: the query's input.
        reference: random inputs of the task, for the control.
    """
    if query_tokens.ndim != 1 or reference.ndim != 2 or len(reference) == 0:
        raise ConfigError("query_tokens must be one input [pos] and reference a non-empty [ref, pos]")
    target = feature(query_tokens[None])[0]

    def agrees(tokens: torch.Tensor) -> torch.Tensor:
        values = feature(tokens)
        same = values == target
        return same if same.ndim == 1 else same.all(-1)

    inside = samples.inside
    counts = samples.counts[inside]
    n_inside = int(counts.sum())
    consistency = (
        float((agrees(samples.tokens[inside]) * counts).sum()) / n_inside if n_inside else math.nan
    )
    return HypothesisScore(consistency, float(agrees(reference).float().mean()), n_inside)
