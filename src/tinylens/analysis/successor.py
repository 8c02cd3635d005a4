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

from tinylens.analysis.graph import ComponentGraph
from tinylens.errors import ConfigError


def effective_embedding(
    graph: ComponentGraph, tokens: Int[torch.Tensor, " token"]
) -> Float[torch.Tensor, "token d_model"]:
    """``W_E[t]`` plus the first MLP's output on it (the attention of layer 0 left out)."""
    model = graph.model
    x = model.W_E[tokens]
    if graph.has_mlp:
        block = model.blocks[0]
        ln2 = getattr(block, "ln2", None)
        normed = x if ln2 is None else getattr(ln2, "original_component", ln2)(x)
        x = x + getattr(block.mlp, "original_component", block.mlp)(normed)
    return x


def successor_scores(
    graph: ComponentGraph, families: Sequence[torch.Tensor]
) -> Float[torch.Tensor, "layer head"]:
    """Per head, the share of members whose OV output ranks the next member first in its family.

    ``families``: per family, its members' token ids in order (1-d tensors of any lengths ≥ 2).
    """
    if not families or any(len(f) < 2 for f in families):
        raise ConfigError("successor scores need families of at least two members each")
    model = graph.model
    scores = torch.zeros(graph.n_layers, graph.n_heads)
    total = sum(len(f) - 1 for f in families)
    with torch.no_grad():
        for members in families:
            x = effective_embedding(graph, members)  # [member, d_model]
            for layer in range(graph.n_layers):
                ln1 = getattr(model.blocks[layer], "ln1", None)
                normed = x if ln1 is None else getattr(ln1, "original_component", ln1)(x)
                # [head, member, d_model]: each head's OV image of each member
                ov = torch.einsum("mn,hnd,hde->hme", normed, model.W_V[layer], model.W_O[layer])
                final = getattr(model, "ln_final", None)
                out = ov if final is None else getattr(final, "original_component", final)(ov)
                logits = out @ model.W_U[:, members]  # [head, member, member]
                best = logits[:, :-1].argmax(-1)  # [head, member − 1]
                hits = best == torch.arange(1, len(members))
                scores[layer] += hits.sum(-1).float()
    return scores / total
