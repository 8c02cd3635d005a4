"""The model surface every analysis method relies on: TransformerLens hooks, nothing more.

Typed as a Protocol so the same methods run on a ``TransformerBridge`` (ours or a pretrained one),
a legacy ``HookedTransformer`` or any structural match, as TransformerLens's own ``model_protocol``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

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
