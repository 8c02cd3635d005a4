"""Rank attention heads by a score and test the ranking by ablating the top ones.

Background:
    A head score (e.g. attention mass on tokens naming legal moves minus mass on illegal ones) is
    only a correlation. Ablating the top-ranked heads and measuring what the model loses, beside
    ablating as many heads drawn from the rest, turns it into a causal claim.

Usage:
    order = rank_heads(score)                                       # [(layer, head), …] best first
    logits = ablate_heads(model, tokens, order[:2], kind="mean")    # [batch, pos, vocab]
    rate = allowed_rate(logits, query, allowed)                     # share of legal argmaxes

References:
    Ivanitskiy, Spies et al. 2023 (adjacency heads of a maze solver); Wang et al. 2022 (mean
    ablation of heads to test a circuit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int

from tinylens.analysis.ablation import Ablation, AblationKind, run_ablated
from tinylens.analysis.protocol import HookedModel
from tinylens.errors import ConfigError
from tinylens.hooks import attn_z

Head = tuple[int, int]
"""(layer, head)."""


def rank_heads(score: Float[torch.Tensor, "layer head"]) -> list[Head]:
    """Every head, highest score first (ties broken by layer, then head)."""
    n_heads = score.shape[1]
    order = sorted(range(score.numel()), key=lambda i: (-float(score.flatten()[i]), i))
    return [(i // n_heads, i % n_heads) for i in order]


def ablate_heads(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    heads: Sequence[Head],
    *,
    kind: AblationKind = "mean",
    reference: Int[torch.Tensor, "ref pos"] | None = None,
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Logits with every head in ``heads`` ablated at every position (no heads: the clean run)."""
    ablations = [Ablation(hook=attn_z(layer), head=head, kind=kind) for layer, head in heads]
    if not ablations:
        with torch.no_grad():
            return model(tokens)
    return run_ablated(model, tokens, ablations, reference=reference)


def allowed_rate(
    logits: Float[torch.Tensor, "batch pos d_vocab"],
    query: Bool[torch.Tensor, "batch pos"],
    allowed: Bool[torch.Tensor, "batch pos d_vocab"],
) -> float:
    """Share of query positions whose top prediction is one of the allowed tokens there."""
    if int(query.sum()) == 0:
        raise ConfigError("allowed_rate needs at least one query position")
    top = logits.argmax(-1, keepdim=True)  # [batch, pos, 1]
    hit = allowed.gather(-1, top).squeeze(-1)  # [batch, pos]
    return float(hit[query].float().mean())
