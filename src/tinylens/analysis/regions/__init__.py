"""Stable regions of the residual stream: interpolate between two prompts' activations.

Background:
    Janiak et al. (2024) take two prompts A and B, read their activations at one site (the
    residual after block 0, last position), and patch the points x(α) on a path from A's to B's
    activation into A's forward pass. The distance d(α) between the patched output (the final
    residual after the final norm) and A's clean one does not grow linearly: it stays flat while
    x(α) sits in A's "stable region" and jumps where it crosses a boundary. The curve d(α)/d(1)
    is normalised per pair; boundary sharpness = (steps − 1) · max Δ of the normalised curve
    scores a straight line 1 and a step from 0 to 1 at one α ``steps − 1``.

    Paths (:func:`interpolation_path`): ``linear``; ``arc``, which keeps the distance to the mean
    activation so the path does not dip toward it (the paper's variant); ``slerp``. Besides the L2
    distance, each step reports KL(p_A ‖ p_α) of the next-token distributions and the logit
    difference of A's and B's clean top tokens. :func:`plane_slice` maps a plane through three
    prompts' activations; :func:`sign_flips` counts the MLP units whose pre-activation changes
    sign (the ReLU polytopes a path crosses); :func:`random_directions` is the baseline done
    right, directions drawn from the activations' covariance.

    Where the model and sites allow it, the α grid runs from the weights through the layers after
    the write site only, and only at the patched position, all pairs and steps in one batch
    (:mod:`.runners`); ``method="batched"`` is one hooked pass of everything and
    ``method="reference"`` the paper's way, one hooked pass per α. All three agree to 1e-5.

Usage:
    curves = interpolate(model, prompts_a, prompts_b, steps=11, mode="linear")
    curves.normalised        # [kept pair, step] d(α)/d(1)
    curves.sharpness         # [kept pair]; < 1.2 same region, > 10 a boundary crossed
    flips = sign_flips(model, prompts_a, prompts_b)            # [pair, step] MLP sign changes
    plane = plane_slice(model, torch.stack([a, b, c]))         # RegionSlice; plane.rgb()
    dirs = random_directions(model, prompts, n=len(prompts_a))  # cov-random baseline
    act_a = residual_at(model, prompts_a, -1, ["blocks.0.hook_resid_post"])[0]
    baseline = interpolate(model, prompts_a, targets=act_a + dirs)

References:
    Janiak et al. 2024, "Characterizing stable regions in the residual stream of LLMs" (and its
    code, reometry); Lee & Heimersheim on random-direction baselines drawn from the covariance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import no_type_check

import torch
from jaxtyping import Float, Int

from tinylens.analysis.protocol import HookedModel, check_token_ids
from tinylens.analysis.regions.paths import interpolation_path, plane_basis, plane_points
from tinylens.analysis.regions.runners import (
    Clean,
    Method,
    Mode,
    check_inputs,
    check_method,
    check_position,
    check_steps,
    default_read_hook,
    evaluating,
    make_runner,
)
from tinylens.errors import ConfigError
from tinylens.hooks import check_hook_names


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


@dataclass(frozen=True)
class RegionSlice:
    """Output distances on a grid in the plane through three prompts' activations.

    The plane's origin is A's activation; α runs along B − A and β along the part of C − A
    orthogonal to it, so A sits at (0, 0), B at (1, 0) and C at ``(corners[2, 0], 1)``.
    """

    alphas: Float[torch.Tensor, " n_alpha"]
    betas: Float[torch.Tensor, " n_beta"]
    distances: Float[torch.Tensor, "3 n_beta n_alpha"]
    """‖read at the grid point (patched into A's run) − prompt k's clean read‖₂, k = A, B, C."""
    corners: Float[torch.Tensor, "3 2"]
    """(α, β) of A's, B's and C's activations."""
    write_hook: str
    read_hook: str

    def rgb(self) -> Float[torch.Tensor, "n_beta n_alpha 3"]:
        """The paper's picture: channel k = 1 − distance to prompt k's output / its largest value
        on the grid, so a point coloured pure red gives A's output (green B's, blue C's)."""
        scale = self.distances.flatten(1).max(1).values.clamp_min(torch.finfo(self.distances.dtype).tiny)
        return (1 - self.distances / scale[:, None, None]).clamp(0, 1).permute(1, 2, 0)


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
    batch_size: int = 64,
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
        mode: ``linear``, ``arc`` or ``slerp`` (see :func:`interpolation_path`).
        position: the sequence position written and read (negative counts from the end).
        min_distance: pairs with d(1) at or below it are dropped from the normalised curves.
        method: ``fast`` (only the layers after the write site and only the patched position,
            from the weights, for residual sites of a model the weights reproduce; else
            ``batched``), ``batched`` (one hooked pass of all pairs and steps) or ``reference``
            (one hooked pass per α, the paper's way).
        batch_size: pairs per forward pass (each pass holds ``batch_size · steps`` rows of
            logits: lower it for a large vocabulary).

    Returns:
        The curves; the model's parameters and train/eval mode are unchanged.

    Raises:
        ConfigError: unequal prompt shapes, fewer than 2 steps, a position out of range, neither
            or both of ``prompts_b`` and ``targets``, or a write site that runs after the read site.
        UnknownNameError: an unknown hook, mode or method.
        TokenError: prompts that are not 2-d integer token ids of the model's vocabulary.
    """
    read_hook = default_read_hook(model) if read_hook is None else read_hook

    def distances(reads, logits, clean_a, top_b):
        l2 = (reads - clean_a.read[:, None]).flatten(2).norm(dim=-1)
        logp_a = clean_a.logits.log_softmax(-1)[:, None]
        kl = (logp_a.exp() * (logp_a - logits.log_softmax(-1))).sum(-1)
        index = torch.stack([clean_a.logits.argmax(-1), top_b], -1)[:, None]
        pair_logits = logits.gather(-1, index.expand(-1, logits.shape[1], -1))
        return l2, kl, pair_logits[..., 0] - pair_logits[..., 1]

    alphas, (l2, kl, logit_diff) = _sweep(
        model, prompts_a, prompts_b, targets, write_hook, read_hook, steps, mode, position, method,
        batch_size, distances,
    )  # fmt: skip
    kept, normalised = normalise(l2, min_distance)
    return RegionCurves(
        alphas=alphas,
        l2=l2,
        kl=kl,
        logit_diff=logit_diff,
        kept=kept,
        normalised=normalised,
        sharpness=boundary_sharpness(normalised),
        write_hook=write_hook,
        read_hook=read_hook,
        mode=mode,
    )


def normalise(
    distances: Float[torch.Tensor, "pair step"], min_distance: float
) -> tuple[torch.Tensor, Float[torch.Tensor, "kept step"]]:
    """The pairs whose distance at α = 1 exceeds ``min_distance`` (bool ``[pair]``) and their curves
    divided by that end value, so every kept curve ends at 1."""
    kept = distances[:, -1] > min_distance
    return kept, distances[kept] / distances[kept][:, -1:]


def boundary_sharpness(normalised: Float[torch.Tensor, "pair step"]) -> Float[torch.Tensor, " pair"]:
    """``(steps − 1) · max Δ`` of each normalised curve: 1 for a straight line, ``steps − 1`` for a
    jump from 0 to 1 between two neighbouring α (more where the curve overshoots and falls back)."""
    if normalised.shape[0] == 0:
        return normalised.new_zeros(0)
    return (normalised.shape[1] - 1) * normalised.diff(dim=1).max(dim=1).values


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
    batch_size: int = 64,
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
        batch_size: pairs per forward pass.

    Returns:
        ``[pair, step]`` counts at the patched position; column 0 is 0 (A's own activation) and
        the last column is A's run with B's activation written.

    Raises:
        ConfigError / UnknownNameError / TokenError: as :func:`interpolate`.
    """
    if mlp_hook is None:
        mlp_hook = f"blocks.{int(model.cfg.n_layers) - 1}.mlp.hook_pre"

    def flips(reads, logits, clean_a, top_b):
        return (((reads > 0) != (clean_a.read[:, None] > 0)).flatten(2).sum(-1),)

    _, (counts,) = _sweep(
        model, prompts_a, prompts_b, targets, write_hook, mlp_hook, steps, mode, position, "batched",
        batch_size, flips,
    )  # fmt: skip
    return counts


@no_type_check  # checks its own inputs with tinylens errors
def plane_slice(
    model: HookedModel,
    prompts: Int[torch.Tensor, "3 pos"],
    *,
    write_hook: str = "blocks.0.hook_resid_post",
    read_hook: str | None = None,
    steps: int = 11,
    low: float = -0.25,
    high: float = 1.25,
    position: int = -1,
    method: Method = "fast",
) -> RegionSlice:
    """Distances to three prompts' outputs on a grid in the plane through their activations.

    Each grid point is written at ``write_hook`` into A's run (A = ``prompts[0]``) and the read
    compared to each prompt's own clean read, as in the paper's 2-D slices.

    Args:
        model: any TransformerLens model.
        prompts: ``[3, pos]``, the prompts A, B and C.
        write_hook, read_hook, position, method: as :func:`interpolate`.
        steps: grid points along each axis, at least 2.
        low, high: the range of both coordinates (the paper's −0.25 to 1.25 shows a margin
            around the triangle).

    Raises:
        ConfigError: not three prompts, fewer than 2 steps, ``low`` ≥ ``high``, a write site after
            the read site, or three activations that span no plane (two equal, or all in a line).
    """
    read_hook = default_read_hook(model) if read_hook is None else read_hook
    check_token_ids(prompts, int(model.cfg.d_vocab), "prompts")
    if prompts.shape[0] != 3:
        raise ConfigError(f"a plane slice takes 3 prompts (A, B, C), got {prompts.shape[0]}")
    check_steps(steps)
    if not float(low) < float(high):
        raise ConfigError(f"the grid's range must have low < high, got {low} and {high}")
    check_method(method)
    check_hook_names(model, [write_hook, read_hook])
    seq_len = int(prompts.shape[1])
    check_position(position, seq_len)
    with evaluating(model):
        runner = make_runner(model, write_hook, read_hook, position % seq_len, method)
        clean = runner.clean(prompts)
        acts = clean.write.flatten(1)
        try:
            u, w, alpha_c = plane_basis(acts[0], acts[1], acts[2])
        except ValueError as err:
            raise ConfigError(f"the three prompts span no plane at {write_hook}: {err}") from None
        grid = torch.linspace(float(low), float(high), steps, dtype=acts.dtype)
        points = plane_points(acts[0], u, w, grid, grid)  # [β, α, d]
        shaped = points.reshape(1, steps * steps, *clean.write.shape[1:])
        reads, _ = runner.patched(clean.rows(slice(0, 1)), shaped)
    reads = reads[0].flatten(1)  # [point, d]
    # Not cdist's default: past 25 rows it takes ‖x‖² + ‖y‖² − 2x·y, whose cancellation leaves an
    # error of √(ε‖x‖²) (4e-8 for A's distance to itself in float64); the differences are exact.
    distances = torch.cdist(
        clean.read.flatten(1), reads, compute_mode="donot_use_mm_for_euclid_dist"
    ).reshape(3, steps, steps)
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [alpha_c, 1.0]], dtype=acts.dtype)
    return RegionSlice(grid, grid.clone(), distances, corners, write_hook, read_hook)


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
    check_position(position, seq_len)
    with evaluating(model):
        _, cache = model.run_with_cache(prompts, names_filter=lambda name: name == hook)
    acts = cache[hook][:, position % seq_len]
    flat = acts.flatten(1)
    centred = flat - flat.mean(0)
    # samples of N(0, Σ) with Σ = centredᵀ centred / (k − 1): z · centred / √(k − 1), z ~ N(0, I_k)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, flat.shape[0], generator=g, dtype=flat.dtype)
    return (z @ centred / (flat.shape[0] - 1) ** 0.5).reshape(n, *acts.shape[1:])


