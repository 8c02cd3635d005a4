"""Figures and report sections of the maze study, drawn from its results dicts."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tinylens.studies.maze_render import draw_maze, draw_walls
from tinylens.studies.report import Section, new_figure, pct
from tinylens.tasks.maze import Maze, connection_labels, wall_list


def probe_layer_figure(probes: dict[str, Any]) -> Figure:
    fig = new_figure(9.0, 4.0)
    sites = [s.replace("blocks.", "L").replace(".hook_", " ") for s in probes["sites"]]
    x = np.arange(len(sites))
    for k, metric in enumerate(("accuracy", "f1")):
        ax = fig.add_subplot(1, 2, k + 1)
        for key, label in (
            ("probe", "trained model"),
            ("random_init", "random-init model"),
            ("shuffled_labels", "shuffled labels"),
        ):
            ax.plot(x, probes[key][metric], marker="o", label=label)
        if metric == "accuracy":
            ax.axhline(probes["probe"]["majority"], color="grey", ls=":", label="majority class")
        ax.set_xticks(x, sites, rotation=45, ha="right", fontsize=8)
        ax.set(ylim=(0, 1.02), ylabel=f"held-out {metric}", title=f"Connection probe {metric}")
        ax.legend(fontsize=8)
    return fig


def decoded_maze_figure(examples: list[dict[str, Any]]) -> Figure:
    """Each example: the true maze (left) and the probe's reading (right), wrong walls in red."""
    fig = new_figure(3.0 * 2, 3.0 * len(examples))
    for k, ex in enumerate(examples):
        truth: Maze = ex["true"].maze
        decoded: Maze = ex["decoded"]
        for j, (maze, name) in enumerate(((truth, "true maze"), (decoded, "decoded by the probe"))):
            title = name
            ax = fig.add_subplot(len(examples), 2, 2 * k + j + 1)
            draw_walls(ax, maze)
            n = maze.n
            if j == 1:
                wrong = connection_labels(truth) != connection_labels(decoded)
                for (a, b), bad in zip(wall_list(n), wrong, strict=True):
                    if bad:
                        ax.plot([a[1], b[1]], [a[0], b[0]], color="tab:red", lw=3, alpha=0.7)
                title = f"{title}: {int(wrong.sum())} wrong"
            ax.set(xlim=(-0.7, n - 0.3), ylim=(n - 0.3, -0.7), aspect="equal", xticks=[], yticks=[])
            ax.set_title(title, fontsize=9)
    fig.suptitle("Red: walls the probe reads wrongly (drawn across the boundary)", fontsize=9)
    return fig


def probe_training_figure(over: dict[str, Any]) -> Figure:
    fig = new_figure(8.0, 4.0)
    ax = fig.add_subplot()
    steps = np.maximum(over["steps"], 1)
    ax.plot(steps, over["probe_accuracy"], marker="o", label="probe accuracy (best layer)")
    ax.plot(steps, over["path_accuracy"], marker="s", label="held-out exact path")
    ax.set(xscale="log", ylim=(0, 1.02), xlabel="training step", ylabel="accuracy")
    ax.set_title("Connection probe and path accuracy at each saved checkpoint")
    ax.legend()
    return fig


def embedding_figure(geometry: dict[str, Any]) -> Figure:
    """Coordinate embeddings on their two principal components, lattice neighbours joined."""
    fig = new_figure(9.0, 4.5)
    points = [tuple(int(v) for v in p) for p in geometry["points"]]
    index = {p: i for i, p in enumerate(points)}
    for k, key in enumerate(("trained", "random_init")):
        ax = fig.add_subplot(1, 2, k + 1)
        xy = np.array(geometry[key]["projection"])
        for (r, c), i in index.items():
            for nb in ((r + 1, c), (r, c + 1)):
                if nb in index:
                    j = index[nb]
                    ax.plot(xy[[i, j], 0], xy[[i, j], 1], color="lightgrey", lw=1, zorder=0)
        ax.scatter(xy[:, 0], xy[:, 1], c=[r for r, _ in points], cmap="viridis", s=30)
        for (r, c), i in index.items():
            ax.annotate(f"{r},{c}", xy[i], fontsize=7, xytext=(2, 2), textcoords="offset points")
        explained = sum(geometry[key]["explained"])
        ax.set_title(
            f"{key.replace('_', ' ')}: Spearman {geometry[key]['spearman']:.2f}, "
            f"PC1+2 {explained:.0%} of variance",
            fontsize=9,
        )
        ax.set(xticks=[], yticks=[])
    return fig


