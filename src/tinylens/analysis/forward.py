"""A transformer's forward pass recomputed from its weights, one piece at a time.

Background:
    Hooks show a model's activations but cannot split what one component reads from what another
    writes: a head's query, key and value inputs share one hook, and a patch that should reach only
    the last position's query cannot be expressed as a hook edit. The component graph
    (:mod:`~tinylens.analysis.graph`), the fast patching path (:mod:`~tinylens.analysis.patching.fast`)
    and the successor score (:mod:`~tinylens.analysis.successor`) therefore recompute the model
    from its own weights. This module is that recomputation, written once: embedding, norms (the
    model's own modules), per-head queries, keys and values (``W_Q`` … ``W_O``, TransformerLens
    layout), causal attention, the MLP (the model's own module) and the unembedding.

    Supported: pre-norm decoder-only blocks with sequential attention then MLP (GPT-2 style);
    LayerNorm, RMSNorm, their parameter-free variants or no norm; learned absolute positions or
    tinylens's / ``boot_native``'s rotary positions; attention-only models; plain or gated MLPs of
    any activation. Anything else (grouped-query attention, soft-capped scores or logits,
    bidirectional or parallel blocks) raises :class:`~tinylens.errors.ConfigError` naming the
    feature, and a model whose forward pass this code does not reproduce is refused as well.

Usage:
    fwd = WeightForward(model)
    run = fwd.run(tokens)               # residuals, attention and MLP outputs of every layer
    logits = fwd.unembed(run.final)     # [batch, pos, d_vocab], equal to model(tokens)

References:
    TransformerLens ``HookedTransformer`` weight layout (``W_Q`` ``[layer, head, d_model, d_head]``);
    ``transformer_lens.model_bridge.sources.native.model`` (the ``boot_native`` model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import nn

from tinylens.analysis.protocol import WeightedModel
from tinylens.errors import ConfigError

QKV = Float[torch.Tensor, "rows head n d_head"]
"""Queries, keys or values of one layer: row, head, position, head dimension."""


@dataclass(frozen=True)
class ForwardRun:
    """Every layer's activations of one forward pass, in TransformerLens's hook layouts."""

    resid_pre: list[Float[torch.Tensor, "batch pos d_model"]]
    """The residual stream entering each layer (``blocks.L.hook_resid_pre``)."""
    resid_mid: list[Float[torch.Tensor, "batch pos d_model"]]
    """Between each layer's attention and MLP (``blocks.L.hook_resid_mid``)."""
    resid_post: list[Float[torch.Tensor, "batch pos d_model"]]
    """Leaving each layer (``blocks.L.hook_resid_post``)."""
    attn_out: list[Float[torch.Tensor, "batch pos d_model"]]
    """Each attention layer's output, bias included (``blocks.L.hook_attn_out``)."""
    mlp_out: list[Float[torch.Tensor, "batch pos d_model"]]
    """Each MLP's output (``blocks.L.hook_mlp_out``); empty for an attention-only model."""
    z: list[Float[torch.Tensor, "batch pos head d_head"]]
    """Each head's attention-weighted values, before ``W_O`` (``blocks.L.attn.hook_z``)."""
    keys: list[Float[torch.Tensor, "batch head pos d_head"]]
    """Each layer's keys, after rotary embedding where the model uses it."""
    values: list[Float[torch.Tensor, "batch head pos d_head"]]
    """Each layer's values."""

    @property
    def final(self) -> Float[torch.Tensor, "batch pos d_model"]:
        """The residual stream after the last layer, before the final norm."""
        return self.resid_post[-1]