def _sweep(
    model, prompts_a, prompts_b, targets, write_hook, read_hook, steps, mode, position, method,
    batch_size, reduce,
):  # fmt: skip
    """The clean runs and the patched α grid shared by :func:`interpolate` and :func:`sign_flips`,
    ``batch_size`` pairs at a time.

    ``reduce(reads, logits, clean_a, top_b)`` turns one chunk's patched reads and logits
    ``[pair, step, …]``, A's clean runs and B's top tokens into a tuple of ``[pair, …]`` tensors,
    so the logits of every pair and step are never held at once. Returns α and the reduced tensors
    of all pairs.
    """
    seq_len = check_inputs(
        model, prompts_a, prompts_b, targets, [write_hook, read_hook], steps, mode, method, position
    )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = int(prompts_a.shape[0])
    with evaluating(model):
        runner = make_runner(model, write_hook, read_hook, position % seq_len, method)
        both = prompts_a if prompts_b is None else torch.cat([prompts_a, prompts_b])
        clean = Clean.cat([runner.clean(chunk) for chunk in both.split(2 * batch_size)])
        clean_a = clean.rows(slice(0, n))
        act_b = None if prompts_b is None else clean.write[n:]
        # the whole path at once: the arc mode's mean is over every A and B of the call
        path, alphas = _path(clean_a.write, act_b, targets, steps, mode, write_hook)
        parts = []
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            base = clean_a.rows(rows)
            reads, logits = runner.patched(base, path[rows])
            top_b = logits[:, -1].argmax(-1) if prompts_b is None else clean.logits[n:][rows].argmax(-1)
            parts.append(reduce(reads, logits, base, top_b))
    return alphas, tuple(torch.cat(column) for column in zip(*parts, strict=True))


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


__all__ = [
    "normalise",
    "RegionCurves",
    "RegionSlice",
    "boundary_sharpness",
    "default_read_hook",
    "interpolate",
    "interpolation_path",
    "plane_slice",
    "random_directions",
    "sign_flips",
]
