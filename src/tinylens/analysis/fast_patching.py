"""The fast path of activation patching: recompute only what a patch can reach.

Background:
    A patch at layer l, position p changes nothing before layer l and nothing at positions before
    p. Until the next attention layer it changes only position p itself (an MLP works position by
    position); the final layer matters only at the position the metric reads. So when the metric
    reads the last position, a patch in the last two layers costs a few vector operations at one
    position per variant: for a 2-layer model a whole layer × position × head sweep costs about as
    much as a few forward passes of the batch, where TransformerLens's ``patching`` module runs one
    forward pass per patch. A patch further down reaches every later position through the layers in
    between, which are recomputed in full (all positions), so deep models gain less.

    The engine runs the model from its own weights (the TransformerLens ``W_Q`` … ``W_O`` layout) and
    calls the model's own norm and MLP modules, like :class:`~tinylens.analysis.graph.ComponentGraph`;
    the sweeps are tested equal to TransformerLens's patching functions.

Usage (through :func:`tinylens.analysis.patching.patch_sweep`, which picks it when it applies):
    engine = LastPositionEngine(model)
    base = engine.forward(tokens)                   # residuals, keys and values of every layer
    logits = engine.propagate(base, layer, "mid", x, pos, prompt)   # [rows, d_vocab]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int

from tinylens.analysis.graph import ComponentGraph, _norm, _original
from tinylens.analysis.protocol import HookedModel

Stage = Literal["pre", "mid"]
"""Where a change enters layer l: before its attention (``pre``) or before its MLP (``mid``)."""


@dataclass
class BaseRun:
    """Everything the engine reuses from the unpatched run, per layer."""

    pre: list[torch.Tensor]
    """Residual stream before each layer, ``[batch, pos, d_model]``; ``pre[n_layers]`` is the final."""
    mid: list[torch.Tensor]
    """Residual stream between each layer's attention and MLP."""
    keys: list[torch.Tensor]
    """Keys of each layer, ``[batch, head, pos, d_head]`` (after rotary, where used)."""
    values: list[torch.Tensor]
    final_logits: Float[torch.Tensor, "batch d_vocab"]
    """Logits at the last position."""


