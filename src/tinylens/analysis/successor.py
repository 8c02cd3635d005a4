"""Successor heads: heads whose OV circuit maps a member of an ordered family to the next member.

Background:
    Gould et al. (2023) found heads in many language models whose output-value circuit, applied to
    the (effective) embedding of "Monday", raises the logit of "Tuesday" most among the days, and
    likewise for numbers, months and letters. Lan & Barez (2023) find such a head at the heart of the
    shared sequence-continuation circuit. The score of a head here is the share of members m_i (all
    but each family's last) for which, among the family's members, ``unembed(OV(embed(m_i)))`` is
    largest at m_{i+1}. Chance is about one over the family size.

    The effective embedding is the token embedding plus what the first MLP adds to it (Gould et
    al.'s choice: in GPT-2 the first MLP acts as an extended embedding); the head's OV map applies its
    own layer norm first, and the final norm comes before the unembedding, as in the forward pass.

Usage:
    scores = successor_scores(model, [numeral_ids, month_ids])    # [layer, head] in [0, 1]

References:
    Gould, Ong, Ogden & Conmy, "Successor Heads", 2023 (arXiv:2312.09230); Lan & Barez 2023.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int

from tinylens.analysis.forward import WeightForward, original
from tinylens.analysis.protocol import WeightedModel
from tinylens.errors import ConfigError


def effective_embedding(
    weights: WeightForward, tokens: Int[torch.Tensor, " token"]
) -> Float[torch.Tensor, "token d_model"]:
    """``W_E[t]`` plus the first MLP's output on it (the attention of layer 0 left out)."""
    x = weights.model.W_E[tokens]
    if weights.has_mlp:
        x = x + weights.mlp(0, x)
    return x


def successor_scores(
    model: WeightedModel, families: Sequence[Int[torch.Tensor, " _member"]]
) -> Float[torch.Tensor, "layer head"]:
    """Per head, the share of members whose OV output ranks the next member first in its family.

    Args:
        model: a TransformerLens model the forward-from-weights code supports (see
            :class:`~tinylens.analysis.forward.WeightForward`).
        families: per family, its members' token ids in order (1-d tensors of any lengths ≥ 2;
            the lengths may differ, hence the unchecked `_member` axis).

    Returns:
        Scores in [0, 1]; chance is about one over the family size.
    """
    if not families or any(len(f) < 2 for f in families):
        raise ConfigError("successor scores need families of at least two members each")
    weights = WeightForward(model)
    scores = torch.zeros(weights.n_layers, weights.n_heads)
    total = sum(len(f) - 1 for f in families)
    with torch.no_grad():
        for members in families:
            x = effective_embedding(weights, members)  # [member, d_model]
            for layer in range(weights.n_layers):
                normed = weights.norm(layer, "ln1", x)
                # [head, member, d_model]: each head's OV image of each member
                ov = torch.einsum("mn,hnd,hde->hme", normed, model.W_V[layer], model.W_O[layer])
                final = getattr(model, "ln_final", None)
                out = ov if final is None else original(final)(ov)
                logits = out @ model.W_U[:, members]  # [head, member, member]
                best = logits[:, :-1].argmax(-1)  # [head, member − 1]
                hits = best == torch.arange(1, len(members))
                scores[layer] += hits.sum(-1).float()
    return scores / total
