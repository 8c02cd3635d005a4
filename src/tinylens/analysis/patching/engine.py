"""The fast path's engine: last-position logits after a change of the residual stream.

Background:
    A patch at layer l, position p changes nothing before layer l and nothing at positions before
    p. Until the next attention layer it changes only position p itself (an MLP works position by
    position); the final layer matters only at the position the metric reads. So when the metric
    reads the last position, a patch in the last two layers costs a few vector operations at one
    position per variant: for a 2-layer model a whole layer × position × head sweep costs about as
    much as a few forward passes of the batch, where TransformerLens's ``patching`` module runs one
    forward pass per patch. A patch further down reaches every later position through the layers in
    between, which are recomputed in full (all positions), so deep models gain less.

    The engine runs the model from its weights through
    :class:`~tinylens.analysis.forward.WeightForward`; the sweeps built on it are tested equal to
    TransformerLens's patching functions.

Usage (through :func:`~tinylens.analysis.patching.patch_sweep`, which picks it when it applies):
    engine = LastPositionEngine(model)
    base = engine.forward(tokens)                   # residuals, keys and values of every layer
    logits = engine.propagate(base, layer, "mid", x, pos, prompt)   # [rows, d_vocab]

References:
    ``transformer_lens.patching`` (one forward pass per patch: the reference the sweeps are tested
    against).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int

from tinylens.analysis.forward import QKV, WeightForward
from tinylens.analysis.protocol import WeightedModel

Stage = Literal["pre", "mid"]
"""Where a change enters layer l: before its attention (``pre``) or before its MLP (``mid``)."""


@dataclass
class BaseRun:
    """Everything the engine reuses from the unpatched run, per layer."""

    pre: list[Float[torch.Tensor, "batch pos d_model"]]
    """Residual stream before each layer; ``pre[n_layers]`` is the final one."""
    mid: list[Float[torch.Tensor, "batch pos d_model"]]
    """Residual stream between each layer's attention and MLP."""
    keys: list[Float[torch.Tensor, "batch head pos d_head"]]
    """Keys of each layer (after rotary, where used)."""
    values: list[Float[torch.Tensor, "batch head pos d_head"]]
    """Values of each layer."""
    final_logits: Float[torch.Tensor, "batch d_vocab"]
    """Logits at the last position."""


class LastPositionEngine:
    """Forward passes of a model that return the last position's logits only, starting from a
    change of the residual stream at one position per row (or at every position)."""

    def __init__(self, model: WeightedModel) -> None:
        self.weights = WeightForward(model)  # checks the architecture is one we can run
        self.model = model
        self.n_layers = self.weights.n_layers

    def _qkv(self, layer: int, x: torch.Tensor, positions: torch.Tensor | None) -> tuple[QKV, QKV, QKV]:
        return self.weights.qkv(layer, x, positions)

    def _attend(
        self,
        layer: int,
        q: Float[torch.Tensor, "rows head query d_head"],
        keys: Float[torch.Tensor, "rows head key d_head"],
        values: Float[torch.Tensor, "rows head key d_head"],
        query_pos: int | None,
    ) -> Float[torch.Tensor, "rows query d_model"]:
        """Attention output (bias included) of queries over all keys; causal unless the queries sit
        at the last position (``query_pos``), which sees every key."""
        z = self.weights.attend(q, keys, values, causal=query_pos is None)
        return self.weights.attention_output(layer, z)

    def _mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus the MLP's output (``x`` itself in an attention-only model)."""
        return x + self.weights.mlp(layer, x) if self.weights.has_mlp else x

    def logits(self, x: Float[torch.Tensor, "rows d_model"]) -> Float[torch.Tensor, "rows d_vocab"]:
        """Logits of final residuals."""
        return self.weights.unembed(x)

    def forward(self, tokens: Int[torch.Tensor, "batch pos"]) -> BaseRun:
        """The unpatched run, keeping what patched runs reuse."""
        run = self.weights.run(tokens)
        final = run.final
        return BaseRun(
            [*run.resid_pre, final], run.resid_mid, run.keys, run.values, self.logits(final[:, -1])
        )

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
            return torch.where((pos == last)[:, None], self.logits(x), base.final_logits[prompt])
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
        return self.logits(self._mlp(layer, out))

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
                return self.logits(self._mlp(j, out))
            x = self._mlp(j, x + self._attend(j, q, k, v, None))
        return self.logits(x[:, last])
