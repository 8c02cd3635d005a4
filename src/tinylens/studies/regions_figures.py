"""Figures and report sections of the regions study, drawn from its typed result."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tinylens.studies.regions_analyses import BOUNDARY, METRICS, SAME_REGION, Sharpness
from tinylens.studies.report import Section, new_figure, pct

if TYPE_CHECKING:
    from tinylens.studies.regions import RegionsResult, SizeRegions

TRAINED, INIT, BASELINE = "tab:blue", "tab:grey", "tab:orange"


def _thresholds(ax, *, vertical: bool = True) -> None:
    line = ax.axvline if vertical else ax.axhline
    line(SAME_REGION, color="green", ls=":", lw=1, label=f"same region < {SAME_REGION}")
    line(BOUNDARY, color="red", ls=":", lw=1, label=f"boundary > {BOUNDARY:g}")


METRIC_NAMES = {"l2": "L2 of the final residual", "kl": "KL of the next-token distribution"}


def curves_figure(result: RegionsResult) -> Figure:
    """Per size and metric: median normalised distance with its 25–75% band, trained against
    random init."""
    sizes = result.sizes
    fig = new_figure(3.3 * len(sizes), 6.4)
    alphas = np.linspace(0, 1, result.config.steps)
    for row, metric in enumerate(METRICS):
        for k, size in enumerate(sizes):
            ax = fig.add_subplot(len(METRICS), len(sizes), row * len(sizes) + k + 1)
            for regions, color, label in (
                (size.init, INIT, "random init"),
                (size.trained, TRAINED, "trained"),
            ):
                band = regions.curves[metric]
                ax.fill_between(alphas, band.q25, band.q75, color=color, alpha=0.25, lw=0)
                ax.plot(alphas, band.median, color=color, label=label)
            ax.plot([0, 1], [0, 1], color="black", ls="--", lw=0.8, label="straight line")
            ax.set(
                title=f"{size.name}: {metric.upper()}",
                xlabel="α" if row == len(METRICS) - 1 else None,
                ylabel=f"{METRIC_NAMES[metric]}\n(α) / (1)" if k == 0 else None,
                ylim=(-0.05, 1.3),
            )
            ax.title.set_fontsize(9)
            if k == 0 and row == 0:
                ax.legend(fontsize=7)
    return fig


def _log_bins(values: list[list[float]]) -> np.ndarray:
    flat = [v for vs in values for v in vs if v > 0]
    high = max([BOUNDARY * 1.5, *flat])
    low = min([0.9, *flat])
    return np.geomspace(low, high * 1.01, 40)


def sharpness_histogram(size: SizeRegions) -> Figure:
    """Sharpness of the consecutive pairs per metric: trained, random init and the
    random-direction baseline."""
    fig = new_figure(11.0, 3.8)
    for col, metric in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), col + 1)
        sets = (
            (size.trained.of("all", metric), TRAINED, "trained"),
            (size.init.of("all", metric), INIT, "random init"),
            (size.trained.baseline[metric], BASELINE, "trained, covariance-random directions"),
        )
        bins = _log_bins([s.values for s, _, _ in sets])
        for s, color, label in sets:
            if s.values:
                ax.hist(
                    s.values, bins=bins, color=color, alpha=0.5, label=f"{label} (median {s.median:.2f})"
                )
        _thresholds(ax)
        ax.set(
            xscale="log",
            xlabel="boundary sharpness (log)",
            ylabel="pairs",
            title=f"{size.name}: {METRIC_NAMES[metric]}",
        )
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    return fig


def _band(ax, x, stats: list[Sharpness], color: str, label: str) -> None:
    ax.fill_between(
        x,
        [s.quantile(0.25) for s in stats],
        [s.quantile(0.75) for s in stats],
        color=color,
        alpha=0.2,
        lw=0,
    )
    ax.plot(x, [s.median for s in stats], color=color, marker="o", ms=3, label=label)


def _median_panels(fig: Figure, xlabel: str) -> Iterator[tuple[Axes, str]]:
    """One log-log panel of median sharpness per metric: yields (axes, metric) to draw on, then
    adds the thresholds, labels and legend."""
    for col, metric in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), col + 1)
        yield ax, metric
        _thresholds(ax, vertical=False)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=xlabel,
            ylabel="median sharpness",
            title=METRIC_NAMES[metric],
        )
        ax.legend(fontsize=7)


def training_figure(result: RegionsResult) -> Figure:
    """Median sharpness (25–75% band) against training step per metric, one line per size; step
    0 is drawn at 0.5 (a log axis has no 0)."""
    fig = new_figure(11.0, 4.0)
    for ax, metric in _median_panels(fig, "training step (log; init at 0.5)"):
        for k, size in enumerate(result.sizes):
            steps = [max(c.step, 0.5) for c in size.training]
            _band(ax, steps, [c.of(metric) for c in size.training], f"C{k}", size.name)
    return fig


def size_figure(result: RegionsResult) -> Figure:
    """Median sharpness (25–75% band) against parameter count per metric, trained and at init."""
    fig = new_figure(11.0, 3.8)
    params = [s.n_params for s in result.sizes]
    for ax, metric in _median_panels(fig, "parameters (log)"):
        _band(ax, params, [s.init.of("all", metric) for s in result.sizes], INIT, "random init")
        _band(ax, params, [s.trained.of("all", metric) for s in result.sizes], TRAINED, "trained")
    return fig


def slices_figure(result: RegionsResult) -> Figure | None:
    """Each size's plane through three prompts' activations, coloured by nearness to each output."""
    shown = [s for s in result.sizes if s.slice is not None]
    if not shown:
        return None
    fig = new_figure(3.3 * len(shown), 3.5)
    for k, size in enumerate(shown):
        sl = size.slice
        assert sl is not None
        ax = fig.add_subplot(1, len(shown), k + 1)
        ax.imshow(np.array(sl.rgb), origin="lower", extent=(sl.low, sl.high, sl.low, sl.high))
        middle = (sl.low + sl.high) / 2
        for (x, y), name, mark in zip(sl.corners, sl.names, "ABC", strict=True):
            ax.scatter(x, y, color="white", edgecolors="black", s=40, zorder=3, clip_on=True)
            right = x > middle  # label toward the middle, so it stays inside the image
            ax.annotate(
                f"{mark}: {name}",
                (x, y),
                xytext=(-4 if right else 4, 4),
                textcoords="offset points",
                ha="right" if right else "left",
                fontsize=8,
                color="white",
                annotation_clip=True,
            )
        outside = [m for (x, y), m in zip(sl.corners, "ABC", strict=True) if not sl.low <= x <= sl.high]
        ax.set(
            title=size.name + (f" ({', '.join(outside)} off the grid)" if outside else ""),
            xlabel="α (along B − A)",
            ylabel="β" if k == 0 else None,
            xlim=(sl.low, sl.high),
            ylim=(sl.low, sl.high),
        )
    return fig


def flips_figure(size: SizeRegions) -> Figure:
    """MLP sign flips of pairs in one region, across a boundary, and all."""
    fig = new_figure(7.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    groups = (
        (size.trained.flips, "tab:grey", "all pairs"),
        (size.trained.flips_where(0.0, SAME_REGION), "green", f"one region (< {SAME_REGION})"),
        (size.trained.flips_where(BOUNDARY, math.inf), "red", f"across a boundary (> {BOUNDARY:g})"),
    )
    high = max([1, *size.trained.flips])
    bins = np.linspace(0, high + 1, 30)
    for flips, color, label in groups:
        if flips:
            ax.hist(
                flips,
                bins=bins,
                color=color,
                alpha=0.45,
                label=f"{label}: median {np.median(flips):.0f}, n = {len(flips)}",
            )
    ax.set(
        xlabel=f"last-layer MLP units changing sign (of {size.trained.d_mlp})",
        ylabel="pairs",
        title=f"{size.name}: polytope boundaries crossed between A and B",
    )
    ax.legend(fontsize=8)
    return fig


def answers_figure(result: RegionsResult) -> Figure:
    """Sharpness of same-answer and different-answer pairs per size and metric (trained)."""
    fig = new_figure(max(8.0, 4.4 * len(result.sizes)), 3.8)
    for col, metric in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), col + 1)
        data, positions, colors, ticks = [], [], [], []
        for k, size in enumerate(result.sizes):
            for j, (kind, color) in enumerate((("same", "green"), ("different", "red"))):
                values = size.trained.of(kind, metric).values
                data.append(values if values else [math.nan])
                positions.append(3 * k + j)
                colors.append(color)
            ticks.append(3 * k + 0.5)
        parts = ax.boxplot(data, positions=positions, widths=0.8, patch_artist=True)
        for patch, color in zip(parts["boxes"], colors, strict=True):
            patch.set(facecolor=color, alpha=0.35)
        _thresholds(ax, vertical=False)
        ax.set_xticks(ticks, [s.name for s in result.sizes], fontsize=8)
        ax.set(
            yscale="log",
            ylabel="sharpness (log)",
            title=f"{METRIC_NAMES[metric]}: same (green), different (red)",
        )
        ax.title.set_fontsize(9)
    return fig


def _row(name: str, s: Sharpness) -> list[str]:
    return [
        name,
        str(s.n),
        str(s.dropped),
        f"{s.median:.2f}",
        f"{s.quantile(0.25):.2f}–{s.quantile(0.75):.2f}",
        pct(s.share_same_region, 0),
        pct(s.share_boundary, 0),
    ]


SHARPNESS_HEADER = [
    "pairs",
    "kept",
    "dropped",
    "median",
    "25–75%",
    f"< {SAME_REGION}",
    f"> {BOUNDARY:g}",
]


def sections(result: RegionsResult) -> list[Section]:
    largest = result.largest
    size_rows = [
        [
            s.name,
            f"{s.n_params:,}",
            "-" if s.trained.accuracy is None else pct(s.trained.accuracy, 0),
            *(
                value
                for metric in METRICS
                for value in (
                    f"{s.trained.of('all', metric).median:.2f} / {s.init.of('all', metric).median:.2f}",
                    f"{pct(s.trained.of('all', metric).crossing_rate, 0)} / "
                    f"{pct(s.init.of('all', metric).crossing_rate, 0)}",
                )
            ),
        ]
        for s in result.sizes
    ]
    size_header = [
        "model",
        "parameters",
        "accuracy",
        *(
            h
            for metric in METRICS
            for h in (
                f"{metric.upper()} median, trained / init",
                f"{metric.upper()} > {BOUNDARY:g}, trained / init",
            )
        ),
    ]
    out = [
        Section(
            "Interpolation curves",
            "Median normalised output distance d(α)/d(1) along the path from A's to B's activation, "
            "with the 25–75% band: the paper's L2 distance of the final residual (top) and the KL "
            "divergence of the next-token distributions (bottom). A straight line means the output "
            "moves evenly; a flat start and a jump means A's region holds until a boundary.",
            figures=[
                (
                    curves_figure(result),
                    "trained models (blue) against their random initialisation (grey)",
                )
            ],
            tables=[(size_header, size_rows)],
        ),
        Section(
            "Boundary sharpness",
            f"(steps − 1) · max Δ of each normalised curve: 1 for a straight line, up to "
            f"{result.config.steps - 1} for a jump within one α step. Pairs whose output did not "
            "move at α = 1 are dropped from the curves (counted as crossing nothing in the 'of all' "
            "column). The baseline interpolates from A toward A plus a direction drawn from the "
            "activations' covariance (not from a random point minus A, which leaves the data's "
            "distribution).",
            figures=[(sharpness_histogram(largest), f"{largest.name}: sharpness of consecutive pairs")],
            tables=[
                (
                    ["metric", *SHARPNESS_HEADER],
                    [
                        [metric.upper(), *_row(name, s)]
                        for metric in METRICS
                        for name, s in (
                            ("trained, consecutive", largest.trained.of("all", metric)),
                            ("random init, consecutive", largest.init.of("all", metric)),
                            ("trained, covariance-random directions", largest.trained.baseline[metric]),
                            ("random init, covariance-random directions", largest.init.baseline[metric]),
                        )
                    ],
                )
            ],
        ),
    ]
    if any(s.training for s in result.sizes):
        out.append(
            Section(
                "Sharpness over training and size",
                "Median sharpness of the consecutive pairs at every saved checkpoint (log-spaced), and "
                "of the final models against their size.",
                figures=[
                    (
                        training_figure(result),
                        "median sharpness against training step, one line per width",
                    ),
                    (size_figure(result), "median sharpness against parameter count"),
                ],
            )
        )
    slices = slices_figure(result)
    if slices is not None:
        out.append(
            Section(
                "2-D slices",
                "The plane through three prompts' activations (A at (0, 0), B at (1, 0), C above), each "
                "point written into A's run; red, green and blue are nearness to A's, B's and C's own "
                "final residuals (1 − L2 distance / its largest value on the grid).",
                figures=[(slices, "one slice per model, the three prompts' answers labelled")],
            )
        )
    out.append(
        Section(
            "Regions against polytopes",
            "For each consecutive pair, the last layer's MLP units whose pre-activation has another "
            "sign in A's run with B's activation written than in A's clean run: each flip is a ReLU "
            "polytope boundary crossed. Pairs are grouped by their L2 sharpness.",
            figures=[(flips_figure(largest), "sign flips by whether the pair stayed in one region")],
        )
    )
    out.append(
        Section(
            "Same answer against different answer",
            f"Pairs labelled {result.labels}.",
            figures=[(answers_figure(result), "sharpness of same-answer and different-answer pairs")],
            tables=[
                (
                    ["model", "metric", *SHARPNESS_HEADER],
                    [
                        [s.name, metric.upper(), *_row(kind, s.trained.of(kind, metric))]
                        for s in result.sizes
                        for metric in METRICS
                        for kind in ("same", "different")
                    ],
                )
            ],
        )
    )
    return out
