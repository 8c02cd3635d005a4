"""The fast path of a patch sweep: when it applies, and every patch of one layer through the engine."""

from __future__ import annotations

from typing import get_args

import torch
from jaxtyping import Float

from tinylens.analysis.metrics import FinalTokenMetric, Metric
from tinylens.analysis.patching.engine import BaseRun, LastPositionEngine
from tinylens.analysis.patching.sites import FAST_SITES, MAX_CHUNK_ELEMENTS, Method
from tinylens.analysis.protocol import HookedModel
from tinylens.errors import ConfigError


def fast_engine(
    model: HookedModel, metric: Metric, site: str, n_pos: int, method: str
) -> LastPositionEngine | None:
    """The fast engine when it applies (and ``method`` allows it), else None."""
    if method not in get_args(Method):
        raise ConfigError(f"method {method!r} is not one of {get_args(Method)}")
    why = None
    if not isinstance(metric, FinalTokenMetric) or metric.position not in (-1, n_pos - 1):
        why = "the metric must be logit_diff, answer_probability or kl_divergence of the last position"
    elif site not in FAST_SITES:
        why = f"site {site!r} is not one of {FAST_SITES}"
    if why is None and method != "hooks":
        try:
            return LastPositionEngine(model)
        except ConfigError as err:
            why = str(err)
    if method == "fast":
        raise ConfigError(f"the fast patching path does not apply: {why}; use method='hooks'")
    return None


def fast_layer(
    engine: LastPositionEngine,
    base: BaseRun,
    site: str,
    layer: int,
    base_values: torch.Tensor,
    values: torch.Tensor,
    per_position: bool,
    metric: FinalTokenMetric,
) -> Float[torch.Tensor, " variant"]:
    """Every variant of one layer through the fast engine: the residual each patch produces at its
    entry point, then only the computation it reaches. Variants in the result's row-major order."""
    batch, n_pos = values.shape[:2]
    model = engine.model
    # where the patch enters, and the residual there before patching
    if site == "resid_pre":
        stage, at, resid = "pre", layer, base.pre[layer]
    elif site in ("resid_mid", "attn_out", "head"):
        stage, at, resid = "mid", layer, base.mid[layer]
    else:  # mlp_out, resid_post: the input of the next layer
        stage, at, resid = "pre", layer + 1, base.pre[layer + 1]
    replaces = site.startswith("resid")
    n_heads = values.shape[2] if site == "head" else 1
    if site == "head":  # a head's change of the residual: its z difference through its W_O
        change = torch.einsum("bphk,hkd->bphd", values - base_values, model.W_O[layer])
    else:
        change = (values if replaces else values - base_values).unsqueeze(2)  # [batch, pos, 1, d]

    if not per_position:  # every position at once: one dense pass per head (or one)
        out = []
        for h in range(n_heads):
            full = change[:, :, h] if replaces else resid + change[:, :, h]
            logits = engine.propagate_dense(at, stage, full)
            out.append(metric.per_prompt(logits, torch.arange(batch)).mean())
        return torch.stack(out)

    n_var = n_pos * n_heads
    pos = torch.arange(n_pos).repeat_interleave(n_heads)  # variant → position
    head = torch.arange(n_heads).repeat(n_pos)  # variant → head
    delta = change[:, pos, head]  # [batch, variant, d]
    x = delta if replaces else resid[:, pos] + delta
    rows_pos = pos.repeat_interleave(batch)  # rows variant-major: row = variant · batch + prompt
    rows_prompt = torch.arange(batch).repeat(n_var)
    x = x.transpose(0, 1).flatten(0, 1)
    per_row = []
    chunk = _rows_per_chunk(engine, n_pos)
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        if at == engine.n_layers:  # after the last layer: only the last position reaches the logits
            logits = torch.where(
                (rows_pos[part] == n_pos - 1)[:, None],
                engine.logits(x[part]),
                base.final_logits[rows_prompt[part]],
            )
        else:
            logits = engine.propagate(base, at, stage, x[part], rows_pos[part], rows_prompt[part])
        per_row.append(metric.per_prompt(logits, rows_prompt[part]))
    return torch.cat(per_row).view(n_var, batch).mean(1)


def _rows_per_chunk(engine: LastPositionEngine, n_pos: int) -> int:
    """Rows per engine call, so that the keys and values it copies stay near MAX_CHUNK_ELEMENTS."""
    cfg = engine.model.cfg
    width = max(2 * int(cfg.n_heads) * int(cfg.d_head) * n_pos, int(cfg.d_vocab))
    return max(1, MAX_CHUNK_ELEMENTS // width)
