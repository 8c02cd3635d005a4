"""Patch several heads at once: what a set of heads carries together.

A sweep (:func:`~tinylens.analysis.patching.patch_sweep`) patches one component at a time; a claim
such as "layer-0 heads 0, 1 and 2 at ``=`` carry the hundreds digits" needs them patched together,
in one run: each head's output (``attn.hook_z``) at one position of the clean run is replaced by
its value in the corrupted run.

Usage:
    metric = logit_diff(answer, contrast, position=7)
    patched = patch_heads(model, clean, corrupt, [(0, 0), (0, 1), (0, 2)], position=7, metric=metric)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import no_type_check

import torch
from jaxtyping import Int

from tinylens import hooks
from tinylens.analysis.metrics import Metric
from tinylens.analysis.protocol import HookedModel, check_token_ids
from tinylens.errors import ConfigError, TokenError


@no_type_check  # checks its own inputs with tinylens errors
def patch_heads(
    model: HookedModel,
    clean: Int[torch.Tensor, "batch pos"],
    corrupt: Int[torch.Tensor, "batch pos"],
    heads: Sequence[tuple[int, int]],
    position: int,
    metric: Metric,
) -> float:
    """The metric of the clean run with every ``(layer, head)`` in ``heads`` at ``position``
    replaced by its corrupted-run output (noising, corrupted source), all in one forward pass.

    Raises:
        ConfigError: no heads, a layer, head or position out of range.
        TokenError: prompts that are not the model's token ids, or differ in shape.
    """
    d_vocab, n_layers, n_heads = (
        int(model.cfg.d_vocab),
        int(model.cfg.n_layers),
        int(model.cfg.n_heads),
    )
    check_token_ids(clean, d_vocab, "clean prompts")
    check_token_ids(corrupt, d_vocab, "corrupted prompts")
    if clean.shape != corrupt.shape:
        raise TokenError(
            f"clean {list(clean.shape)} and corrupted {list(corrupt.shape)} differ in shape"
        )
    if not heads:
        raise ConfigError("patch_heads needs at least one (layer, head)")
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ConfigError(
                f"head ({layer}, {head}) is out of range: the model has layers 0–{n_layers - 1} and "
                f"heads 0–{n_heads - 1}"
            )
    if not -clean.shape[1] <= position < clean.shape[1]:
        raise ConfigError(f"position {position} is outside the prompts' {clean.shape[1]} positions")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    names = {hooks.attn_z(layer) for layer in by_layer}
    with torch.inference_mode():
        _, cache = model.run_with_cache(corrupt, names_filter=lambda n: n in names)

    def replace(layer: int):
        chosen = by_layer[layer]
        source = cache[hooks.attn_z(layer)]

        def hook(z: torch.Tensor, *, hook: object) -> torch.Tensor:
            patched = z.clone()
            patched[:, position, chosen] = source[:, position, chosen]
            return patched

        return hook

    with torch.inference_mode():
        logits = model.run_with_hooks(
            clean, fwd_hooks=[(hooks.attn_z(layer), replace(layer)) for layer in by_layer]
        )
    return float(metric(logits))
