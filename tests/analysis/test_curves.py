"""Phase location on synthetic loss curves whose phase is known."""

from __future__ import annotations

import numpy as np

from tinylens.analysis.curves import locate_phase


def sigmoid_drop(steps: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Loss falling from 2.3 to 0.001 in log space, centred on ``centre``."""
    frac = 1 / (1 + np.exp(-(steps - centre) / width))
    return np.exp(np.log(2.3) + frac * (np.log(0.001) - np.log(2.3)))


def test_phase_midpoint_is_found() -> None:
    steps = np.arange(0, 5000, 10)
    for centre in (800, 2500):
        phase = locate_phase(steps, sigmoid_drop(steps, centre, 100))
        assert abs(phase.mid - centre) <= 30
        assert phase.start < phase.mid < phase.end
        assert phase.drop > 7


def test_noise_does_not_move_the_phase_much() -> None:
    steps = np.arange(0, 5000, 10)
    noisy = sigmoid_drop(steps, 2000, 150) * np.exp(np.random.default_rng(0).normal(0, 0.3, len(steps)))
    assert abs(locate_phase(steps, noisy).mid - 2000) <= 100


def test_flat_curve_has_no_drop() -> None:
    steps = np.arange(100)
    phase = locate_phase(steps, np.full(100, 1.5))
    assert phase.drop <= 0 and phase.mid == 99