def head_figure(heads: dict[str, Any]) -> Figure:
    fig = new_figure(9.0, 4.0)
    score = np.array(heads["score"])
    valid = np.array(heads["valid_per_key"])
    invalid = np.array(heads["invalid_per_key"])
    n_layers, n_heads = score.shape
    labels = [f"L{layer}H{h}" for layer in range(n_layers) for h in range(n_heads)]
    x = np.arange(len(labels))
    ax = fig.add_subplot(1, 2, 1)
    ax.bar(x - 0.2, valid.ravel(), 0.4, label="valid next cells")
    ax.bar(x + 0.2, invalid.ravel(), 0.4, label="walled-off neighbours")
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set(ylabel="attention per key token", title="From the current cell to adjacency-list tokens")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    cases = {
        "clean": heads["clean"],
        f"top {heads['top_k']} ablated": heads["top_ablated"],
        f"{heads['top_k']} others, same layers": heads["control_ablated"],
    }
    width = 0.38
    for j, metric in enumerate(("valid_next_step", "correct_next_step")):
        ax.bar(
            np.arange(len(cases)) + (j - 0.5) * width,
            [c[metric] for c in cases.values()],
            width,
            label=metric.replace("_", " "),
        )
    ax.set_xticks(np.arange(len(cases)), list(cases), fontsize=8)
    ax.set(ylim=(0, 1.02), ylabel="share of path positions", title="Mean-ablating heads")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def sections(results: dict[str, Any], examples: dict[str, Any]) -> list[Section]:
    """The report's sections, in reading order. ``examples`` holds non-JSON objects to draw."""
    acc, probes = results["path_accuracy"], results["probes"]
    heads, geometry = results["adjacency_heads"], results["embedding_geometry"]
    site_rows = [
        [
            site,
            pct(probes["probe"]["accuracy"][i], 1),
            f"{probes['probe']['f1'][i]:.3f}",
            pct(probes["random_init"]["accuracy"][i], 1),
            pct(probes["shuffled_labels"]["accuracy"][i], 1),
        ]
        for i, site in enumerate(probes["sites"])
    ]
    solved_examples = examples["solved"]
    return [
        Section(
            "The solver",
            f"Greedy decoding on {acc['n']} held-out mazes (a fixed hash split keeps them out of "
            f"training): exact path {pct(acc['exact_path'], 1)}, valid path "
            f"{pct(acc['valid_path'], 1)}, target reached {pct(acc['target_reached'], 1)}.",
            figures=[
                (draw_maze(ex["maze"], ex["predicted"], ex["title"]), ex["title"])
                for ex in solved_examples
            ],
        ),
        Section(
            "Linear probes for the maze's connections",
            f"A logistic-regression probe per wall reads the residual stream of the "
            f"<PATH_START> token (position {probes['position']}) at each layer; "
            f"{probes['n_inputs']} mazes, a quarter held out for scoring; "
            f"{pct(probes['open_share'], 1)} of walls are open. Controls: the same probes on a "
            "randomly initialised model of the same shape, and on labels shuffled across mazes.",
            figures=[
                (probe_layer_figure(probes), "Probe accuracy and F1 per layer"),
                (decoded_maze_figure(examples["decoded"]), "Mazes decoded by the best layer"),
                (probe_training_figure(results["probe_over_training"]), "Over training"),
            ],
            tables=[
                (["site", "accuracy", "F1", "random-init acc.", "shuffled acc."], site_rows),
            ],
        ),
        Section(
            "Coordinate embeddings",
            "The embedding vectors of the coordinate tokens on their two leading principal "
            "components, coloured by row; grey lines join lattice neighbours. Spearman correlation "
            "of pairwise "
            "embedding distance with lattice (Manhattan) distance: trained "
            f"{geometry['trained']['spearman']:.3f}, random init "
            f"{geometry['random_init']['spearman']:.3f}.",
            figures=[(embedding_figure(geometry), "Coordinate embeddings")],
        ),
        Section(
            "Adjacency heads",
            "For each path position that is not yet the target, the attention each head pays from "
            "the current cell to adjacency-list tokens that name a cell joined to it (valid next "
            "cells) and to tokens that name a lattice neighbour behind a wall. There are on average "
            f"{heads['keys_per_query']['valid']:.1f} and {heads['keys_per_query']['invalid']:.1f} "
            "such tokens per position, so the figure shows attention per token (uniform attention "
            f"would give both bars the same height). Heads are ranked by the difference; the top "
            f"{heads['top_k']} are mean-ablated and compared with ablating as many other heads drawn "
            "at random from the same layers (mean of 3 draws).",
            figures=[(head_figure(heads), "Adjacency heads")],
            tables=[
                (
                    ["ablation", "valid next step", "correct next step"],
                    [
                        [k, pct(heads[k]["valid_next_step"], 1), pct(heads[k]["correct_next_step"], 1)]
                        for k in ("clean", "top_ablated", "control_ablated")
                    ],
                )
            ],
        ),
    ]
