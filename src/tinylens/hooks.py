"""TransformerLens hook names, built by small functions instead of string shorthand.

Analyses take hook names; these functions spell them so a typo is a NameError, not a silent miss, and
:func:`check_hook_names` turns an unknown name into a clear error that lists close valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from tinylens.errors import UnknownNameError


@runtime_checkable
class HasHookDict(Protocol):
    """Anything with TransformerLens's ``hook_dict`` (a bridge, a HookedRootModule)."""

    @property
    def hook_dict(self) -> dict[str, object]: ...


def hook_embed() -> str:
    return "hook_embed"


def hook_pos_embed() -> str:
    return "hook_pos_embed"


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def mlp_pre(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_pre"


def mlp_post(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def attn_q(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_q"


def attn_k(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_k"


def attn_v(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_v"


def attn_z(layer: int) -> str:
    """Per-head attention output before W_O, ``[batch, pos, head, d_head]``."""
    return f"blocks.{layer}.attn.hook_z"


def attn_pattern(layer: int) -> str:
    """Attention probabilities, ``[batch, head, query_pos, key_pos]``."""
    return f"blocks.{layer}.attn.hook_pattern"


def attn_scores(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_attn_scores"


def ln_final_out() -> str:
    """The residual after the final norm, the unembedding's input."""
    return "ln_final.hook_out"


PER_LAYER = (
    resid_pre,
    resid_mid,
    resid_post,
    attn_out,
    mlp_out,
    mlp_pre,
    mlp_post,
    attn_q,
    attn_k,
    attn_v,
    attn_z,
    attn_pattern,
    attn_scores,
)
"""Every per-layer hook-name function above."""

GLOBAL = (hook_embed, hook_pos_embed, ln_final_out)


def all_hook_names(n_layers: int) -> list[str]:
    """Every name this module can produce for a model of ``n_layers`` layers."""
    names = [fn() for fn in GLOBAL]
    names += [fn(layer) for layer in range(n_layers) for fn in PER_LAYER]
    return names


def check_hook_names(model: HasHookDict, names: Iterable[str]) -> None:
    """Raise :class:`UnknownNameError` for the first name the model has no hook for."""
    valid = model.hook_dict
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, list(valid), n=5, cutoff=0.5)
            if close:
                hint = f"did you mean one of: {', '.join(close)}"
            else:  # nothing alike: list the standard names, layer 0's as examples
                examples = [h for h in all_hook_names(1) if h in valid]
                hint = f"valid hooks include: {', '.join(examples)}"
            raise UnknownNameError(
                f"the model has no hook named {name!r}; {hint} ({len(valid)} hooks in all)"
            )
