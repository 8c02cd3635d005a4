"""The hook path of a patch sweep: every patch of one layer as a slice of one batched run."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from tinylens.analysis.metrics import Metric
from tinylens.analysis.patching.sites import MAX_CHUNK_ELEMENTS
from tinylens.analysis.protocol import HookedModel


def slots(n_pos: int, n_heads: int | None, per_position: bool) -> Bool[torch.Tensor, "variant pos head"]:
    """One boolean mask over (position, head) per patch variant, in the result's row-major order."""
    n_h = n_heads or 1
    if per_position:
        eye = torch.eye(n_pos * n_h, dtype=torch.bool)
        return eye.view(n_pos * n_h, n_pos, n_h)
    masks = torch.zeros(n_h, n_pos, n_h, dtype=torch.bool)
    masks[torch.arange(n_h), :, torch.arange(n_h)] = True
    return masks


def run_layer(
    model: HookedModel,
    resid: Float[torch.Tensor, "batch pos d_model"],
    layer: int,
    hook: str,
    values: torch.Tensor,
    masks: Bool[torch.Tensor, "variant pos head"],
    metric: Metric,
) -> Float[torch.Tensor, " variant"]:
    """The metric of every patch variant of ``layer``, in chunks of one forward pass each; each
    pass starts from the cached residual ``resid`` entering the layer (``start_at_layer``)."""
    batch, n_pos, d_model = resid.shape
    width = max(d_model, int(model.cfg.d_vocab), int(getattr(model.cfg, "d_mlp", 0) or 0))
    chunk = max(1, MAX_CHUNK_ELEMENTS // (batch * n_pos * width))
    has_head = values.ndim == 4
    out = []
    for start in range(0, len(masks), chunk):
        part = masks[start : start + chunk]  # [v, pos, head]
        n_var = len(part)
        # [v, 1, pos, head, 1] for head sites, [v, 1, pos, 1] otherwise: broadcasts over batch, width.
        where = part[:, None, :, :, None] if has_head else part[:, None, :, 0, None]

        def patch(act: torch.Tensor, *, hook: object, where=where, n_var=n_var) -> torch.Tensor:
            act = act.view(n_var, batch, *act.shape[1:])
            return torch.where(where, values.unsqueeze(0), act).flatten(0, 1)

        rows = resid.repeat(n_var, 1, 1)
        with torch.inference_mode():
            logits = model.run_with_hooks(rows, start_at_layer=layer, fwd_hooks=[(hook, patch)])
        logits = logits.view(n_var, batch, *logits.shape[1:])
        out.extend(float(metric(logits[v])) for v in range(n_var))
    return torch.tensor(out, dtype=torch.float64)  # python floats: no rounding here