class LastPositionEngine:
    """Forward passes of a model that return the last position's logits only, starting from a
    change of the residual stream at one position per row (or at every position)."""

    def __init__(self, model: HookedModel) -> None:
        self.graph = ComponentGraph(model)  # checks the architecture is one we can run
        self.model = model
        self.n_layers = self.graph.n_layers

    # --- pieces of one layer ---------------------------------------------------------------------

    def _qkv(
        self, layer: int, x: torch.Tensor, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values ``[rows, head, n, d_head]`` of residuals ``x`` ``[rows, n, d]``.

        ``positions`` (``[rows, n]``) place rotary embeddings; None means 0 … n − 1.
        """
        m = self.model
        normed = _norm(m.blocks[layer], "ln1", x)
        q = torch.einsum("rnm,hmd->rhnd", normed, m.W_Q[layer]) + m.b_Q[layer][None, :, None]
        k = torch.einsum("rnm,hmd->rhnd", normed, m.W_K[layer]) + m.b_K[layer][None, :, None]
        v = torch.einsum("rnm,hmd->rhnd", normed, m.W_V[layer]) + m.b_V[layer][None, :, None]
        if self.graph.rotary:
            q, k = _original(m.blocks[layer].attn).rotary.apply_rope(q, k, position_ids=positions)
        return q, k, v

    def _attend(
        self,
        layer: int,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        query_pos: int | None,
    ) -> torch.Tensor:
        """Attention output ``[rows, n, d_model]`` (bias included) of queries over all keys; a
        causal mask unless the queries sit at the last position (``query_pos``), which sees all."""
        scores = q @ keys.transpose(-1, -2) / self.graph.attn_scale
        if query_pos is None:
            n = scores.shape[-1]
            causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
            scores = scores.masked_fill(causal, float("-inf"))
        z = scores.softmax(-1) @ values  # [rows, head, n, d_head]
        return torch.einsum("rhnd,hdm->rnm", z, self.model.W_O[layer]) + self.model.b_O[layer]

    def _mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus the MLP's output (``x`` itself in an attention-only model)."""
        if not self.graph.has_mlp:
            return x
        block = self.model.blocks[layer]
        return x + _original(block.mlp)(_norm(block, "ln2", x))

    def _logits(self, x: Float[torch.Tensor, "rows d_model"]) -> Float[torch.Tensor, "rows d_vocab"]:
        m = self.model
        final = _original(m.ln_final)(x) if hasattr(m, "ln_final") else x
        return final @ m.W_U + m.b_U

    # --- whole passes ----------------------------------------------------------------------------

    def forward(self, tokens: Int[torch.Tensor, "batch pos"]) -> BaseRun:
        """The unpatched run, keeping what patched runs reuse."""
        x = self.model.W_E[tokens]
        if not self.graph.rotary:
            x = x + self.model.W_pos[: tokens.shape[1]]
        pre, mid, keys, values = [], [], [], []
        for layer in range(self.n_layers):
            pre.append(x)
            q, k, v = self._qkv(layer, x, None)
            keys.append(k)
            values.append(v)
            x = x + self._attend(layer, q, k, v, None)
            mid.append(x)
            x = self._mlp(layer, x)
        pre.append(x)
        return BaseRun(pre, mid, keys, values, self._logits(x[:, -1]))

    def propagate(
        self,
        base: BaseRun,
        layer: int,
        stage: Stage,
        x: Float[torch.Tensor, "rows d_model"],
        pos: Int[torch.Tensor, " rows"],
        prompt: Int[torch.Tensor, " rows"],
    ) -> Float[torch.Tensor, "rows d_vocab"]:
        """Last-position logits when row r's residual at (``layer``, ``stage``) equals ``x[r]`` at
        position ``pos[r]`` and prompt ``prompt[r]``'s unpatched value everywhere else."""
        last = base.pre[0].shape[1] - 1
        if stage == "mid":
            x = self._mlp(layer, x)
            layer += 1
        if layer == self.n_layers:  # past the last layer: only a change at the last position shows
            return torch.where((pos == last)[:, None], self._logits(x), base.final_logits[prompt])
        if layer < self.n_layers - 1:  # a middle layer's attention spreads the change onwards
            full = base.pre[layer][prompt].clone()
            full[torch.arange(len(x)), pos] = x
            return self.propagate_dense(layer, "pre", full)
        # the last layer: the changed position's key and value, and the last position's query
        keys = base.keys[layer][prompt].clone()
        values = base.values[layer][prompt].clone()
        _, k, v = self._qkv(layer, x[:, None], pos[:, None])
        rows = torch.arange(len(x))
        keys[rows, :, pos] = k[:, :, 0]
        values[rows, :, pos] = v[:, :, 0]
        query_in = torch.where((pos == last)[:, None], x, base.pre[layer][prompt, last])
        q, _, _ = self._qkv(layer, query_in[:, None], torch.full_like(pos, last)[:, None])
        out = query_in + self._attend(layer, q, keys, values, last)[:, 0]
        return self._logits(self._mlp(layer, out))

    def propagate_dense(
        self, layer: int, stage: Stage, x: Float[torch.Tensor, "rows pos d_model"]
    ) -> Float[torch.Tensor, "rows d_vocab"]:
        """Last-position logits when the whole residual at (``layer``, ``stage``) equals ``x``
        (``layer`` = n_layers: ``x`` is the final residual)."""
        last = x.shape[1] - 1
        if stage == "mid":
            x = self._mlp(layer, x)
            layer += 1
        for j in range(layer, self.n_layers):
            q, k, v = self._qkv(j, x, None)
            if j == self.n_layers - 1:  # the last position is all the metric reads
                out = x[:, last] + self._attend(j, q[:, :, last:], k, v, last)[:, 0]
                return self._logits(self._mlp(j, out))
            x = self._mlp(j, x + self._attend(j, q, k, v, None))
        return self._logits(x[:, last])
