"""Figures and report sections of the inversion study, drawn from its results dicts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tinylens.studies.report import Section, new_figure, pct

VIEWER_SITES = ("head", "resid_post")
"""Site kinds the viewer shows (the paper's figures show head outputs and residual streams)."""
MAX_VIEWER = 8


def inside_figure(part: dict[str, Any], title: str, min_inside: float) -> Figure:
    """Share of samples inside ε per site, one bar per position, with the random-input control."""
    readings = part["readings"]
    sites = list(dict.fromkeys(r["site"] for r in readings))
    positions = list(dict.fromkeys(r["position"] for r in readings))
    fig = new_figure(max(6.0, 0.7 * len(sites) * max(1, len(positions)) ** 0.5 + 2), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(positions)
    for k, position in enumerate(positions):
        xs, shares, bases = [], [], []
        for i, site in enumerate(sites):
            r = next((r for r in readings if r["site"] == site and r["position"] == position), None)
            if r is not None:
                xs.append(i + (k - (len(positions) - 1) / 2) * width)
                shares.append(r["share_inside"])
                bases.append(r["base_rate"])
        ax.bar(xs, shares, width=width, label=position)
        ax.scatter(xs, bases, color="black", marker="_", s=60, zorder=3)
    ax.axhline(min_inside, color="grey", ls="--", lw=1)
    ax.set(xticks=range(len(sites)), ylim=(0, 1), ylabel="samples inside ε", title=title)
    ax.set_xticklabels(sites, rotation=45, ha="right")
    ax.legend(fontsize=7, ncol=min(5, len(positions)), title="position (— random inputs)")
    return fig


def viewer_figure(entries: list[dict[str, Any]], epsilon: float) -> Figure:
    """The paper's viewer as a static page: per query, its samples nearest first, each token
    coloured by how much the activation raises its likelihood, D on the right, the ε line."""
    rows_total = sum(len(e["rows"]) + 3 for e in entries)
    fig = new_figure(9.0, max(2.0, 0.2 * rows_total))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    cmap = colormaps["Reds"]
    norm = Normalize(0.0, 3.0)
    y = 0.0
    for entry in entries:
        ax.text(
            0,
            y,
            f"{entry['site']} at {entry['position']}:   query  {entry['query']}",
            fontsize=8,
            fontweight="bold",
            family="monospace",
            va="top",
        )
        y -= 1.2
        crossed = False
        for tokens, shifts, distance, count in entry["rows"]:
            if distance >= epsilon and not crossed:
                ax.plot(
                    [0, 1.0],
                    [y + 0.5, y + 0.5],
                    color="tab:blue",
                    lw=0.8,
                    transform=ax.get_yaxis_transform(),
                )
                crossed = True
            x = 0.0
            for token, shift in zip(tokens, shifts, strict=True):
                if token in ("P", "B"):
                    continue
                ax.text(
                    x,
                    y,
                    token,
                    fontsize=7,
                    family="monospace",
                    va="top",
                    bbox={"facecolor": cmap(norm(max(shift, 0.0))), "edgecolor": "none", "pad": 0.5},
                )
                x += 0.022
            color = "tab:green" if distance < epsilon else "grey"
            ax.text(0.8, y, f"D = {distance:.3f}  ×{count}", fontsize=7, color=color, va="top")
            y -= 1.0
        y -= 0.8
    ax.set_xlim(0, 1)
    ax.set_ylim(y, 1)
    return fig


def patching_figure(maps: list[dict[str, Any]], title: str) -> Figure:
    """Share of the logit difference each head removes, per corruption and position."""
    panels = [(m["corruption"], pos, grid) for m in maps for pos, grid in m["shares"].items()]
    fig = new_figure(3.2 * len(panels) + 1, 3.2)
    for k, (corruption, position, grid) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        values = np.array(grid, dtype=float)
        im = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set(
            title=f"{corruption}\nat {position}",
            xlabel="head",
            ylabel="layer",
            xticks=range(values.shape[1]),
            yticks=range(values.shape[0]),
        )
        ax.title.set_fontsize(8)
    fig.colorbar(im, ax=fig.axes, shrink=0.8, label="share removed")
    fig.suptitle(title, fontsize=9)
    return fig


def hypothesis_figure(part: dict[str, Any], title: str) -> Figure:
    readings = part["readings"]
    features = list(readings[0]["hypotheses"]) if readings else []
    labels = [f"{r['site']} @ {r['position']}" for r in readings]
    values = np.array([[r["hypotheses"][f][0] for f in features] for r in readings], dtype=float)
    fig = new_figure(2.0 + 1.6 * len(features), 1.0 + 0.22 * len(labels))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.nan_to_num(values, nan=0.0), cmap="Greens", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "–" if math.isnan(v) else f"{v:.0%}", ha="center", va="center", fontsize=6)
    ax.set(xticks=range(len(features)), yticks=range(len(labels)), title=title)
    ax.set_xticklabels(features, rotation=20, ha="right", fontsize=7)
    ax.set_yticklabels(labels, fontsize=6)
    return fig


def completeness_figure(points: list[dict[str, Any]], epsilon: float) -> Figure:
    """Every enumerated input inside ε and a random sample outside: true D against the decoder's
    log-likelihood; the sampled ones in orange."""
    fig = new_figure(3.6 * max(1, len(points)), 3.4)
    for k, p in enumerate(points):
        ax = fig.add_subplot(1, max(1, len(points)), k + 1)
        pts = np.array([(d, ll) for d, ll, _ in p["scatter"]], dtype=float).reshape(-1, 2)
        sampled = np.array([w for _, _, w in p["scatter"]], dtype=bool)
        ax.scatter(pts[~sampled, 0], pts[~sampled, 1], s=3, color="grey", alpha=0.4)
        ax.scatter(pts[sampled, 0], pts[sampled, 1], s=6, color="tab:orange")
        ax.axvline(epsilon, color="tab:blue", lw=0.8)
        ax.set(
            xscale="log",
            xlabel="true D",
            ylabel="decoder log-likelihood (nats)",
            title=f"{p['site']}: {p['query']}\nrecall {pct(p['recall'], 0)}, "
            f"precision {pct(p['precision'], 0)}",
        )
        ax.title.set_fontsize(8)
    return fig


def _viewer_entries(part: dict[str, Any]) -> list[dict[str, Any]]:
    """Heads and residual streams, the first position's first (addition: every head at =)."""
    chosen = [e for e in part["viewer"] if any(k in e["site"] for k in VIEWER_SITES)]
    order = list(dict.fromkeys(e["position"] for e in part["viewer"]))
    chosen.sort(key=lambda e: order.index(e["position"]))
    return (chosen or part["viewer"])[:MAX_VIEWER]


def _readings_table(part: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    settings = list(part["readings"][0]["by_setting"]) if part["readings"] else []
    rows = [
        [r["site"], r["position"], pct(r["share_inside"], 0)]
        + [pct(r["by_setting"][k], 0) for k in settings]
        + [pct(r["base_rate"], 1), r["n_queries"]]
        for r in part["readings"]
    ]
    header = ["site", "position", "inside ε", *settings, "random inputs inside ε", "queries"]
    return header, rows


def sections(results: dict[str, Any]) -> list[Section]:
    settings = results["settings"]
    eps = settings["epsilon"]
    out = []
    for what in ("counting", "addition"):
        part = results[what]
        out.append(
            Section(
                f"{what.capitalize()}: how often the decoder's samples are inside ε",
                f"Evaluation queries (counting: held-out combinations; addition has no split) at "
                f"each site the decoder ({part['decoder']}, "
                f"{part['decoder_steps']} steps, {part['decoder_training_s']:.0f} s) was trained on. "
                "Each sample is re-run through the probed model; D is the minimum over its positions. "
                "Black marks: the share of random task inputs inside ε of the same query.",
                figures=[
                    (
                        inside_figure(
                            part, f"{what}: samples inside ε = {eps:g}", settings["min_inside"]
                        ),
                        f"{what}_inside",
                    )
                ],
                tables=[_readings_table(part)],
            )
        )
        out.append(
            Section(
                f"{what.capitalize()}: the viewer",
                "One evaluation query per site: the samples nearest first, each token shaded by how "
                "much the query activation raises its likelihood against the site's no-information "
                "activation (darker: more); the blue line is ε, D on the right.",
                figures=[(viewer_figure(_viewer_entries(part), eps), f"{what}_viewer")],
            )
        )
        checks = part["patching"]["checks"]
        out.append(
            Section(
                f"{what.capitalize()}: causal checks",
                "Each head's output at a position patched from a corrupted input into the clean run; "
                "the share of the clean − corrupted logit difference it removes (1: all of it). "
                "Control: the same patch from an input with the clean answer.",
                figures=[(patching_figure(part["patching"]["maps"], what), f"{what}_patching")],
                tables=[
                    (
                        ["check", "heads", "position", "share removed", "control"],
                        [
                            [
                                c["what"],
                                ", ".join(f"L{a}.head{b}" for a, b in c["heads"]),
                                c["position"],
                                pct(c["share"], 0),
                                pct(c["control_share"], 0),
                            ]
                            for c in checks
                        ],
                    )
                ],
            )
        )
        out.append(
            Section(
                f"{what.capitalize()}: hypothesis scores",
                "Share of in-ε samples that agree with the query on each feature (feature consistency), "
                "averaged over the queries; the table gives random inputs' agreement as the control.",
                figures=[
                    (hypothesis_figure(part, f"{what}: feature consistency"), f"{what}_hypotheses")
                ],
                tables=[
                    (
                        ["site", "position", "feature", "consistency", "random inputs"],
                        [
                            [r["site"], r["position"], f, pct(v[0], 0), pct(v[1], 0)]
                            for r in part["readings"]
                            for f, v in r["hypotheses"].items()
                        ],
                    )
                ],
            )
        )
    points = results["addition"].get("completeness", [])
    if points:
        out.append(
            Section(
                "Addition: completeness by enumeration",
                "Every question with operands 100–999 is run through the probed model, so each "
                "query's true ε-preimage is known: the decoder's recall of it (at most its number of "
                "distinct samples over the preimage's size) and the precision of its distinct "
                "samples (a sample that is no question of the space, malformed or with a wrong "
                "answer, counts as outside); the likelihood AUROC asks whether the decoder's "
                "likelihood alone ranks the inputs inside ε above those outside.",
                figures=[(completeness_figure(points, eps), "addition_completeness")],
                tables=[
                    (
                        [
                            "site",
                            "query",
                            "preimage size",
                            "distinct samples",
                            "recall",
                            "recall possible",
                            "precision",
                            "likelihood AUROC",
                        ],
                        [
                            [
                                p["site"],
                                p["query"],
                                p["preimage_size"],
                                p["n_samples"],
                                pct(p["recall"], 0),
                                pct(min(1.0, p["n_samples"] / p["preimage_size"]), 0)
                                if p["preimage_size"]
                                else "-",
                                pct(p["precision"], 0),
                                f"{p['likelihood_auroc']:.3f}",
                            ]
                            for p in points
                        ],
                    )
                ],
            )
        )
    return out
