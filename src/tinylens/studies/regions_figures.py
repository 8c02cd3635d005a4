"""Figures and report sections of the regions study, drawn from its typed result."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from tinylens.studies.regions_analyses import BOUNDARY, SAME_REGION, Sharpness
from tinylens.studies.report import Section, new_figure, pct

if TYPE_CHECKING:
    from tinylens.studies.regions import RegionsResult, SizeRegions

TRAINED, INIT, BASELINE = "tab:blue", "tab:grey", "tab:orange"


def _thresholds(ax, *, vertical: bool = True) -> None:
    line = ax.axvline if vertical else ax.axhline
    line(SAME_REGION, color="green", ls=":", lw=1, label=f"same region < {SAME_REGION}")
    line(BOUNDARY, color="red", ls=":", lw=1, label=f"boundary > {BOUNDARY:g}")


def curves_figure(result: RegionsResult) -> Figure:
    """Per size: median d(α)/d(1) with its 25–75% band, trained against random init."""
    sizes = result.sizes
    fig = new_figure(3.3 * len(sizes), 3.3)
    steps = result.config.steps
    alphas = np.linspace(0, 1, steps)
    for k, size in enumerate(sizes):
        ax = fig.add_subplot(1, len(sizes), k + 1)
        for regions, color, label in (
            (size.init, INIT, "random init"),
            (size.trained, TRAINED, "trained"),
        ):
            ax.fill_between(alphas, regions.curve_q25, regions.curve_q75, color=color, alpha=0.25, lw=0)
            ax.plot(alphas, regions.curve_median, color=color, label=label)
        ax.plot([0, 1], [0, 1], color="black", ls="--", lw=0.8, label="straight line")
        ax.set(title=size.name, xlabel="α", ylabel="d(α) / d(1)" if k == 0 else None, ylim=(-0.05, 1.3))
        if k == 0:
            ax.legend(fontsize=8)
    return fig


def _log_bins(values: list[list[float]]) -> np.ndarray:
    flat = [v for vs in values for v in vs if v > 0]
    high = max([BOUNDARY * 1.5, *flat])
    low = min([0.9, *flat])
    return np.geomspace(low, high * 1.01, 40)


def sharpness_histogram(size: SizeRegions) -> Figure:
    """Sharpness of the consecutive pairs: trained, random init and the random-direction baseline."""
    fig = new_figure(7.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    sets = (
        (size.trained.sharpness["all"], TRAINED, "trained"),
        (size.init.sharpness["all"], INIT, "random init"),
        (size.trained.baseline, BASELINE, "trained, covariance-random directions"),
    )
    bins = _log_bins([s.values for s, _, _ in sets])
    for s, color, label in sets:
        if s.values:
            ax.hist(
                s.values, bins=bins, color=color, alpha=0.5, label=f"{label} (median {s.median:.2f})"
            )
    _thresholds(ax)
    ax.set(xscale="log", xlabel="boundary sharpness (log)", ylabel="pairs", title=size.name)
    ax.legend(fontsize=8)
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


def training_figure(result: RegionsResult) -> Figure:
    """Median sharpness (25–75% band) against training step, one line per size; step 0 is drawn
    at the left edge (a log axis has no 0)."""
    fig = new_figure(7.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{k}" for k in range(len(result.sizes))]
    for size, color in zip(result.sizes, colors, strict=True):
        points = [(max(c.step, 0.5), c.sharpness) for c in size.training]
        _band(ax, [p for p, _ in points], [s for _, s in points], color, size.name)
    _thresholds(ax, vertical=False)
    ax.set(
        xscale="log", yscale="log", xlabel="training step (log; init at 0.5)", ylabel="median sharpness"
    )
    ax.legend(fontsize=8)
    return fig


def size_figure(result: RegionsResult) -> Figure:
    """Median sharpness (25–75% band) against parameter count, trained and at random init."""
    fig = new_figure(6.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    params = [s.n_params for s in result.sizes]
    _band(ax, params, [s.init.sharpness["all"] for s in result.sizes], INIT, "random init")
    _band(ax, params, [s.trained.sharpness["all"] for s in result.sizes], TRAINED, "trained")
    _thresholds(ax, vertical=False)
    ax.set(xscale="log", yscale="log", xlabel="parameters (log)", ylabel="median sharpness")
    ax.legend(fontsize=8)
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
        for (x, y), name, mark in zip(sl.corners, sl.names, "ABC", strict=True):
            ax.scatter(x, y, color="white", edgecolors="black", s=40, zorder=3)
            ax.annotate(
                f"{mark}: {name}",
                (x, y),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=8,
                color="white",
            )
        ax.set(title=size.name, xlabel="α (along B − A)", ylabel="β" if k == 0 else None)
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
    """Sharpness of same-answer and different-answer pairs, per size (trained models)."""
    fig = new_figure(max(5.0, 2.2 * len(result.sizes)), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    data, positions, colors, ticks = [], [], [], []
    for k, size in enumerate(result.sizes):
        for j, (kind, color) in enumerate((("same", "green"), ("different", "red"))):
            values = size.trained.sharpness[kind].values
            data.append(values if values else [math.nan])
            positions.append(3 * k + j)
            colors.append(color)
        ticks.append(3 * k + 0.5)
    parts = ax.boxplot(data, positions=positions, widths=0.8, patch_artist=True, showfliers=True)
    for patch, color in zip(parts["boxes"], colors, strict=True):
        patch.set(facecolor=color, alpha=0.35)
    _thresholds(ax, vertical=False)
    ax.set_xticks(ticks, [s.name for s in result.sizes])
    ax.set(yscale="log", ylabel="sharpness (log)", title="same answer (green) vs different answer (red)")
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
            f"{s.trained.sharpness['all'].median:.2f}",
            f"{s.init.sharpness['all'].median:.2f}",
            pct(s.trained.sharpness["all"].share_boundary, 0),
            pct(s.init.sharpness["all"].share_boundary, 0),
        ]
        for s in result.sizes
    ]
    out = [
        Section(
            "Interpolation curves",
            "Median normalised output distance d(α)/d(1) along the path from A's to B's activation, "
            "with the 25–75% band. A straight line means the output moves evenly; a flat start and "
            "a jump means A's region holds until a boundary.",
            figures=[
                (
                    curves_figure(result),
                    "trained models (blue) against their random initialisation (grey)",
                )
            ],
            tables=[
                (
                    [
                        "model",
                        "parameters",
                        "accuracy",
                        "median (trained)",
                        "median (init)",
                        f"> {BOUNDARY:g} (trained)",
                        f"> {BOUNDARY:g} (init)",
                    ],
                    size_rows,
                )
            ],
        ),
        Section(
            "Boundary sharpness",
            f"(steps − 1) · max Δ of each normalised curve: 1 for a straight line, up to "
            f"{result.config.steps - 1} for a jump within one α step. The baseline interpolates from "
            "A toward A plus a direction drawn from the activations' covariance (not from a random "
            "point minus A, which leaves the data's distribution).",
            figures=[(sharpness_histogram(largest), f"{largest.name}: sharpness of consecutive pairs")],
            tables=[
                (
                    SHARPNESS_HEADER,
                    [
                        _row("trained, consecutive", largest.trained.sharpness["all"]),
                        _row("random init, consecutive", largest.init.sharpness["all"]),
                        _row("trained, covariance-random directions", largest.trained.baseline),
                        _row("random init, covariance-random directions", largest.init.baseline),
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
                "outputs (1 − distance / its largest value on the grid).",
                figures=[(slices, "one slice per model, the three prompts' answers labelled")],
            )
        )
    out.append(
        Section(
            "Regions against polytopes",
            "For each consecutive pair, the last layer's MLP units whose pre-activation has another "
            "sign in A's run with B's activation written than in A's clean run: each flip is a ReLU "
            "polytope boundary crossed.",
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
                    ["model", *SHARPNESS_HEADER],
                    [
                        [s.name, *_row(kind, s.trained.sharpness[kind])]
                        for s in result.sizes
                        for kind in ("same", "different")
                    ],
                )
            ],
        )
    )
    return out
