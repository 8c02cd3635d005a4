"""InversionView's measurements: sites, the ε-preimage distance, and completeness by enumeration.

Background:
    InversionView (Huang, Panwar, Goyal and Hahn 2024) reads what an activation encodes by looking
    at the inputs that produce (almost) the same activation: the ε-preimage of a query activation
    z_q at a site is every input whose activation at **any** of its positions lies within ε of z_q,
    by

        D(z, z_q) = ‖z − z_q‖₂ / ‖z_q‖₂        (or 1 − cos(z, z_q)),   ε = 0.1 by default.

    A conditional decoder proposes candidate inputs; each is re-run through the probed model and
    kept by its true distance. Where the input space is small enough to enumerate (3-digit
    addition), the true preimage is known exactly, so the decoder's recall of it and the
    precision of its samples can be measured (:func:`completeness`).

    A *site* is a residual-stream quantity of one layer: ``embed`` (the residual before block 0),
    ``L{l}.head{h}`` (one head's output written into the residual, z_h·W_O[h]), ``L{l}.attn_out``,
    ``L{l}.resid_mid``, ``L{l}.mlp_out`` and ``L{l}.resid_post``.

Usage:
    site = parse_site("L0.head1", model)
    acts = site_activations(model, tokens, site)            # [batch, pos, d_model]
    d = preimage_distance(acts, query)                      # [batch]: min over positions
    inside = in_preimage(d, epsilon=0.1)
    scores = completeness(true_distances, sampled_ids, epsilon=0.1)

References:
    Huang, Panwar, Goyal and Hahn, "InversionView: A General-Purpose Method for Reading
    Information from Neural Activations", NeurIPS 2024 (arXiv:2405.17653).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, get_args, no_type_check

import torch
from jaxtyping import Bool, Float, Int

from tinylens import hooks
from tinylens.analysis.protocol import HookedModel, check_token_ids
from tinylens.errors import ConfigError, unknown_name

Metric = Literal["l2", "cosine"]
EPSILON = 0.1
"""The paper's threshold on D for "inside the preimage"."""

_LAYER_SITES = ("attn_out", "resid_mid", "mlp_out", "resid_post")
_SITE = re.compile(r"^L(\d+)\.(head(\d+)|attn_out|resid_mid|mlp_out|resid_post)$")


@dataclass(frozen=True)
class ProbeSite:
    """One place in the probed model whose activation is inverted."""

    name: str
    """``embed``, ``L{l}.head{h}``, ``L{l}.attn_out``, ``L{l}.resid_mid``, ``L{l}.mlp_out`` or
    ``L{l}.resid_post``."""
    hook: str
    """The hook the activation is read at (``blocks.l.attn.hook_z`` for a head)."""
    layer: int | None = None
    head: int | None = None
    """For a head site: which head's output (z_h·W_O[h])."""


def parse_site(name: str, model: HookedModel) -> ProbeSite:
    """The site named ``name`` in ``model``.

    Raises:
        ConfigError: a malformed name, or a layer or head the model does not have.
    """
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if name == "embed":
        return ProbeSite(name, hooks.resid_pre(0))
    match = _SITE.match(name)
    if match is None:
        raise ConfigError(
            f"site {name!r} is not a site name: use embed, L<layer>.head<h>, or L<layer>. followed "
            f"by one of {', '.join(_LAYER_SITES)} (e.g. L0.head0, L1.resid_post)"
        )
    layer = int(match.group(1))
    if layer >= n_layers:
        raise ConfigError(f"site {name!r}: the model has layers 0–{n_layers - 1}")
    kind = match.group(2)
    if match.group(3) is not None:
        head = int(match.group(3))
        if head >= n_heads:
            raise ConfigError(f"site {name!r}: the model has heads 0–{n_heads - 1} per layer")
        return ProbeSite(name, hooks.attn_z(layer), layer, head)
    hook = {
        "attn_out": hooks.attn_out,
        "resid_mid": hooks.resid_mid,
        "mlp_out": hooks.mlp_out,
        "resid_post": hooks.resid_post,
    }[kind](layer)
    if hook not in model.hook_dict:
        raise ConfigError(
            f"site {name!r}: this model has no {hook} (an attention-only model has no MLP)"
        )
    return ProbeSite(name, hook, layer)