class WeightForward:
    """The pieces of a model's forward pass, computed from its weights.

    Args:
        model: a TransformerLens model exposing its weights (see
            :class:`~tinylens.analysis.protocol.WeightedModel`).

    Raises:
        ConfigError: the model uses a feature this code does not reproduce (the message names
            it), or its forward pass differs from this one on a short probe.
    """

    def __init__(self, model: WeightedModel) -> None:
        cfg = model.cfg
        _refuse_unsupported(cfg)
        self.model = model
        self.n_layers, self.n_heads = int(cfg.n_layers), int(cfg.n_heads)
        self.d_head = int(cfg.d_head)
        self.has_mlp = not getattr(cfg, "attn_only", False) and bool(getattr(cfg, "d_mlp", 0))
        self.rotary = getattr(cfg, "positional_embedding_type", "standard") == "rotary"
        if self.rotary and not hasattr(original(model.blocks[0].attn), "rotary"):
            raise ConfigError(
                "forward-from-weights analyses support rotary positions only for models built with "
                "boot_native (tinylens's own); this model's attention is "
                f"{type(original(model.blocks[0].attn)).__name__}"
            )
        use_scale = getattr(cfg, "use_attn_scale", True)
        scale = float(getattr(cfg, "attn_scale", -1.0))
        self.attn_scale = (scale if scale > 0 else math.sqrt(self.d_head)) if use_scale else 1.0
        self._check_equals_model()

    def _check_equals_model(self) -> None:
        """Refuse a model this recomputation does not reproduce (post-norm blocks, attention
        scaled per layer, …): one short forward pass of both must agree."""
        n_ctx = int(getattr(self.model.cfg, "n_ctx", 8) or 8)
        rng = torch.Generator().manual_seed(0)
        probe = torch.randint(0, int(self.model.cfg.d_vocab), (2, min(6, n_ctx)), generator=rng)
        training = self.model.training
        self.model.eval()  # dropout would make two passes differ; the caller's mode comes back
        try:
            with torch.no_grad():
                ours, theirs = self.unembed(self.run(probe).final), self.model(probe)
        finally:
            self.model.train(training)
        gap = float((ours - theirs).abs().max())
        scale = float(theirs.abs().max()) or 1.0
        if not gap <= 1e-4 * max(1.0, scale):
            raise ConfigError(
                "graph analyses do not reproduce this model's forward pass (largest logit gap "
                f"{gap:.3g}); they support pre-norm GPT-2-style blocks. Use the hook-based "
                "patching (patch_sweep(..., method='hooks')) for this model"
            )

    # --- pieces ----------------------------------------------------------------------------------

    def embed(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_model"]:
        """Token embedding plus learned positions (rotary models add positions in attention)."""
        x = self.model.W_E[tokens]
        if not self.rotary:
            x = x + self.model.W_pos[: tokens.shape[1]]
        return x

    def norm(self, layer: int, name: str, x: torch.Tensor) -> torch.Tensor:
        """Block ``layer``'s norm ``name`` (``ln1`` before attention, ``ln2`` before the MLP)."""
        module = getattr(self.model.blocks[layer], name, None)
        return x if module is None else original(module)(x)

    def qkv(
        self,
        layer: int,
        x: Float[torch.Tensor, "rows n d_model"],
        positions: Int[torch.Tensor, "rows n"] | None = None,
    ) -> tuple[QKV, QKV, QKV]:
        """Queries, keys, values of residuals ``x`` (normed here); ``positions`` place rotary
        embeddings (None: 0 … n − 1)."""
        m = self.model
        normed = self.norm(layer, "ln1", x)
        q = torch.einsum("rnm,hmd->rhnd", normed, m.W_Q[layer]) + m.b_Q[layer][None, :, None]
        k = torch.einsum("rnm,hmd->rhnd", normed, m.W_K[layer]) + m.b_K[layer][None, :, None]
        v = torch.einsum("rnm,hmd->rhnd", normed, m.W_V[layer]) + m.b_V[layer][None, :, None]
        return (*self.rope(layer, q, k, positions), v)

    def qkv_per_head(
        self,
        layer: int,
        xq: Float[torch.Tensor, "head rows n d_model"],
        xk: Float[torch.Tensor, "head rows n d_model"],
        xv: Float[torch.Tensor, "head rows n d_model"],
    ) -> tuple[QKV, QKV, QKV]:
        """Queries, keys, values when each head reads its own (already normed) q, k and v inputs."""
        m = self.model
        q = torch.einsum("hbpm,hmd->bhpd", xq, m.W_Q[layer]) + m.b_Q[layer][None, :, None]
        k = torch.einsum("hbpm,hmd->bhpd", xk, m.W_K[layer]) + m.b_K[layer][None, :, None]
        v = torch.einsum("hbpm,hmd->bhpd", xv, m.W_V[layer]) + m.b_V[layer][None, :, None]
        return (*self.rope(layer, q, k, None), v)

    def rope(
        self, layer: int, q: QKV, k: QKV, positions: Int[torch.Tensor, "rows n"] | None
    ) -> tuple[QKV, QKV]:
        """Queries and keys with the model's rotary embedding applied (unchanged without one)."""
        if not self.rotary:
            return q, k
        return original(self.model.blocks[layer].attn).rotary.apply_rope(q, k, position_ids=positions)

    def attend(
        self,
        q: Float[torch.Tensor, "rows head query d_head"],
        k: Float[torch.Tensor, "rows head key d_head"],
        v: Float[torch.Tensor, "rows head key d_head"],
        *,
        causal: bool = True,
    ) -> Float[torch.Tensor, "rows head query d_head"]:
        """Attention-weighted values ``z``. ``causal=False`` lets every query see every key: right
        for queries that all sit at (or after) the last key's position."""
        scores = q @ k.transpose(-1, -2) / self.attn_scale  # [rows, head, query, key]
        if causal:
            n = scores.shape[-1]
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
            scores = scores.masked_fill(mask, float("-inf"))
        return scores.softmax(-1) @ v

    def attention_output(
        self, layer: int, z: Float[torch.Tensor, "rows head n d_head"]
    ) -> Float[torch.Tensor, "rows n d_model"]:
        """The attention layer's output: every head through ``W_O``, summed, plus ``b_O``."""
        return torch.einsum("rhnd,hdm->rnm", z, self.model.W_O[layer]) + self.model.b_O[layer]

    def head_outputs(
        self, layer: int, z: Float[torch.Tensor, "rows head n d_head"]
    ) -> Float[torch.Tensor, "head rows n d_model"]:
        """Each head's own output ``z_h W_O[h]`` (no bias: ``b_O`` belongs to no head)."""
        return torch.einsum("bhpd,hdm->hbpm", z, self.model.W_O[layer])

    def mlp(
        self, layer: int, x: Float[torch.Tensor, "*rows d_model"]
    ) -> Float[torch.Tensor, "*rows d_model"]:
        """The MLP's output on residual ``x`` (normed here). Only for models with MLPs."""
        return original(self.model.blocks[layer].mlp)(self.norm(layer, "ln2", x))

    def unembed(self, x: Float[torch.Tensor, "*rows d_model"]) -> Float[torch.Tensor, "*rows d_vocab"]:
        """Logits of a final residual: the final norm, then ``W_U`` and ``b_U``."""
        final = getattr(self.model, "ln_final", None)
        normed = x if final is None else original(final)(x)
        return normed @ self.model.W_U + self.model.b_U

    # --- a whole pass ----------------------------------------------------------------------------

    def run(self, tokens: Int[torch.Tensor, "batch pos"]) -> ForwardRun:
        """The plain forward pass, keeping every layer's activations."""
        x = self.embed(tokens)
        out = ForwardRun([], [], [], [], [], [], [], [])
        for layer in range(self.n_layers):
            out.resid_pre.append(x)
            q, k, v = self.qkv(layer, x)
            z = self.attend(q, k, v)
            attn = self.attention_output(layer, z)
            out.z.append(z.transpose(1, 2))
            out.keys.append(k)
            out.values.append(v)
            out.attn_out.append(attn)
            x = x + attn
            out.resid_mid.append(x)
            if self.has_mlp:
                mlp = self.mlp(layer, x)
                out.mlp_out.append(mlp)
                x = x + mlp
            out.resid_post.append(x)
        return out


def original(component: Any) -> nn.Module:
    """The plain torch module behind a bridge component (the component itself if it is one)."""
    return getattr(component, "original_component", component)


def _refuse_unsupported(cfg: Any) -> None:
    """Raise for a config feature the recomputation leaves out, naming it."""
    n_heads = int(cfg.n_heads)
    problems = {
        "parallel attention and MLP blocks (parallel_attn_mlp)": getattr(
            cfg, "parallel_attn_mlp", False
        ),
        f"grouped-query attention (n_key_value_heads={getattr(cfg, 'n_key_value_heads', None)})": (
            getattr(cfg, "n_key_value_heads", None) not in (None, n_heads)
        ),
        "soft-capped attention scores (attn_scores_soft_cap)": (
            float(getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0
        ),
        "soft-capped output logits (output_logits_soft_cap)": (
            float(getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) > 0
        ),
        f"{getattr(cfg, 'attention_dir', 'causal')} attention (attention_dir)": (
            getattr(cfg, "attention_dir", "causal") != "causal"
        ),
    }
    positions = getattr(cfg, "positional_embedding_type", "standard")
    problems[f"positional embeddings of type {positions!r}"] = positions not in ("standard", "rotary")
    for feature, present in problems.items():
        if present:
            raise ConfigError(
                f"forward-from-weights analyses (component graph, circuits, fast patching, "
                f"successor scores) do not support {feature}; use hook-based methods such as "
                "patch_sweep(..., method='hooks') for this model"
            )
