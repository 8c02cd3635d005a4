"""Geometry of embedding vectors: a 2-D projection and how well distances match a known layout.

Background:
    If a model has learned that tokens stand for points in a space (coordinates of a grid, numbers on
    a line), the distances between their embedding vectors track the distances between the points.
    We measure this with the Spearman rank correlation over all pairs (monotone, not linear, so a
    curved but faithful map still counts) and draw the vectors' two leading principal components.

Usage:
    geometry = embedding_geometry(model.W_E[coord_ids], coords)   # coords: [token, 2] lattice points
    geometry.spearman, geometry.projection                        # float, [token, 2]

References:
    Ivanitskiy, Spies et al. 2023 (coordinate embeddings of a maze solver form the lattice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float

from tinylens.errors import ConfigError


@dataclass(frozen=True)
class EmbeddingGeometry:
    """How a set of embedding vectors lies compared with known points."""

    projection: Float[torch.Tensor, "token 2"]
    """The vectors on their two leading principal components."""
    explained: Float[torch.Tensor, " 2"]
    """Share of the variance each of those components explains."""
    spearman: float
    """Rank correlation of pairwise embedding distance with pairwise point distance."""
    pearson: float
    """Linear correlation of the same pairs."""


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), as SciPy's ``rankdata``."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # rank of each tie group's first member
    mean_rank = first.to(x.dtype) + (counts.to(x.dtype) - 1) / 2
    ranks[order] = mean_rank[inverse]
    return ranks


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denominator) if denominator > 0 else 0.0


def rank_correlation(a: Float[torch.Tensor, " n"], b: Float[torch.Tensor, " n"]) -> float:
    """Spearman's rank correlation (average ranks for ties; 0 when either side is constant).

    Written here rather than taken from SciPy, which the package does not otherwise need."""
    return _pearson(_ranks(a.double()), _ranks(b.double()))


def embedding_geometry(
    vectors: Float[torch.Tensor, "token d"],
    points: Float[torch.Tensor, "point dim"],  # point == token, checked with a clear error
    *,
    point_metric: str = "manhattan",
) -> EmbeddingGeometry:
    """Compare embedding distances with the distances of the points the tokens stand for.

    Args:
        vectors: one embedding per token.
        points: where each token's referent lies (e.g. a grid cell's row and column).
        point_metric: ``manhattan`` (lattice steps) or ``euclidean`` distance between points.
    """
    if vectors.shape[0] != points.shape[0] or vectors.shape[0] < 3:
        raise ConfigError(
            f"need one point per vector and at least 3 of each, got {vectors.shape[0]} vectors and "
            f"{points.shape[0]} points"
        )
    if point_metric not in ("manhattan", "euclidean"):
        raise ConfigError(f"point_metric must be manhattan or euclidean, got {point_metric!r}")
    x = vectors.detach().double()
    p = points.double()
    pairs = torch.triu_indices(len(x), len(x), offset=1)
    # exact differences, not cdist's ‖x‖² + ‖y‖² − 2x·y (an error of √(ε‖x‖²) that reorders ties)
    emb_dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")[pairs[0], pairs[1]]
    norm = 1.0 if point_metric == "manhattan" else 2.0
    point_dist = torch.cdist(p, p, p=norm, compute_mode="donot_use_mm_for_euclid_dist")
    point_dist = point_dist[pairs[0], pairs[1]]

    centred = x - x.mean(0)
    _, singular, v = torch.linalg.svd(centred, full_matrices=False)
    variance = singular.pow(2)
    return EmbeddingGeometry(
        projection=(centred @ v[:2].T).float(),
        explained=(variance[:2] / variance.sum().clamp_min(1e-12)).float(),
        spearman=rank_correlation(emb_dist, point_dist),
        pearson=_pearson(emb_dist, point_dist),
    )
