"""Ablation: replace a component's activation (a head, an MLP, the residual stream) and re-run.

Background:
    An ablation knocks out one component to see what the output loses. The replacement is
    zero (the component contributes nothing; biases downstream remain), mean (its average over a
    reference set, per position: removes what varies with the input, keeps the constant part), or
    resample (its value on another, random reference input: what it would say about a different
    question). For a head the hook is ``attn.hook_z`` (before W_O), so zero-ablating head h removes
    exactly ``z_h @ W_O[h]`` from the attention output.

Usage:
    ab = Ablation(hook=hooks.attn_z(0), head=1, kind="mean")
    logits = run_ablated(model, tokens, [ab], reference=other_tokens)

References:
    Quirke & Barez 2023 (head and position ablation of an addition model); Chan et al. 2022 on
    resampling ablation; TransformerLens's ``run_with_hooks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from jaxtyping import Float, Int

from tinylens.analysis.protocol import HookedModel
from tinylens.errors import ConfigError
from tinylens.hooks import check_hook_names

AblationKind = Literal["zero", "mean", "resample"]


@dataclass(frozen=True)
class Ablation:
    """One component to knock out."""

    hook: str
    """Hook whose activation is replaced, e.g. ``blocks.0.attn.hook_z`` or ``blocks.0.hook_mlp_out``."""
    head: int | None = None
    """Head index, for hooks with a head axis (``[batch, pos, head, d_head]``); None: all of it."""
    positions: tuple[int, ...] | None = None
    """Sequence positions to replace; None: every position."""
    kind: AblationKind = "mean"
    """What replaces the activation: zeros, the reference mean, or a resampled reference example."""


def validate(model: HookedModel, seq_len: int, ablations: Sequence[Ablation]) -> None:
    """Raise a clear error for unknown hooks, heads out of range, positions out of range."""
    check_hook_names(model, [a.hook for a in ablations])
    n_heads = int(model.cfg.n_heads)
    for a in ablations:
        if a.kind not in get_args(AblationKind):
            raise ConfigError(f"ablation kind {a.kind!r} is not one of {get_args(AblationKind)}")
        if a.head is not None and not 0 <= a.head < n_heads:
            raise ConfigError(
                f"head {a.head} is out of range for {a.hook}: the model has {n_heads} heads "
                f"(valid: 0–{n_heads - 1})"
            )
        for p in a.positions or ():
            if not 0 <= p < seq_len:
                raise ConfigError(
                    f"position {p} is out of range for sequences of length {seq_len} "
                    f"(valid: 0–{seq_len - 1})"
                )


def run_ablated(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    ablations: Sequence[Ablation],
    *,
    reference: Int[torch.Tensor, "ref pos"] | None = None,
    seed: int = 0,
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Logits of ``model`` on ``tokens`` with every ablation applied at once.

    Args:
        model: any TransformerLens model.
        tokens: the inputs.
        ablations: components to replace.
        reference: inputs whose activations give the mean / resampled values (default: ``tokens``);
            same sequence length as ``tokens``.
        seed: seeds which reference example each input gets under resampling.
    """
    validate(model, tokens.shape[1], ablations)
    reference = tokens if reference is None else reference
    if reference.shape[1] != tokens.shape[1]:
        raise ConfigError(
            f"reference sequences have length {reference.shape[1]}, inputs {tokens.shape[1]}; "
            "mean and resample ablation need them equal"
        )
    needs_ref = sorted({a.hook for a in ablations if a.kind != "zero"})
    ref_acts: dict[str, torch.Tensor] = {}
    if needs_ref:
        with torch.no_grad():
            _, cache = model.run_with_cache(reference, names_filter=lambda n: n in needs_ref)
        ref_acts = {name: cache[name] for name in needs_ref}
    rng = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, reference.shape[0], (tokens.shape[0],), generator=rng)
    fwd_hooks = [(a.hook, _replacement_hook(a, ref_acts.get(a.hook), pick)) for a in ablations]
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)


def _replacement_hook(
    ablation: Ablation, reference: torch.Tensor | None, pick: Int[torch.Tensor, " batch"]
):
    """A hook that returns a copy of the activation with the ablated slice replaced."""

    def hook(act: torch.Tensor, *, hook: object) -> torch.Tensor:
        if ablation.head is not None and act.ndim != 4:
            raise ConfigError(
                f"{ablation.hook} has shape {list(act.shape)}, no head axis; use a per-head hook "
                "such as blocks.L.attn.hook_z to ablate one head"
            )
        if ablation.kind == "zero":
            value = torch.zeros_like(act)
        elif ablation.kind == "mean":
            assert reference is not None
            value = reference.mean(0, keepdim=True).expand_as(act)  # [1, pos, ...] → act's shape
        else:
            assert reference is not None
            value = reference[pick[: act.shape[0]]]
        pos = slice(None) if ablation.positions is None else list(ablation.positions)
        head = slice(None) if ablation.head is None else ablation.head
        out = act.clone()  # never write into the activation in place
        if act.ndim == 4:
            out[:, pos, head] = value[:, pos, head]
        else:
            out[:, pos] = value[:, pos]
        return out

    return hook