def all_sites(model: HookedModel) -> list[ProbeSite]:
    """Every site of the model, in the order the residual stream meets them."""
    names = ["embed"]
    for layer in range(int(model.cfg.n_layers)):
        names += [f"L{layer}.head{h}" for h in range(int(model.cfg.n_heads))]
        names += [f"L{layer}.{kind}" for kind in _LAYER_SITES]
    return [parse_site(n, model) for n in names if _has(model, n)]


def _has(model: HookedModel, name: str) -> bool:
    try:
        parse_site(name, model)
    except ConfigError:
        return False
    return True


def site_activations(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    site: ProbeSite,
    batch_size: int = 512,
) -> Float[torch.Tensor, "batch pos d_model"]:
    """The site's activation at every position of every input (no gradients; the model's
    train/eval mode is left as it was).

    A head's activation is its output written into the residual stream, z_h·W_O[h] (``b_O``
    belongs to no head).
    """
    check_token_ids(tokens, int(model.cfg.d_vocab), "tokens")
    training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for chunk in tokens.split(batch_size):
                _, cache = model.run_with_cache(chunk, names_filter=lambda n: n == site.hook)
                act = cache[site.hook]
                if site.head is not None:
                    w_o = model.W_O[site.layer][site.head]  # [d_head, d_model]
                    act = act[:, :, site.head] @ w_o
                parts.append(act)
    finally:
        model.train(training)
    return torch.cat(parts)


@dataclass(frozen=True)
class DecoderBatch:
    """Training pairs for a decoder: each input with one of its activations and where it was read."""

    tokens: Int[torch.Tensor, "batch pos"]
    """The inputs the decoder learns to write."""
    acts: Float[torch.Tensor, "batch d_model"]
    sites: Int[torch.Tensor, " batch"]
    """Index into the list of sites the batch was drawn from."""
    positions: Int[torch.Tensor, " batch"]
    """The position each activation was read at; -1 for a row given the site's no-information
    activation."""


@no_type_check  # checks its own inputs with tinylens errors
def decoder_batch(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    sites: list[ProbeSite],
    generator: torch.Generator,
    *,
    positions: Bool[torch.Tensor, "batch pos"] | None = None,
    site_weights: Float[torch.Tensor, " site"] | None = None,
    null_acts: Float[torch.Tensor, "site d_model"] | None = None,
    null_frac: float = 0.0,
) -> DecoderBatch:
    """Pairs (input, activation at a random site and position), made on the fly from the model.

    Args:
        model: the probed model.
        tokens: the inputs.
        sites: the sites a decoder is trained on; each row draws one by ``site_weights``
            (default uniform).
        generator: seeds every draw.
        positions: where activations may be read, per row (default everywhere); the paper reads
            counting at the query letter and ``:`` only.
        null_acts: per site, an activation that carries no information about the input (see
            :func:`null_activations`), given to ``null_frac`` of the rows so the decoder learns
            the prior it is compared against.
        null_frac: share of rows given ``null_acts``.

    Raises:
        ConfigError: no sites, a row with no allowed position, bad weights or null settings.
    """
    n, seq = tokens.shape
    if not sites:
        raise ConfigError("a decoder batch needs at least one site")
    if positions is None:
        positions = torch.ones(n, seq, dtype=torch.bool)
    if positions.shape != tokens.shape or not bool(positions.any(1).all()):
        raise ConfigError("positions must be a [batch, pos] mask with at least one position per row")
    weights = torch.ones(len(sites)) if site_weights is None else site_weights.double()
    if weights.shape != (len(sites),) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ConfigError(f"site_weights must be {len(sites)} non-negative weights, not all zero")
    if not 0.0 <= null_frac <= 1.0 or (null_frac > 0 and null_acts is None):
        raise ConfigError("null_frac must be in [0, 1], and needs null_acts when above 0")
    d_model = int(model.cfg.d_model)
    if null_acts is not None and null_acts.shape != (len(sites), d_model):
        raise ConfigError(
            f"null_acts must have shape [{len(sites)}, {d_model}] (one per site), "
            f"got {list(null_acts.shape)}"
        )
    site = torch.multinomial(weights.double(), n, replacement=True, generator=generator)
    # a uniform allowed position per row: the largest random key among the allowed ones
    keys = torch.rand(n, seq, generator=generator).masked_fill(~positions, -1.0)
    position = keys.argmax(1)
    null = torch.zeros(n, dtype=torch.bool)
    if null_acts is not None and null_frac > 0:
        null = torch.rand(n, generator=generator) < null_frac
    acts = torch.empty(n, d_model)
    for i, s in enumerate(sites):
        rows = ((site == i) & ~null).nonzero().flatten()
        if len(rows):
            acts[rows] = site_activations(model, tokens[rows], s)[
                torch.arange(len(rows)), position[rows]
            ].float()
    if bool(null.any()):
        assert null_acts is not None
        acts[null] = null_acts.float()[site[null]]
    return DecoderBatch(tokens, acts, site, torch.where(null, -1, position))


