"""Attention patterns averaged over a set of inputs.

Usage:
    patterns = mean_attention(model, tokens)   # [layer, head, query_pos, key_pos]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int

from tinylens.analysis.protocol import HookedModel
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
