"""Training curves: where a loss curve has its phase change.

Background:
    A per-digit loss often sits on a plateau, then falls steeply (a "phase change"). On a smoothed,
    monotone version of log(loss) (moving average, then running minimum), the phase is located by
    where the curve has covered 10%, 50% and 90% of its total fall from start to end. Comparing the
    50% points of several curves tells whether they learn together or one after another.

Usage:
    phase = locate_phase(steps, losses)    # Phase(start=…, mid=…, end=…, drop=…)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Phase:
    """Where a loss curve falls, in training steps."""

    start: int
    """First step where 10% of the fall in log-loss is done."""
    mid: int
    """First step where half of the fall in log-loss is done."""
    end: int
    """First step where 90% of the fall in log-loss is done."""
    drop: float
    """Total fall, in natural-log units of loss (log L_start − log L_end); ≤ 0 means no fall."""


def moving_mean_log(values: np.ndarray, window: int = 9) -> np.ndarray:
    """Moving average of log(values) over ``window`` points (edges padded), same length."""
    logs = np.log(np.clip(np.asarray(values, dtype=np.float64), 1e-12, None))
    if window <= 1 or len(logs) <= window:
        return logs
    padded = np.pad(logs, window // 2, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def smooth_log(values: np.ndarray, window: int = 9) -> np.ndarray:
    """:func:`moving_mean_log`, made monotone by a running minimum."""
    return np.minimum.accumulate(moving_mean_log(values, window))


def locate_phase(steps: np.ndarray, values: np.ndarray, window: int = 9) -> Phase:
    """Locate the fall of one loss curve (see the module docstring)."""
    if len(steps) == 0 or len(steps) != len(values):
        raise ValueError(f"need equal, non-empty steps and values; got {len(steps)}, {len(values)}")
    curve = smooth_log(np.asarray(values, dtype=np.float64), window)
    drop = float(curve[0] - curve[-1])
    if drop <= 0:
        last = int(steps[-1])
        return Phase(last, last, last, drop)

    def first_step(fraction: float) -> int:
        return int(steps[np.argmax(curve <= curve[0] - fraction * drop)])

    return Phase(first_step(0.1), first_step(0.5), first_step(0.9), drop)
