"""Stable regions of the residual stream: interpolate between two prompts' activations.

Background:
    Janiak et al. (2024) take two prompts A and B, read their activations at one site (the
    residual after block 0, last position), and patch the points x(α) on a path from A's to B's
    activation into A's forward pass. The distance d(α) between the patched output (the final
    residual after the final norm) and A's clean one does not grow linearly: it stays flat while
    x(α) sits in A's "stable region" and jumps where it crosses a boundary. The curve d(α)/d(1)
    is normalised per pair; boundary sharpness = (steps − 1) · max Δ of the normalised curve
    scores a straight line 1 and a step from 0 to 1 at one α ``steps − 1``.

    Paths: ``linear`` x(α) = (1 − α)·a + α·b; ``arc`` the linear point moved along its ray from
    the mean activation m (over every A and B of the call) to A's distance from m, so the path
    keeps ‖x(α) − m‖ = ‖a − m‖ and does not dip toward the mean (the paper's variant; its end
    point is b's direction from m at a's distance); ``slerp`` the direction turned along the great
    circle from a's to b's direction while the norm goes linearly from ‖a‖ to ‖b‖ (ends exact).

    Besides the L2 distance, each step reports the KL divergence KL(p_A ‖ p_α) of the next-token
    distributions at the patched position and the logit difference of A's and B's clean top
    tokens. Where the model and sites allow it, the α grid runs from the weights through the layers
    after the write site only, and only at the patched position (causal attention: the earlier
    positions attend as in A's clean run, the later ones cannot change what is read), all pairs
    and steps in one batch; otherwise one batched hooked forward pass; ``method="reference"`` is
    the paper's way, one hooked pass per α.

Usage:
    curves = interpolate(model, prompts_a, prompts_b, steps=11, mode="linear")
    curves.normalised        # [kept pair, step] d(α)/d(1)
    curves.sharpness         # [kept pair]; < 1.2 same region, > 10 a boundary crossed
    flips = sign_flips(model, prompts_a, prompts_b)            # [pair, step] MLP sign changes
    dirs = random_directions(model, prompts, n=len(prompts_a))  # cov-random baseline
    act_a = residual_at(model, prompts_a, -1, ["blocks.0.hook_resid_post"])[0]
    baseline = interpolate(model, prompts_a, targets=act_a + dirs)

References:
    Janiak et al. 2024, "Characterizing stable regions in the residual stream of LLMs" (and its
    code, reometry); Lee & Heimersheim on random-direction baselines drawn from the covariance.
"""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass
from typing import Literal, get_args, no_type_check

import torch
from jaxtyping import Float, Int
from torch import nn

from tinylens.analysis.forward import WeightForward, original
from tinylens.analysis.protocol import HookedModel, check_token_ids
from tinylens.errors import ConfigError, unknown_name
from tinylens.hooks import check_hook_names

Mode = Literal["linear", "arc", "slerp"]
Method = Literal["fast", "batched", "reference"]

_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_FINAL = ("ln_final.hook_out", "ln_final.hook_normalized")
"""The final norm's output: a bridge's ``hook_out`` (its ``hook_normalized`` comes before the
norm's weight and bias), a ``HookedTransformer``'s ``hook_normalized`` (after them)."""


@dataclass(frozen=True)
class RegionCurves:
    """Output distances along the interpolation path of every prompt pair."""

    alphas: Float[torch.Tensor, " step"]
    """The interpolation coefficients, ``linspace(0, 1, steps)``."""
    l2: Float[torch.Tensor, "pair step"]
    """‖read(α) − A's clean read‖₂ at the patched position."""
    kl: Float[torch.Tensor, "pair step"]
    """KL(p_A ‖ p_α) of the next-token distributions at the patched position."""
    logit_diff: Float[torch.Tensor, "pair step"]
    """Logit of A's clean top token minus logit of B's clean top token, at each α."""
    kept: torch.Tensor
    """Bool ``[pair]``: pairs whose d(1) exceeds ``min_distance`` (the others are dropped)."""
    normalised: Float[torch.Tensor, "kept step"]
    """``l2 / l2[:, -1]`` of the kept pairs."""
    sharpness: Float[torch.Tensor, " kept"]
    """``(steps − 1) · max Δ`` of each kept pair's normalised curve (a straight line scores 1)."""
    write_hook: str
    read_hook: str
    mode: str

    @property
    def dropped(self) -> int:
        """How many pairs were dropped because their d(1) was about 0."""
        return int((~self.kept).sum())


