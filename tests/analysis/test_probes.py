"""Linear probes: they find planted linear signal, not noise, and read the right activations."""

from __future__ import annotations

import pytest
import torch

from tinylens import hooks
from tinylens.analysis.probes import fit_probes, residual_at, residual_names, shuffled_labels
from tinylens.errors import ConfigError, UnknownNameError
from tinylens.model import build_model

from ..helpers import model_cfg


def planted(n: int = 800, d: int = 12, labels: int = 5, seed: int = 0):
    """Site 0: pure noise. Site 1: each label is the sign of a random direction of it."""
    gen = torch.Generator().manual_seed(seed)
    signal = torch.randn(n, d, generator=gen)
    directions = torch.randn(d, labels, generator=gen)
    y = (signal @ directions) > 0
    noise = torch.randn(n, d, generator=gen)
    return torch.stack([noise, signal]), y


def test_probe_reads_a_planted_linear_label_and_not_noise() -> None:
    features, labels = planted()
    result = fit_probes(features, labels, seed=0)
    assert result.accuracy[1] > 0.95
    assert result.f1[1] > 0.95
    assert result.accuracy[0] < 0.65  # noise: chance for balanced labels
    assert result.best_site == 1
    assert result.predictions.shape == (2, 200, 5)
    assert result.label_accuracy.shape == (2, 5)


def test_shuffled_labels_destroy_the_signal() -> None:
    features, labels = planted()
    shuffled = shuffled_labels(labels, seed=1)
    assert sorted(shuffled.sum(0).tolist()) == sorted(labels.sum(0).tolist())  # same marginals
    assert fit_probes(features, shuffled, seed=0).accuracy[1] < 0.65


def test_majority_baseline_matches_a_constant_guess() -> None:
    features, _ = planted()
    labels = torch.zeros(800, 3, dtype=torch.bool)
    labels[:600, 0] = True  # label 0 is 75% True, labels 1 and 2 always False
    result = fit_probes(features, labels, seed=0)
    test_truth = labels[result.test_index]
    expected = (test_truth[:, 0].float().mean() + 2) / 3
    assert result.majority == pytest.approx(float(expected))


def test_probe_is_deterministic() -> None:
    features, labels = planted()
    a, b = fit_probes(features, labels, seed=3), fit_probes(features, labels, seed=3)
    assert torch.equal(a.predictions, b.predictions)


def test_bad_labels_are_rejected() -> None:
    features, labels = planted()
    with pytest.raises(ConfigError, match="labels must be"):
        fit_probes(features, labels[:10], seed=0)
    with pytest.raises(ConfigError, match="test_share"):
        fit_probes(features, labels, test_share=1.0)


def test_residual_at_reads_the_cache_at_one_position() -> None:
    model = build_model(model_cfg(n_layers=2), seed=1).eval()
    tokens = torch.randint(0, 12, (10, 18), generator=torch.Generator().manual_seed(0))
    feats = residual_at(model, tokens, position=7, batch_size=3)
    names = residual_names(model)
    assert names == [hooks.resid_pre(0), hooks.resid_pre(1), hooks.resid_post(1)]
    _, cache = model.run_with_cache(tokens)
    for i, name in enumerate(names):
        torch.testing.assert_close(feats[i], cache[name][:, 7])
    with pytest.raises(UnknownNameError):
        residual_at(model, tokens, 0, names=["blocks.0.hook_resid_prex"])
