"""Attention patterns averaged over a set of inputs.

Usage:
    patterns = mean_attention(model, tokens)   # [layer, head, query_pos, key_pos]
    mass = attention_mass(model, tokens, query, {"valid": valid_keys})["valid"]   # [layer, head]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Bool, Float, Int

from tinylens.analysis.protocol import HookedModel
from tinylens.errors import ConfigError
from tinylens.hooks import attn_pattern, check_hook_names


@torch.no_grad()
def mean_attention(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    layers: Sequence[int] | None = None,
    batch_size: int = 512,
) -> Float[torch.Tensor, "layer head query key"]:
    """Each head's attention probabilities, averaged over the inputs (rows sum to 1)."""
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = [attn_pattern(layer) for layer in layers]
    check_hook_names(model, names)
    total: torch.Tensor | None = None
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=lambda n: n in names)
        summed = torch.stack([cache[n].sum(0) for n in names])  # [layer, head, q, k]
        total = summed if total is None else total + summed
    assert total is not None
    return total / tokens.shape[0]


@torch.no_grad()
def attention_mass(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    query: Bool[torch.Tensor, "batch pos"],
    key_sets: Mapping[str, Bool[torch.Tensor, "batch query key"]],
    *,
    per_key: bool = False,
    batch_size: int = 128,
) -> dict[str, Float[torch.Tensor, "layer head"]]:
    """Each head's attention probability on each key set, averaged over the query positions.

    Args:
        tokens: the inputs.
        query: which (input, position) pairs to average over.
        key_sets: per name, which keys count for each query (e.g. tokens naming a valid move).
        per_key: divide each query's mass by the size of its key set (the mean probability per
            key), averaging over the queries whose set is not empty. Use it to compare sets of
            different sizes: uniform attention then scores every set alike.

    Returns:
        Per name, ``[layer, head]``: mean attention mass (0–1) a query puts on its key set, or
        with ``per_key`` the mean probability of one key of the set.
    """
    names = [attn_pattern(layer) for layer in range(model.cfg.n_layers)]
    check_hook_names(model, names)
    totals = {key: torch.zeros(model.cfg.n_layers, model.cfg.n_heads) for key in key_sets}
    counts = dict.fromkeys(key_sets, 0)
    for start in range(0, tokens.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        _, cache = model.run_with_cache(tokens[rows], names_filter=lambda n: n in names)
        patterns = torch.stack([cache[n] for n in names])  # [layer, batch, head, q, k]
        for key, mask in key_sets.items():
            selected = (mask[rows] & query[rows, :, None]).to(patterns.dtype)  # [batch, q, k]
            size = selected.sum(-1)  # [batch, q]
            if per_key:
                selected = selected / size.clamp_min(1)[:, :, None]
                counts[key] += int((size > 0).sum())
            else:
                counts[key] += int(query[rows].sum())
            totals[key] += torch.einsum("lbhqk,bqk->lh", patterns, selected)
    empty = [key for key, count in counts.items() if count == 0]
    if empty:
        raise ConfigError(f"attention_mass: no query position has keys in {empty}")
    return {key: total / counts[key] for key, total in totals.items()}
