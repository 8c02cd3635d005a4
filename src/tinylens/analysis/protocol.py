"""The model surface analysis methods rely on: TransformerLens hooks, and for some the weights.

Typed as Protocols so the same methods run on a ``TransformerBridge`` (ours or a pretrained one),
a legacy ``HookedTransformer`` or any structural match, as TransformerLens's own
``model_protocol``. Hook-based methods (patching, ablation, probes, attention) need
:class:`HookedModel`; methods that recompute the forward pass from the weights (the component
graph, circuits, the fast patching path, successor scores) need :class:`WeightedModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import nn

from tinylens.errors import TokenError

HookFn = Callable[..., torch.Tensor | None]
"""A TransformerLens hook: ``fn(activation, *, hook) -> new activation or None``."""


class ModelSettings(Protocol):
    """The config fields analyses read (TransformerLens's ``cfg``; optional ones via ``getattr``).

    Read when present, with these defaults otherwise: ``d_mlp`` (0), ``attn_only`` (False),
    ``n_ctx``, ``positional_embedding_type`` ("standard"), ``use_attn_scale`` (True),
    ``attn_scale`` (−1: √d_head), ``parallel_attn_mlp``, ``n_key_value_heads``,
    ``attn_scores_soft_cap``, ``output_logits_soft_cap`` and ``attention_dir`` (the last five only
    to refuse what the forward-from-weights code does not reproduce).
    """

    @property
    def n_layers(self) -> int: ...
    @property
    def n_heads(self) -> int: ...
    @property
    def d_model(self) -> int: ...
    @property
    def d_head(self) -> int: ...
    @property
    def d_vocab(self) -> int: ...


@runtime_checkable
class HookedModel(Protocol):
    """A model with TransformerLens hook points."""

    @property
    def cfg(self) -> Any:
        """Its TransformerLens config, read as :class:`ModelSettings`."""

    @property
    def hook_dict(self) -> dict[str, Any]:
        """Hook name → hook point."""

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def run_with_hooks(
        self, input: torch.Tensor, fwd_hooks: Sequence[tuple[str, HookFn]] = ..., **kwargs: Any
    ) -> torch.Tensor: ...

    def run_with_cache(self, input: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]: ...


@runtime_checkable
class WeightedModel(HookedModel, Protocol):
    """A hooked model whose weights the forward-from-weights code reads (TransformerLens layout).

    Besides the weights below it reads ``blocks[L].ln1``, ``blocks[L].ln2``, ``blocks[L].mlp`` and
    ``ln_final`` (when present) and calls them as modules (through ``original_component`` on a
    bridge), so any norm or MLP variant runs as the model runs it. Learned positions are read
    from ``W_pos`` (``[n_ctx, d_model]``), which a rotary model lacks; a rotary model's
    ``blocks[L].attn`` must carry a ``rotary`` module with ``apply_rope(q, k, position_ids=...)``.
    """

    @property
    def blocks(self) -> Sequence[nn.Module]:
        """The transformer blocks, in order."""

    # the names are TransformerLens's (its weights' symbols in the papers), hence not lowercase
    @property
    def W_E(self) -> Float[torch.Tensor, "d_vocab d_model"]: ...  # noqa: N802
    @property
    def W_Q(self) -> Float[torch.Tensor, "layer head d_model d_head"]: ...  # noqa: N802
    @property
    def W_K(self) -> Float[torch.Tensor, "layer head d_model d_head"]: ...  # noqa: N802
    @property
    def W_V(self) -> Float[torch.Tensor, "layer head d_model d_head"]: ...  # noqa: N802
    @property
    def W_O(self) -> Float[torch.Tensor, "layer head d_head d_model"]: ...  # noqa: N802
    @property
    def b_Q(self) -> Float[torch.Tensor, "layer head d_head"]: ...  # noqa: N802
    @property
    def b_K(self) -> Float[torch.Tensor, "layer head d_head"]: ...  # noqa: N802
    @property
    def b_V(self) -> Float[torch.Tensor, "layer head d_head"]: ...  # noqa: N802
    @property
    def b_O(self) -> Float[torch.Tensor, "layer d_model"]: ...  # noqa: N802
    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]: ...  # noqa: N802
    @property
    def b_U(self) -> Float[torch.Tensor, " d_vocab"]: ...  # noqa: N802


def check_token_ids(tokens: object, d_vocab: int, name: str = "tokens") -> None:
    """Raise :class:`TokenError` unless ``tokens`` is a 2-d integer tensor of ids below ``d_vocab``."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise TokenError(f"{name} must be a 2-d integer tensor [batch, pos]")
    if tokens.numel() and not (int(tokens.min()) >= 0 and int(tokens.max()) < d_vocab):
        raise TokenError(
            f"{name} hold ids outside the vocabulary 0–{d_vocab - 1} "
            f"(min {int(tokens.min())}, max {int(tokens.max())})"
        )
