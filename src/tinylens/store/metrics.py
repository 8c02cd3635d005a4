"""A run's ``metrics.jsonl`` (one ``{"step", "name", "value"}`` object a line, append-only), and
:class:`MetricSeries`, the arrays metrics are read back as."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinylens.store.files import atomic_path

MetricRow = tuple[int, str, float]
"""``(step, name, value)``."""


def _encode_value(value: float) -> float | str:
    """JSON has no NaN or infinity: those are written as the strings "nan", "inf", "-inf"."""
    return value if math.isfinite(value) else repr(value)


def _metric_line(row: MetricRow) -> str:
    step, name, value = row
    obj = {"step": step, "name": name, "value": _encode_value(value)}
    return json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n"


def _parse_metric_line(line: str) -> MetricRow | None:
    """The row of one line, or None for a line that is not one (a kill -9 can cut the last)."""
    try:
        obj = json.loads(line)
        value = obj["value"]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None
        return int(obj["step"]), str(obj["name"]), float(value)
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics_file(path: Path) -> list[MetricRow]:
    """Every ``(step, name, value)`` row of a ``metrics.jsonl``, in file order; [] if none.

    Lines that do not parse (a truncated last line after a crash) are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = (_parse_metric_line(line) for line in text.splitlines())
    return [r for r in rows if r is not None]


def _append_metrics(path: Path, rows: list[MetricRow]) -> None:
    """Append rows in one write; first cut a partial last line left by a killed writer."""
    with path.open("a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                keep = f.read().rfind(b"\n") + 1
                f.truncate(keep)
        f.write("".join(_metric_line(r) for r in rows).encode())


def _drop_metrics_after(path: Path, step: int) -> None:
    """Rewrite ``path`` without rows after ``step`` (and without unreadable lines), if any."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    rows = [_parse_metric_line(line) for line in lines]
    kept = [line for line, row in zip(lines, rows, strict=True) if row is not None and row[0] <= step]
    if len(kept) == len(lines) and (not lines or lines[-1].endswith("\n")):
        return
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")


@dataclass(frozen=True)
class MetricSeries:
    """One metric over training: ``steps[i]`` → ``values[i]``, ascending steps."""

    steps: np.ndarray
    values: np.ndarray
