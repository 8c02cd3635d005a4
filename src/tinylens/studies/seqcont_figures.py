"""Figures and report sections of the seqcont study, drawn from its results dicts."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tinylens.studies.report import Section, new_figure, pct


def _position(name: str, n_heads: int, n_layers: int) -> tuple[float, float]:
    """Where a node sits in the circuit drawing: heads by index, the MLP right of its layer's
    heads and half a row up, the embedding below and the logits above."""
    if name == "embed":
        return (n_heads - 1) / 2, -1.0
    if name == "logits":
        return (n_heads - 1) / 2, float(n_layers)
    if name.startswith("M"):
        return n_heads + 0.5, int(name[1:]) + 0.5
    layer, head = name[1:].split(".")[:2]
    return float(head), float(layer)


def circuit_figure(results: dict[str, Any]) -> Figure:
    """Each family's edge-pruned circuit; nodes in every family's circuit are outlined in black."""
    circuits, shared = results["circuits"], set(results["shared"]["all"])
    n_layers, n_heads = results["graph"]["n_layers"], results["graph"]["n_heads"]
    fig = new_figure(4.2 * len(circuits), 4.5)
    for k, (family, c) in enumerate(circuits.items()):
        ax = fig.add_subplot(1, len(circuits), k + 1)
        for edge in c["edges"]:
            src, dst = edge.split("->")
            owner = dst.rsplit(".", 1)[0] if dst.count(".") == 2 else dst
            (x0, y0), (x1, y1) = (_position(n, n_heads, n_layers) for n in (src, owner))
            color = {"q": "tab:blue", "k": "tab:green", "v": "tab:red"}.get(dst[-1], "grey")
            ax.plot([x0, x1], [y0, y1], color=color, alpha=0.35, lw=1)
        everything = [f"A{layer}.{h}" for layer in range(n_layers) for h in range(n_heads)]
        everything += [f"M{layer}" for layer in range(n_layers)] if results["graph"]["has_mlp"] else []
        kept = set(c["nodes"])
        for name in [*everything, "embed", "logits"]:
            x, y = _position(name, n_heads, n_layers)
            inside = name in kept or name in ("embed", "logits")
            ax.scatter(
                x,
                y,
                s=120 if inside else 30,
                marker="s" if name.startswith("M") else "o",
                color="tab:orange" if inside else "lightgrey",
                edgecolors="black" if name in shared else "none",
                linewidths=1.5,
                zorder=3,
            )
        ax.set(
            title=f"{family}: {len(c['heads'])} heads, {len(c['mlps'])} MLPs, "
            f"{len(c['edges'])} edges ({pct(c['edge_share'], 0)})",
            xticks=range(n_heads),
            yticks=range(-1, n_layers + 1),
            yticklabels=["embed", *[f"L{layer}" for layer in range(n_layers)], "logits"],
            xlabel="head (■ = MLP)",
        )
        ax.title.set_fontsize(9)
    return fig


def heatmaps_figure(maps: dict[str, list[list[float]]], title: str, label: str) -> Figure:
    fig = new_figure(3.6 * len(maps), 3.2)
    for k, (name, values) in enumerate(maps.items()):
        ax = fig.add_subplot(1, len(maps), k + 1)
        data = np.array(values)
        image = ax.imshow(data, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set(title=f"{title}: {name}", xlabel="head", ylabel="layer")
        ax.set_xticks(range(data.shape[1]))
        ax.set_yticks(range(data.shape[0]))
        fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    return fig


def curve_figure(circuits: dict[str, Any]) -> Figure:
    fig = new_figure(6.5, 4.0)
    ax = fig.add_subplot()
    for family, c in circuits.items():
        curve = c["eap_ig_curve"]
        (line,) = ax.plot(curve["n_edges"], curve["share"], marker="o", ms=3, label=f"{family}")
        ax.scatter([len(c["edges"])], [c["edge_share"]], color=line.get_color(), marker="*", s=120)
        ax.scatter(
            [c["n_edges_node_circuit"]], [c["node_share"]], color=line.get_color(), marker="s", s=50
        )
    ax.axhline(0.8, color="grey", ls=":", label="80%")
    ax.set(
        xscale="log",
        xlabel="edges kept (top-k by EAP-IG score)",
        ylabel="share of the logit difference kept",
        title="Faithfulness against circuit size (■ node-pruned, ★ edge-pruned circuit)",
    )
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    return fig


def cross_figure(cross: dict[str, Any], random: dict[str, Any]) -> Figure:
    fig = new_figure(5.5, 4.2)
    ax = fig.add_subplot()
    data = np.array(cross["share"])
    image = ax.imshow(
        data, cmap="viridis", vmin=min(0.0, float(data.min())), vmax=max(1.0, float(data.max()))
    )
    families = cross["families"]
    ax.set_xticks(range(len(families)), families, rotation=30, ha="right")
    ax.set_yticks(range(len(families)), families)
    for i in range(len(families)):
        for j in range(len(families)):
            ax.text(j, i, pct(data[i, j], 0), ha="center", va="center", color="white", fontsize=9)
    ax.set(
        xlabel="prompts of",
        ylabel="circuit of",
        title=f"Share kept across families (random circuits: {pct(random['mean'], 0)})",
    )
    ax.title.set_fontsize(10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def sections(results: dict[str, Any]) -> list[Section]:
    """The report's sections, in reading order."""
    behaviour, circuits = results["behaviour"], results["circuits"]
    succ, shared = results["successor"], results["shared"]
    rows = []
    for f, b in behaviour.items():
        row: list[Any] = [
            f,
            pct(b["accuracy"], 0),
            f"{b['logit_diff']:.2f}",
            f"{b['corrupt_logit_diff']:.2f}",
        ]
        if f in circuits:
            c = circuits[f]
            row += [", ".join(c["heads"]), ", ".join(c["mlps"]), pct(c["node_share"], 0)]
            row += [len(c["edges"]), pct(c["edge_share"], 0)]
        else:  # the model does not continue this family: nothing to explain
            row += ["not searched (logit difference ≤ 0)", "-", "-", "-", "-"]
        rows.append(row)
    return [
        Section(
            "Behaviour and circuits",
            "Each family's circuit is found by mean-ablating heads and MLPs (means over corrupted "
            "prompts whose members are random) from the last layer back and then forward, dropping "
            "a component while the rest keeps 80% of the logit difference (answer − last member "
            "shown); then the same over the circuit's edges, each trial a path patch. Nodes "
            f"outlined in black are in every family's circuit: {', '.join(shared['all']) or 'none'}.",
            figures=[(circuit_figure(results), "Edge-pruned circuits (q blue, k green, v red)")],
            tables=[
                (
                    [
                        "family",
                        "top-1",
                        "logit diff",
                        "corrupted",
                        "heads",
                        "MLPs",
                        "node share",
                        "edges",
                        "edge share",
                    ],
                    rows,
                )
            ],
        ),
        Section(
            "Head patching",
            "Normalised effect of mean-ablating each head at all positions at once (1 = the clean "
            "logit difference kept, 0 = the corrupted prompts'): heads far below 1 matter.",
            figures=[
                (
                    heatmaps_figure(
                        {f: c["head_patching"] for f, c in circuits.items()},
                        "mean-ablated head",
                        "normalised metric",
                    ),
                    "Activation patching of each head",
                )
            ],
        ),
        Section(
            "Faithfulness against size",
            "Edges ranked by EAP with integrated gradients, the top k kept and every other edge "
            "mean-ablated, for k on a log scale; the pruned circuits are marked.",
            figures=[(curve_figure(circuits), "Share kept by the top-k edges")],
        ),
        Section(
            "Across families",
            "Each family's node circuit run on every family's prompts (ablation means from that "
            "family's corrupted prompts), against random circuits with as many heads and MLPs.",
            figures=[
                (cross_figure(results["cross_family"], results["random_circuits"]), "Cross-family")
            ],
            tables=[
                (
                    ["families", "components in both", "Jaccard overlap"],
                    [
                        [pair.replace("|", " & "), ", ".join(o["common"]), f"{o['jaccard']:.2f}"]
                        for pair, o in shared["pairs"].items()
                    ],
                )
            ],
        ),
        Section(
            "Successor heads",
            f"For each head, the share of members whose OV image (effective embedding → head OV → "
            f"unembedding) ranks the next member first within its family; chance "
            f"{pct(succ['chance'], 0)}. Best: {succ['top']} at {pct(succ['top_score'], 0)}.",
            figures=[
                (
                    heatmaps_figure({"all families": succ["scores"]}, "successor score", "score"),
                    "Successor score per head",
                )
            ],
        ),
    ]