@no_type_check  # checks its own inputs with tinylens errors
def interpolate(
    model: HookedModel,
    prompts_a: Int[torch.Tensor, "pair pos"],
    prompts_b: Int[torch.Tensor, "pair pos"] | None = None,
    *,
    targets: Float[torch.Tensor, "pair ..."] | None = None,
    write_hook: str = "blocks.0.hook_resid_post",
    read_hook: str | None = None,
    steps: int = 11,
    mode: Mode = "linear",
    position: int = -1,
    min_distance: float = 0.01,
    method: Method = "fast",
) -> RegionCurves:
    """Patch points between A's and B's activations into A's run and measure the output's change.

    Args:
        model: any TransformerLens model (a bridge or a ``HookedTransformer``).
        prompts_a: the prompts patched into, one per pair.
        prompts_b: the prompts whose activation is the path's end, same shape as ``prompts_a``.
        targets: instead of ``prompts_b``, the path's end activations themselves (e.g. A's
            activation plus a :func:`random_directions` sample); B's top token is then the top
            token of the α = 1 run.
        write_hook: where the interpolated activation is written.
        read_hook: where the output is read (default: the final residual after the final norm,
            ``ln_final.hook_out`` on a bridge, ``ln_final.hook_normalized`` on a
            ``HookedTransformer``, else the last ``resid_post``: Hugging Face's last hidden state).
        steps: number of α values in [0, 1], at least 2.
        mode: ``linear``, ``arc`` or ``slerp`` (see the module docstring).
        position: the sequence position written and read (negative counts from the end).
        min_distance: pairs with d(1) at or below it are dropped from the normalised curves.
        method: ``fast`` (only the layers after the write site and only the patched position,
            from the weights, for residual sites of a model the weights reproduce; else
            ``batched``), ``batched`` (one hooked pass of all pairs
            and steps) or ``reference`` (one hooked pass per α, the paper's way).

    Returns:
        The curves; the model's parameters and train/eval mode are unchanged.

    Raises:
        ConfigError: unequal prompt shapes, fewer than 2 steps, a position out of range, neither
            or both of ``prompts_b`` and ``targets``, or a write site that runs after the read site.
        UnknownNameError: an unknown hook, mode or method.
        TokenError: prompts that are not 2-d integer token ids of the model's vocabulary.
    """
    read_hook = default_read_hook(model) if read_hook is None else read_hook
    alphas, reads, logits, read_a, logits_a, top_b, _ = _sweep(
        model, prompts_a, prompts_b, targets, write_hook, read_hook, steps, mode, position, method
    )
    return _curves(
        alphas, reads, logits, read_a, logits_a, top_b, min_distance, write_hook, read_hook, mode
    )


@no_type_check  # checks its own inputs with tinylens errors
def sign_flips(
    model: HookedModel,
    prompts_a: Int[torch.Tensor, "pair pos"],
    prompts_b: Int[torch.Tensor, "pair pos"] | None = None,
    *,
    targets: Float[torch.Tensor, "pair ..."] | None = None,
    write_hook: str = "blocks.0.hook_resid_post",
    mlp_hook: str | None = None,
    steps: int = 11,
    mode: Mode = "linear",
    position: int = -1,
) -> Int[torch.Tensor, "pair step"]:
    """How many MLP pre-activations change sign between A's clean run and each patched run.

    The paper's polytope count: a ReLU-like MLP is linear inside the region where no unit's
    pre-activation changes sign, so the count says how many such polytope boundaries the path
    crosses (for a gated MLP, ``mlp.hook_pre`` is the gate's pre-activation).

    Args:
        model: any TransformerLens model with MLPs.
        prompts_a: the prompts patched into, one per pair.
        prompts_b: the prompts whose activation is the path's end (or give ``targets``).
        targets: the path's end activations, instead of ``prompts_b``.
        write_hook: where the interpolated activation is written.
        mlp_hook: the pre-activations counted (default: the last layer's ``mlp.hook_pre``).
        steps: number of α values in [0, 1], at least 2.
        mode: ``linear``, ``arc`` or ``slerp``.
        position: the sequence position written and read.

    Returns:
        ``[pair, step]`` counts at the patched position; column 0 is 0 (A's own activation) and
        the last column is A's run with B's activation written.

    Raises:
        ConfigError / UnknownNameError / TokenError: as :func:`interpolate`.
    """
    if mlp_hook is None:
        mlp_hook = f"blocks.{int(model.cfg.n_layers) - 1}.mlp.hook_pre"
    _, reads, _, read_a, _, _, _ = _sweep(
        model, prompts_a, prompts_b, targets, write_hook, mlp_hook, steps, mode, position, "batched"
    )
    clean = read_a[:, None] > 0
    return ((reads > 0) != clean).flatten(2).sum(-1)


