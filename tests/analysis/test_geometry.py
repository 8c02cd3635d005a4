"""Embedding geometry: rank correlation against a brute-force definition, PCA on known layouts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tinylens.analysis.geometry import embedding_geometry, rank_correlation
from tinylens.errors import ConfigError


def brute_spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x: np.ndarray) -> np.ndarray:
        # average rank of equal values, by definition
        return np.array([np.mean([j for j, y in enumerate(sorted(x)) if y == v]) for v in x])

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


@pytest.mark.parametrize("seed", range(5))
def test_rank_correlation_matches_the_definition_with_ties(seed: int) -> None:
    gen = np.random.default_rng(seed)
    a = gen.integers(0, 6, 40).astype(float)  # many ties
    b = a + gen.integers(0, 4, 40)
    expected = brute_spearman(a, b)
    assert rank_correlation(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-12)


def test_rank_correlation_of_a_constant_is_zero() -> None:
    assert rank_correlation(torch.ones(5), torch.arange(5.0)) == 0.0


def lattice(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(n), range(n))), dtype=torch.float32)


def test_a_lattice_embedded_by_a_rotation_is_recovered() -> None:
    points = lattice(4)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
    vectors = torch.cat([points, torch.zeros(16, 14)], dim=1) @ rotation  # [16 tokens, 16]
    geometry = embedding_geometry(vectors, points, point_metric="euclidean")
    assert geometry.pearson == pytest.approx(1.0, abs=1e-6)
    assert geometry.spearman > 0.98  # equal lattice distances differ by rounding in the embedding
    assert float(geometry.explained.sum()) == pytest.approx(1.0, abs=1e-6)
    # the projection keeps every pairwise distance of the planar layout. Exact differences: past
    # 25 rows cdist's default takes ‖x‖² + ‖y‖² − 2x·y, off by √(ε‖x‖²), up to 1e-3 in float32 here
    exact = "donot_use_mm_for_euclid_dist"
    torch.testing.assert_close(
        torch.cdist(geometry.projection, geometry.projection, compute_mode=exact),
        torch.cdist(points, points, compute_mode=exact),
        atol=1e-4,
        rtol=0,
    )
    assert embedding_geometry(vectors, points).spearman > 0.9  # Manhattan: monotone, not linear


def test_random_vectors_do_not_track_the_lattice() -> None:
    vectors = torch.randn(25, 64, generator=torch.Generator().manual_seed(0))
    assert abs(embedding_geometry(vectors, lattice(5)).spearman) < 0.2


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ConfigError, match="one point per vector"):
        embedding_geometry(torch.randn(5, 3), lattice(2))
    with pytest.raises(ConfigError, match="point_metric"):
        embedding_geometry(torch.randn(4, 3), lattice(2), point_metric="cosine")