@no_type_check  # checks its own inputs with tinylens errors
def null_activations(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    sites: list[ProbeSite],
    positions: Bool[torch.Tensor, "batch pos"] | None = None,
) -> Float[torch.Tensor, "site d_model"]:
    """Per site, the mean activation over ``tokens`` at the ``positions`` marked (default all).

    A constant per site, so it tells a decoder nothing about any one input: the "no information"
    activation that likelihood shifts are measured against. (The paper uses the activation at the
    BOS token, also a constant under causal attention; a mean stays within the distribution the
    decoder is trained on, where a BOS head output need not.)
    """
    if positions is None:
        positions = torch.ones(tokens.shape, dtype=torch.bool)
    if positions.shape != tokens.shape or not bool(positions.any()):
        raise ConfigError("positions must be a [batch, pos] mask marking at least one position")
    return torch.stack([site_activations(model, tokens, s)[positions].float().mean(0) for s in sites])


@no_type_check  # checks its own inputs with tinylens errors
def distance(
    z: Float[torch.Tensor, "*rows d"], query: Float[torch.Tensor, " d"], metric: Metric = "l2"
) -> Float[torch.Tensor, " *rows"]:
    """D(z, z_q): ``‖z − z_q‖ / ‖z_q‖`` (``l2``) or ``1 − cos(z, z_q)`` (``cosine``).

    Raises:
        ConfigError: an unknown metric, or a query of norm 0 (D is undefined).
    """
    if metric not in get_args(Metric):
        raise unknown_name("distance metric", metric, get_args(Metric))
    norm = float(query.norm())
    if norm == 0.0:
        raise ConfigError("the query activation is all zeros: its relative distance is undefined")
    if metric == "l2":
        return (z - query).norm(dim=-1) / norm
    return 1 - (z @ query) / (z.norm(dim=-1).clamp_min(torch.finfo(z.dtype).tiny) * norm)


@no_type_check  # checks its own inputs with tinylens errors
def preimage_distance(
    activations: Float[torch.Tensor, "cand pos d"],
    query: Float[torch.Tensor, " d"],
    *,
    metric: Metric = "l2",
    positions: Bool[torch.Tensor, "cand pos"] | None = None,
) -> Float[torch.Tensor, " cand"]:
    """Each candidate's distance to the query: the minimum of D over its positions (all, or those
    ``positions`` marks; a candidate with none marked is infinitely far)."""
    d = distance(activations, query, metric)
    if positions is not None:
        if positions.shape != d.shape:
            raise ConfigError(
                f"positions has shape {list(positions.shape)}; the activations give {list(d.shape)}"
            )
        d = d.masked_fill(~positions, math.inf)
    return d.min(dim=-1).values


def check_epsilon(epsilon: float | int) -> float:
    """``epsilon`` as a float, or a ConfigError unless it is a finite number > 0."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon < math.inf:
        raise ConfigError(f"ε must be a number > 0 (the paper uses {EPSILON}), got {epsilon!r}")
    return float(epsilon)


def in_preimage(
    distances: Float[torch.Tensor, " cand"], epsilon: float | int = EPSILON
) -> Bool[torch.Tensor, " cand"]:
    """Which candidates lie inside the ε-preimage (D < ε)."""
    return distances < check_epsilon(epsilon)


class Sampler(Protocol):
    """A conditional decoder: writes inputs given activations and site indices."""

    def sample(
        self,
        acts: torch.Tensor,
        sites: torch.Tensor,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor: ...


SETTINGS: tuple[tuple[float, float], ...] = ((0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1))
"""The paper's (temperature, noise) settings; noise is Gaussian with σ = noise · std(query)."""