@no_type_check  # checks its own inputs with tinylens errors
def random_directions(
    model: HookedModel,
    prompts: Int[torch.Tensor, "batch pos"],
    n: int,
    *,
    hook: str = "blocks.0.hook_resid_post",
    position: int = -1,
    seed: int = 0,
) -> Float[torch.Tensor, "n ..."]:
    """Random directions drawn from N(0, Σ), Σ the covariance of the activations at a site.

    The baseline done right (Lee & Heimersheim): a random direction built by subtracting the
    original activation from a random point carries that activation's own (large) component and
    so leaves the data's distribution; one drawn from the activations' covariance moves as real
    differences between prompts do. Interpolate toward ``act_a + direction`` with
    ``interpolate(..., targets=...)`` and compare to real pairs.

    Args:
        model: any TransformerLens model.
        prompts: the prompts whose activations give the covariance (more prompts than
            dimensions for a full-rank Σ; fewer give directions inside their span).
        n: how many directions.
        hook: the site.
        position: the sequence position read.
        seed: seeds the draw.

    Returns:
        ``[n, *act]`` directions in the model's dtype.
    """
    check_token_ids(prompts, int(model.cfg.d_vocab), "prompts")
    check_hook_names(model, [hook])
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if prompts.shape[0] < 2:
        raise ConfigError("a covariance needs at least 2 prompts")
    seq_len = int(prompts.shape[1])
    _check_position(position, seq_len)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(prompts, names_filter=lambda name: name == hook)
    finally:
        model.train(training)
    acts = cache[hook][:, position % seq_len]
    flat = acts.flatten(1)
    centred = flat - flat.mean(0)
    # samples of N(0, Σ) with Σ = centredᵀ centred / (k − 1): z · centred / √(k − 1), z ~ N(0, I_k)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, flat.shape[0], generator=g, dtype=flat.dtype)
    return (z @ centred / (flat.shape[0] - 1) ** 0.5).reshape(n, *acts.shape[1:])


def _sweep(model, prompts_a, prompts_b, targets, write_hook, read_hook, steps, mode, position, method):
    """The clean runs and the patched α grid shared by :func:`interpolate` and :func:`sign_flips`.

    Returns α, the patched reads and logits at the position (``[pair, step, …]``), A's clean read
    and logits there, B's top token and the position itself.
    """
    seq_len = _validate(
        model, prompts_a, prompts_b, targets, write_hook, read_hook, steps, mode, method, position
    )
    pos = position % seq_len
    fast = _fast_plan(model, write_hook, read_hook) if method == "fast" else None
    training = model.training
    # switching a bridge's mode walks every submodule (~5 ms on a small model, as much as the
    # fast sweep's own work), so skip it where no module is training: eval() would change nothing
    switch = any(module.training for module in model.modules())
    if switch:
        model.eval()
    try:
        with torch.no_grad():
            if fast is not None:
                return *_sweep_fast(fast, prompts_a, prompts_b, targets, steps, mode, pos), pos
            clean_a = _clean_run(model, prompts_a, write_hook, read_hook, check_order=True)
            act_a = clean_a["write"][:, pos]
            act_b, top_b = None, None
            if targets is None:
                clean_b = _clean_run(model, prompts_b, write_hook, read_hook)
                act_b, top_b = clean_b["write"][:, pos], clean_b["logits"][:, pos].argmax(-1)
            path, alphas = _path(act_a, act_b, targets, steps, mode, write_hook)
            runner = _run_reference if method == "reference" else _run_batched
            reads, logits = runner(model, prompts_a, path, write_hook, read_hook, pos)
    finally:
        if switch:
            model.train(training)
    if top_b is None:
        top_b = logits[:, -1].argmax(-1)
    return alphas, reads, logits, clean_a["read"][:, pos], clean_a["logits"][:, pos], top_b, pos


