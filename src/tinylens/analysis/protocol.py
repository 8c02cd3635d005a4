"""The model surface every analysis method relies on: TransformerLens hooks, nothing more.

Typed as a Protocol so the same methods run on a ``TransformerBridge`` (ours or a pretrained one),
a legacy ``HookedTransformer`` or any structural match, as TransformerLens's own ``model_protocol``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from tinylens.errors import TokenError

HookFn = Callable[..., torch.Tensor | None]
"""A TransformerLens hook: ``fn(activation, *, hook) -> new activation or None``."""


@runtime_checkable
class HookedModel(Protocol):
    """A model with TransformerLens hook points."""

    @property
    def cfg(self) -> Any:
        """Its TransformerLens config (``n_layers``, ``n_heads``, ``d_model``, …)."""

    @property
    def hook_dict(self) -> dict[str, Any]:
        """Hook name → hook point."""

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def run_with_hooks(
        self, input: torch.Tensor, fwd_hooks: Sequence[tuple[str, HookFn]] = ..., **kwargs: Any
    ) -> torch.Tensor: ...

    def run_with_cache(self, input: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]: ...


def check_token_ids(tokens: object, d_vocab: int, name: str = "tokens") -> None:
    """Raise :class:`TokenError` unless ``tokens`` is a 2-d integer tensor of ids below ``d_vocab``."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise TokenError(f"{name} must be a 2-d integer tensor [batch, pos]")
    if tokens.numel() and not (int(tokens.min()) >= 0 and int(tokens.max()) < d_vocab):
        raise TokenError(
            f"{name} hold ids outside the vocabulary 0–{d_vocab - 1} "
            f"(min {int(tokens.min())}, max {int(tokens.max())})"
        )