@dataclass(frozen=True)
class InversionSamples:
    """The distinct inputs a decoder wrote for one query, nearest first."""

    tokens: Int[torch.Tensor, "sample pos"]
    distances: Float[torch.Tensor, " sample"]
    """D to the query, the minimum over each input's (allowed) positions."""
    counts: Int[torch.Tensor, " sample"]
    """How often each input was written."""
    epsilon: float

    @property
    def inside(self) -> Bool[torch.Tensor, " sample"]:
        return self.distances < self.epsilon

    @property
    def share_inside(self) -> float:
        """Share of all written inputs (duplicates counted) inside the ε-preimage."""
        total = int(self.counts.sum())
        return float(self.counts[self.inside].sum()) / total if total else math.nan


@no_type_check  # checks its own inputs with tinylens errors
def invert(
    model: HookedModel,
    decoder: Sampler,
    query: Float[torch.Tensor, " d_model"],
    site: ProbeSite,
    site_index: int,
    generator: torch.Generator,
    *,
    per_setting: int = 64,
    settings: tuple[tuple[float, float], ...] = SETTINGS,
    epsilon: float = EPSILON,
    metric: Metric = "l2",
    allowed: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> InversionSamples:
    """Sample inputs for a query activation and keep each with its true distance.

    Every (temperature, noise) setting writes ``per_setting`` inputs from the query (plus noise);
    each is re-run through the probed model at the site, its distance taken as the minimum over its
    positions (those ``allowed(tokens)`` marks, default all), duplicates merged.

    Args:
        model: the probed model.
        decoder: a decoder trained on this model's sites.
        query: the activation to invert.
        site: where it was read; ``site_index`` is that site's index for the decoder.
        generator: seeds the noise and the sampling.
        per_setting: inputs written per setting.
        settings: (temperature, noise) pairs.
        epsilon: the preimage's threshold (> 0).
        metric: ``l2`` or ``cosine``.
        allowed: ``tokens → [batch, pos]`` mask of the positions a candidate may match at.

    Raises:
        ConfigError: ε ≤ 0, no settings, a non-positive ``per_setting`` or a negative noise.
    """
    epsilon = check_epsilon(epsilon)
    if (
        not settings
        or isinstance(per_setting, bool)
        or not isinstance(per_setting, int)
        or per_setting < 1
    ):
        raise ConfigError("invert needs at least one (temperature, noise) setting and per_setting ≥ 1")
    std = float(query.std())
    written = []
    for temperature, noise in settings:
        if noise < 0:
            raise ConfigError(f"noise must be ≥ 0, got {noise}")
        acts = query.float().expand(per_setting, -1).clone()
        if noise:
            acts += noise * std * torch.randn(acts.shape, generator=generator)
        sites = torch.full((per_setting,), site_index, dtype=torch.int64)
        written.append(decoder.sample(acts, sites, temperature=temperature, generator=generator))
    distinct, counts = torch.unique(torch.cat(written), dim=0, return_counts=True)
    acts = site_activations(model, distinct, site)
    mask = None if allowed is None else allowed(distinct)
    distances = preimage_distance(acts, query.to(acts.dtype), metric=metric, positions=mask)
    order = distances.argsort()
    return InversionSamples(distinct[order], distances[order], counts[order], epsilon)


@dataclass(frozen=True)
class Completeness:
    """How much of the true ε-preimage a set of samples finds, on an enumerated input space."""

    recall: float
    """Share of the true preimage (inputs with D < ε) that the samples contain; NaN if it is empty."""
    precision: float
    """Share of the distinct samples that are inside the preimage; NaN without samples."""
    preimage_size: int
    n_samples: int
    """Distinct samples."""


def completeness(
    true_distances: Float[torch.Tensor, " input"],
    sampled: Int[torch.Tensor, " sample"],
    epsilon: float | int = EPSILON,
) -> Completeness:
    """Recall and precision of samples against the exact preimage.

    Args:
        true_distances: D of every input of the enumerated space to the query.
        sampled: indices into that space of the decoder's samples (duplicates count once).
        epsilon: the preimage's threshold.
    """
    inside = in_preimage(true_distances, epsilon)
    if len(sampled) and (int(sampled.min()) < 0 or int(sampled.max()) >= len(true_distances)):
        raise ConfigError(f"sample indices must lie in 0–{len(true_distances) - 1}")
    distinct = torch.unique(sampled)
    found = int(inside[distinct].sum())
    size = int(inside.sum())
    return Completeness(
        recall=found / size if size else math.nan,
        precision=found / len(distinct) if len(distinct) else math.nan,
        preimage_size=size,
        n_samples=len(distinct),
    )