def _path(act_a, act_b, targets, steps, mode, write_hook):
    """α and the points x(α) ``[pair, step, *act]`` from A's activations to B's (or the targets)."""
    if targets is not None:
        act_b = targets.to(act_a.dtype)
        if act_b.shape != act_a.shape:
            raise ConfigError(
                f"targets have shape {list(act_b.shape)}; {write_hook} at one position "
                f"has shape {list(act_a.shape)} for these prompts"
            )
    alphas = torch.linspace(0, 1, steps, dtype=act_a.dtype)
    mean = torch.cat([act_a, act_b]).mean(0)
    path = interpolation_path(act_a.flatten(1), act_b.flatten(1), alphas, mode, mean.flatten())
    return path.reshape(*path.shape[:2], *act_a.shape[1:]), alphas


def default_read_hook(model: HookedModel) -> str:
    """The final residual after the final norm, or the last block's output without one."""
    for name in _FINAL:
        if name in model.hook_dict:
            return name
    return f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post"


def interpolation_path(
    a: Float[torch.Tensor, "pair d"],
    b: Float[torch.Tensor, "pair d"],
    alphas: Float[torch.Tensor, " step"],
    mode: str,
    mean: Float[torch.Tensor, " d"],
) -> Float[torch.Tensor, "pair step d"]:
    """Points x(α) from ``a`` to ``b`` for each α (see the module docstring for the modes)."""
    al = alphas[None, :, None]
    linear = (1 - al) * a[:, None] + al * b[:, None]
    if mode == "linear":
        return linear
    if mode == "arc":
        radius = (a - mean).norm(dim=-1)[:, None, None]
        offset = linear - mean
        norm = offset.norm(dim=-1, keepdim=True)
        return mean + offset * (radius / norm.clamp_min(torch.finfo(a.dtype).tiny))
    # slerp: direction along the great circle, norm linear in α
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(torch.finfo(a.dtype).tiny), b / nb.clamp_min(torch.finfo(a.dtype).tiny)
    cos = (ua * ub).sum(-1).clamp(-1, 1)
    theta = torch.arccos(cos)[:, None, None]  # [pair, 1, 1]
    sin = torch.sin(theta)
    small = sin.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(sin), sin)
    wa = torch.where(small, 1 - al, torch.sin((1 - al) * theta) / safe)
    wb = torch.where(small, al, torch.sin(al * theta) / safe)
    direction = wa * ua[:, None] + wb * ub[:, None]
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return direction * ((1 - al) * na[:, None] + al * nb[:, None])


# --- checks ----------------------------------------------------------------------------------


