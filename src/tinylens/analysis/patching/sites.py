"""What a patch sweep can patch: the sites, their hook names, and the options' allowed values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from tinylens import hooks

Site = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head", "head_q", "head_k", "head_v"
]
"""The activation a sweep patches; the ``head*`` sites patch one head's output (``hook_z``), query,
key or value."""
Direction = Literal["noise", "denoise"]
"""``noise``: run the clean prompts, patch in from a source; ``denoise``: run the corrupted
prompts, patch in the clean activation."""
Source = Literal["corrupt", "mean", "zero"]
"""What noising writes in: the corrupted run's activation, its mean over prompts, or zeros."""
Method = Literal["auto", "fast", "hooks"]
"""``fast``: the engine of :mod:`~tinylens.analysis.patching.engine`; ``hooks``: the model run with
hooks, batched; ``auto``: ``fast`` where it applies."""

SITE_HOOKS: dict[str, Callable[[int], str]] = {
    "resid_pre": hooks.resid_pre,
    "resid_mid": hooks.resid_mid,
    "resid_post": hooks.resid_post,
    "attn_out": hooks.attn_out,
    "mlp_out": hooks.mlp_out,
    "head": hooks.attn_z,
    "head_q": hooks.attn_q,
    "head_k": hooks.attn_k,
    "head_v": hooks.attn_v,
}
"""Site → the hook name of that site in a layer."""
HEAD_SITES = ("head", "head_q", "head_k", "head_v")
"""Sites with a head axis."""
FAST_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head")
"""Sites the fast path handles: those that change the residual stream at the patched positions."""

# Rows × positions × width of the biggest activation a chunk may hold (~256 MB of fp32): bounds the
# memory of a batched sweep whatever the model and vocabulary.
MAX_CHUNK_ELEMENTS = 64 * 2**20
