"""A sweep's report: one table of every trial, and each metric drawn against an axis.

Each figure plots one metric (y) against the report's ``x`` axis: a dot per trial, and a line through
the mean at each ``x``, one line per value of ``group``. Written into the sweep's run folder as
``report.html`` (self-contained) and ``figures/*.png``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tinylens.store import Run
from tinylens.studies.framework import versions
from tinylens.studies.report import Section, new_figure, render_report
from tinylens.sweep.driver import TIME_METRICS, TrialResult
from tinylens.sweep.spec import SweepSpec

TRIAL_AXIS = "trial"
"""The x axis when a sweep has no axis of its own (one trial per point)."""


@dataclass(frozen=True)
class Layout:
    """What the report draws."""

    x: str
    group: str | None
    metrics: tuple[str, ...]


def layout(spec: SweepSpec, trials: list[TrialResult]) -> Layout:
    """The spec's ``[report]`` choices, with defaults for what it leaves out."""
    x = spec.report.x
    if x is None:
        varied = [a for a in spec.axes if len({_key(t.axes.get(a)) for t in trials}) > 1]
        x = varied[0] if varied else TRIAL_AXIS
    metrics = spec.report.metrics
    if not metrics:
        names = dict.fromkeys(m for t in trials for m in t.metrics)
        metrics = tuple(m for m in names if m not in TIME_METRICS and m != "steps")
    return Layout(x, spec.report.group, metrics)


def write_report(run: Run, spec: SweepSpec, trials: list[TrialResult]) -> Path:
    """Render the report into the sweep's run folder; return the path of ``report.html``."""
    chosen = layout(spec, trials)
    done = [t for t in trials if t.status == "done"]
    meta = [
        f"{len(trials)} trials of {spec.task} (preset {spec.preset}) over "
        + (", ".join(spec.axes) or "no axis")
        + f"; {len(done)} done, {len(trials) - len(done)} not",
        f"x: {chosen.x}; lines: {chosen.group or 'one (trials sharing an x are averaged)'}; "
        + ", ".join(f"{k} {v}" for k, v in versions().items()),
    ]
    sections = [_table_section(spec, trials, chosen)]
    for metric in chosen.metrics:
        if any(metric in t.metrics and not math.isnan(t.metrics[metric]) for t in done):
            sections.append(
                Section(
                    metric,
                    f"{metric} of each finished trial against {chosen.x}; the line joins the means.",
                    figures=[
                        (metric_figure(done, metric, chosen.x, chosen.group), f"{metric} vs {chosen.x}")
                    ],
                )
            )
    html, pngs = render_report(f"Sweep {spec.name}", meta, [], sections)
    for name, png in pngs.items():
        run.write_figure_png(name, png)
    return run.write_report(html)


def _table_section(spec: SweepSpec, trials: list[TrialResult], chosen: Layout) -> Section:
    header = ["trial", *spec.axes, "status", *chosen.metrics, "run"]
    rows = [
        [
            t.trial,
            *(t.axes.get(a, "") for a in spec.axes),
            f"{t.status}: {t.error}" if t.error else t.status,
            *(_shown(t.metrics.get(m)) for m in chosen.metrics),
            t.run,
        ]
        for t in trials
    ]
    return Section(
        "Trials", "Every trial, its axis values and its measurements.", tables=[(header, rows)]
    )


def metric_figure(trials: list[TrialResult], metric: str, x: str, group: str | None) -> Figure:
    """``metric`` against axis ``x``: a dot per trial, a line of means per ``group`` value."""
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    xs = [_axis_value(t, x) for t in trials]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in xs)
    ticks = sorted({_key(v) for v in xs}, key=str) if not numeric else []
    series: dict[Any, list[tuple[Any, float]]] = defaultdict(list)
    for trial, value in zip(trials, xs, strict=True):
        y = trial.metrics.get(metric, math.nan)
        if not math.isnan(y):
            position = value if numeric else ticks.index(_key(value))
            series[_key(trial.axes.get(group)) if group else None].append((position, y))
    for label, points in sorted(series.items(), key=lambda item: str(item[0])):
        by_x: dict[Any, list[float]] = defaultdict(list)
        for px, py in points:
            by_x[px].append(py)
        line_x = sorted(by_x)
        (line,) = ax.plot(line_x, [sum(by_x[v]) / len(by_x[v]) for v in line_x], marker="",
                          label=f"{group} = {label}" if group else "mean")  # fmt: skip
        ax.scatter(
            [p[0] for p in points], [p[1] for p in points], color=line.get_color(), s=18, alpha=0.7
        )
    distinct = sorted({v for v in xs if v is not None}, key=str) if numeric else []
    if not numeric:
        ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
    elif _spans_decades(xs):
        ax.set_xscale("log")
    elif all(isinstance(v, int) for v in distinct) and len(distinct) <= 12:
        ax.set_xticks(sorted(distinct))  # integer axes (layers, seeds): no 1.2 layers
    ys = [y for points in series.values() for _, y in points]
    if _spans_decades(ys):
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    if group:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _axis_value(trial: TrialResult, axis: str) -> Any:
    return trial.trial if axis == TRIAL_AXIS else trial.axes.get(axis)


def _key(value: Any) -> Any:
    """A hashable stand-in for an axis value (lists and tables, e.g. a choice of tables, as text)."""
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


def _spans_decades(values: list[Any]) -> bool:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return bool(numbers) and min(numbers) > 0 and max(numbers) / min(numbers) >= 30


def _shown(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.4g}"