def _validate(
    model, prompts_a, prompts_b, targets, write_hook, read_hook, steps, mode, method, position
) -> int:
    d_vocab = int(model.cfg.d_vocab)
    check_token_ids(prompts_a, d_vocab, "prompts_a")
    if (prompts_b is None) == (targets is None):
        raise ConfigError("give the path's end as exactly one of prompts_b and targets")
    if targets is not None:
        if not isinstance(targets, torch.Tensor) or not targets.is_floating_point():
            raise ConfigError("targets must be a floating-point tensor [pair, *activation]")
    else:
        check_token_ids(prompts_b, d_vocab, "prompts_b")
    if prompts_b is not None and prompts_a.shape != prompts_b.shape:
        raise ConfigError(
            f"prompts_a has shape {list(prompts_a.shape)} and prompts_b {list(prompts_b.shape)}; "
            "interpolation pairs prompt i of A with prompt i of B, so they need the same shape"
        )
    if prompts_a.shape[0] == 0:
        raise ConfigError("no prompt pairs given (prompts_a is empty)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"steps must be an integer ≥ 2 (α = 0 and α = 1 at least), got {steps!r}")
    if mode not in get_args(Mode):
        raise unknown_name("interpolation mode", mode, get_args(Mode))
    if method not in get_args(Method):
        raise unknown_name("interpolation method", method, get_args(Method))
    check_hook_names(model, [write_hook, read_hook])
    seq_len = int(prompts_a.shape[1])
    _check_position(position, seq_len)
    return seq_len


def _check_position(position: int, seq_len: int) -> None:
    if isinstance(position, bool) or not isinstance(position, int) or not -seq_len <= position < seq_len:
        raise ConfigError(
            f"position {position!r} is out of range for prompts of length {seq_len} "
            f"(valid: {-seq_len}–{seq_len - 1})"
        )


def _order_error(write_hook: str, read_hook: str) -> ConfigError:
    return ConfigError(
        f"the write site {write_hook!r} runs after the read site {read_hook!r}: a patch "
        "there cannot change what is read; write earlier or read later"
    )


def _clean_run(model, tokens, write_hook, read_hook, *, check_order: bool = False) -> dict:
    """Logits and the activations at both sites of one clean pass; checks the sites' order."""
    seen: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def capture(key: str):
        def hook(act: torch.Tensor, *, hook: object) -> None:
            order.append(key)
            seen.setdefault(key, act.detach().clone())

        return hook

    logits = model.run_with_hooks(
        tokens, fwd_hooks=[(write_hook, capture("write")), (read_hook, capture("read"))]
    )
    if check_order and write_hook != read_hook and order.index("write") > order.index("read"):
        raise _order_error(write_hook, read_hook)
    seen["logits"] = logits
    return seen


# --- the three ways to run the α grid ------------------------------------------------------------


def _patch_hook(values: torch.Tensor, pos: int):
    """A hook writing ``values`` (``[rows, *act]``) at ``pos`` of a copy of the activation."""

    def hook(act: torch.Tensor, *, hook: object) -> torch.Tensor:
        out = act.clone()
        out[:, pos] = values.to(act.dtype)
        return out

    return hook


def _run_reference(model, prompts_a, path, write_hook, read_hook, pos):
    """One hooked forward pass through the whole model per α (the paper's way)."""
    reads, logits = [], []
    for step in range(path.shape[1]):
        got: dict[str, torch.Tensor] = {}

        def read(act: torch.Tensor, *, hook: object, got=got) -> None:
            got["read"] = act.detach().clone()

        out = model.run_with_hooks(
            prompts_a,
            fwd_hooks=[(write_hook, _patch_hook(path[:, step], pos)), (read_hook, read)],
        )
        reads.append(got["read"][:, pos])
        logits.append(out[:, pos])
    return torch.stack(reads, 1), torch.stack(logits, 1)


def _run_batched(model, prompts_a, path, write_hook, read_hook, pos):
    """One hooked forward pass of every pair × step."""
    n_pairs, n_steps = path.shape[:2]
    tokens = prompts_a.repeat_interleave(n_steps, 0)  # row = pair · steps + step
    got: dict[str, torch.Tensor] = {}

    def read(act: torch.Tensor, *, hook: object) -> None:
        got["read"] = act.detach().clone()

    out = model.run_with_hooks(
        tokens, fwd_hooks=[(write_hook, _patch_hook(path.flatten(0, 1), pos)), (read_hook, read)]
    )
    rd = got["read"][:, pos]
    return rd.reshape(n_pairs, n_steps, *rd.shape[1:]), out[:, pos].reshape(n_pairs, n_steps, -1)


@dataclass(frozen=True)
class _FastPlan:
    """How the fast path runs a residual write site: the layers from ``start`` on, from weights."""

    fwd: WeightForward
    start: int
    """The first layer the patch passes through (the write site is that layer's ``resid_pre``)."""
    read_at: tuple[int, str] | None
    """``(layer, "pre" | "post")`` of a residual read site; None: the final norm's output."""
    write_hook: str


_VERIFIED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
"""Per model: whether :class:`WeightForward` reproduces it. Its constructor proves that with a probe
forward pass (and two train/eval switches), which cost as much as the whole sweep on a small
model, so it runs once per model; the verdict depends on the architecture, not on the weights."""


class _Probed(WeightForward):
    """A :class:`WeightForward` of a model that already passed the probe (see ``_VERIFIED``)."""

    def _check_equals_model(self) -> None:
        pass


def _weight_forward(model: HookedModel) -> WeightForward | None:
    """The model's :class:`WeightForward`, or None where it does not reproduce the model."""
    verdict = _VERIFIED.get(model)
    if verdict is not None:
        return _Probed(model) if verdict else None
    try:
        fwd = WeightForward(model)
    except ConfigError:
        _VERIFIED[model] = False
        return None
    _VERIFIED[model] = True
    return fwd


def _fast_plan(model: HookedModel, write_hook: str, read_hook: str) -> _FastPlan | None:
    """The fast path's plan for residual sites of a model the weights reproduce, else None; raises
    the hooked path's error for a write site after the read site (their order is in the names)."""
    write, read = _RESID.match(write_hook), _RESID.match(read_hook)
    if write is None or not (read is not None or read_hook == "ln_final.hook_out"):
        return None
    # hook order: blocks.L.hook_resid_pre, then blocks.L.hook_resid_post, then block L + 1's
    w_key = 2 * int(write.group(1)) + (write.group(2) == "post")
    r_key = math.inf if read is None else 2 * int(read.group(1)) + (read.group(2) == "post")
    if w_key > r_key:
        raise _order_error(write_hook, read_hook)
    fwd = _weight_forward(model)
    if fwd is None:
        return None
    start = int(write.group(1)) + (write.group(2) == "post")
    read_at = None if read is None else (int(read.group(1)), read.group(2))
    return _FastPlan(fwd, start, read_at, write_hook)


def _sweep_fast(
    plan: _FastPlan,
    prompts_a: Int[torch.Tensor, "pair pos"],
    prompts_b: Int[torch.Tensor, "pair pos"] | None,
    targets: Float[torch.Tensor, "pair d_model"] | None,
    steps: int,
    mode: str,
    pos: int,
) -> tuple[torch.Tensor, ...]:
    """:func:`_sweep` from the weights (all it returns but the position).

    Causal attention: nothing after ``pos`` changes what is read there, so every run stops at
    ``pos``; the patch changes only position ``pos``, so the patched runs recompute that one
    position from the write site on, attending to the keys and values A's clean run left at the
    earlier positions (which the patch cannot reach).
    """
    n = int(prompts_a.shape[0])
    both = prompts_a if prompts_b is None else torch.cat([prompts_a, prompts_b])  # one batch
    write, read, logits, keys, values = _clean_from_weights(plan, both[:, : pos + 1])
    act_b = None if prompts_b is None else write[n:]
    path, alphas = _path(write[:n], act_b, targets, steps, mode, plan.write_hook)
    keys, values = [k[:n] for k in keys], [v[:n] for v in values]
    p_read, p_logits = _patched_from_weights(plan, path.flatten(0, 1), keys, values, steps, pos)
    p_read = p_read.reshape(n, steps, *p_read.shape[1:])
    p_logits = p_logits.reshape(n, steps, -1)
    top_b = logits[n:].argmax(-1) if prompts_b is not None else p_logits[:, -1].argmax(-1)
    return alphas, p_read, p_logits, read[:n], logits[:n], top_b


def _clean_from_weights(
    plan: _FastPlan, tokens: Int[torch.Tensor, "row pos"]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One clean pass ending at the read position (the last of ``tokens``): the write and read
    activations and the logits there, and every layer's keys and values at the earlier positions."""
    fwd = plan.fwd
    x = fwd.embed(tokens)
    write = read = None
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for layer in range(fwd.n_layers):
        if layer == plan.start:
            write = x[:, -1]
        if plan.read_at == (layer, "pre"):
            read = x[:, -1]
        q, k, v = fwd.qkv(layer, x)
        keys.append(k[:, :, :-1])
        values.append(v[:, :, :-1])
        if layer == fwd.n_layers - 1:  # nothing reads the last layer's earlier positions
            x, z = x[:, -1:], fwd.attend(q[:, :, -1:], k, v, causal=False)
        else:
            z = fwd.attend(q, k, v)
        x = x + fwd.attention_output(layer, z)
        if fwd.has_mlp:
            x = x + fwd.mlp(layer, x)
        if plan.read_at == (layer, "post"):
            read = x[:, -1]
    if plan.start == fwd.n_layers:  # written at the last block's output
        write = x[:, -1]
    x = x[:, -1]
    if plan.read_at is None:
        read = _final_norm(fwd, x)
    assert write is not None and read is not None
    return write, read, fwd.unembed(x), keys, values


def _patched_from_weights(
    plan: _FastPlan,
    x: Float[torch.Tensor, "row d_model"],
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    steps: int,
    pos: int,
) -> tuple[Float[torch.Tensor, "row d_model"], Float[torch.Tensor, "row d_vocab"]]:
    """The patched position's read and logits for every row (``pair · steps + step``), written
    ``x`` at the write site; ``keys``/``values``: A's clean ones at the earlier positions, per pair."""
    fwd = plan.fwd
    x = x[:, None]  # [row, 1, d_model]: the one position, kept as a sequence for the model's modules
    positions = torch.full((x.shape[0], 1), pos, device=x.device)  # where rotary places it
    at_write = plan.read_at in ((plan.start - 1, "post"), (plan.start, "pre"))
    read = x if at_write else None
    for layer in range(plan.start, fwd.n_layers):
        if plan.read_at == (layer, "pre"):
            read = x
        q, k, v = fwd.qkv(layer, x, positions)
        z = _attend_at(fwd, q, k, v, keys[layer], values[layer], steps)
        x = x + fwd.attention_output(layer, z)
        if fwd.has_mlp:
            x = x + fwd.mlp(layer, x)
        if plan.read_at == (layer, "post"):
            read = x
    if plan.read_at is None:
        read = _final_norm(fwd, x)
    assert read is not None
    return read[:, 0], fwd.unembed(x[:, 0])


def _attend_at(
    fwd: WeightForward,
    q: Float[torch.Tensor, "row head 1 d_head"],
    k: Float[torch.Tensor, "row head 1 d_head"],
    v: Float[torch.Tensor, "row head 1 d_head"],
    prefix_k: Float[torch.Tensor, "pair head pos d_head"],
    prefix_v: Float[torch.Tensor, "pair head pos d_head"],
    steps: int,
) -> Float[torch.Tensor, "row head 1 d_head"]:
    """Attention of the patched position: to its pair's clean earlier keys (shared by all of the
    pair's steps, so broadcast rather than copied) and to its own key."""
    n, heads, _, d_head = prefix_k.shape
    qs = q.reshape(n, steps, heads, d_head)
    earlier = torch.einsum("nshd,nhpd->nshp", qs, prefix_k)
    own = (q * k).sum(-1).reshape(n, steps, heads, 1)
    weights = (torch.cat([earlier, own], -1) / fwd.attn_scale).softmax(-1)
    z = torch.einsum("nshp,nhpd->nshd", weights[..., :-1], prefix_v)
    z = z + weights[..., -1:] * v.reshape(n, steps, heads, d_head)
    return z.reshape(n * steps, heads, 1, d_head)


def _final_norm(fwd: WeightForward, x: torch.Tensor) -> torch.Tensor:
    """``ln_final.hook_out``: the final norm's output (the residual itself without a norm)."""
    final = getattr(fwd.model, "ln_final", None)
    return x if final is None else original(final)(x)


# --- the curves ----------------------------------------------------------------------------------


def _curves(alphas, reads, logits, read_a, logits_a, top_b, min_distance, write_hook, read_hook, mode):
    l2 = (reads - read_a[:, None]).flatten(2).norm(dim=-1)
    logp_a = logits_a.log_softmax(-1)[:, None]
    logp = logits.log_softmax(-1)
    kl = (logp_a.exp() * (logp_a - logp)).sum(-1)
    top_a = logits_a.argmax(-1)
    index = torch.stack([top_a, top_b], -1)[:, None].expand(-1, logits.shape[1], -1)
    pair_logits = logits.gather(-1, index)
    logit_diff = pair_logits[..., 0] - pair_logits[..., 1]
    kept = l2[:, -1] > min_distance
    normalised = l2[kept] / l2[kept][:, -1:]
    steps = int(alphas.shape[0])
    if normalised.shape[0]:
        sharpness = (steps - 1) * normalised.diff(dim=1).max(dim=1).values
    else:
        sharpness = normalised.new_zeros(0)
    return RegionCurves(
        alphas=alphas,
        l2=l2,
        kl=kl,
        logit_diff=logit_diff,
        kept=kept,
        normalised=normalised,
        sharpness=sharpness,
        write_hook=write_hook,
        read_hook=read_hook,
        mode=mode,
    )
