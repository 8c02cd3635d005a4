"""Figures and report sections of the addition study, drawn from its results dicts.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot, so nothing global changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tinylens.analysis.curves import moving_mean_log
from tinylens.studies.report import Section, new_figure, pct
from tinylens.tasks import AdditionTask


def digit_curve_figure(curves: dict[str, Any]) -> Figure:
    fig = new_figure()
    ax = fig.add_subplot()
    for name, d in curves["digits"].items():
        smooth = np.exp(moving_mean_log(np.array(d["values"]), 9))
        (line,) = ax.plot(d["steps"], smooth, lw=1.2, label=name)
        if d["drop"] > 0:
            mid = d["steps"].index(d["mid"])
            ax.plot(d["mid"], smooth[mid], "o", color=line.get_color())
    ax.set(yscale="log", xscale="log", xlabel="training step", ylabel="training loss (nats)")
    ax.set_title("Per-digit loss, geometric moving mean of 9 logs (dots: half-way points)")
    ax.legend(ncol=3)
    return fig


def subtask_curve_figure(curves: dict[str, Any]) -> Figure:
    fig = new_figure(8.0, 4.0)
    ax = fig.add_subplot()
    for name, d in curves["subtasks"].items():
        ax.plot(d["steps"], d["values"], marker=".", label=name)
    ax.set(yscale="log", xlabel="training step", ylabel="held-out loss (nats)")
    ax.set_title("Loss per sub-task: base add (BA), use carry (UC1), use sum-9 cascade (US9)")
    ax.legend()
    return fig


def class_figure(classes: dict[str, dict[str, Any]]) -> Figure:
    fig = new_figure(8.0, 4.0)
    ax = fig.add_subplot()
    names = list(next(iter(classes.values()))["classes"])
    width = 0.8 / len(classes)
    for i, (model, result) in enumerate(classes.items()):
        exact = [result["classes"][c]["exact"] for c in names]
        ax.bar(np.arange(len(names)) + i * width, exact, width, label=model)
    ax.set_xticks(np.arange(len(names)) + width * (len(classes) - 1) / 2, names)
    ax.set(ylim=(0, 1.02), ylabel="exact match", title="Curated questions per cascade class")
    ax.legend(loc="lower left")
    return fig


def staircase_figure(stair: dict[str, Any]) -> Figure:
    mass = np.array(stair["column_mass"])  # [layer, head, digit, column]
    layers, heads = mass.shape[:2]
    fig = new_figure(3.2 * heads, 3.2 * layers)
    axes = fig.subplots(layers, heads, squeeze=False)
    n_cols = mass.shape[-1]
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(mass[layer, head], vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(n_cols), [f"{c}" for c in range(n_cols)])
            ax.set_yticks(range(len(stair["digits"])), [f"→{d}" for d in stair["digits"]])
            ax.set_title(f"L{layer}H{head}")
            ax.set_xlabel("operand column (0 = units)")
    fig.suptitle("Attention from the position predicting each digit to each operand column pair")
    return fig


def position_figure(pos: dict[str, Any], title: str, task: AdditionTask) -> Figure:
    acc = np.array(pos["acc"])  # [position, digit]
    fig = new_figure(6.0, 6.0)
    ax = fig.add_subplot()
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="magma", aspect="auto")
    labels = [f"{p} {c}" for p, c in zip(pos["positions"], _position_chars(task), strict=True)]
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xticks(range(len(pos["digits"])), pos["digits"])
    ax.set(xlabel="answer digit", ylabel="mean-ablated position (attention output)", title=title)
    fig.colorbar(im, ax=ax, label="digit accuracy")
    return fig


def head_figure(heads: dict[str, Any]) -> Figure:
    rows = heads["heads"]
    digits = list(heads["clean"]["digit_acc"])
    acc = np.array([[h["digit_acc"][d] for d in digits] for h in rows])
    fig = new_figure(6.0, float(1 + 0.6 * len(rows)))
    ax = fig.add_subplot()
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="magma", aspect="auto")
    ax.set_yticks(range(len(rows)), [f"L{h['layer']}H{h['head']}" for h in rows])
    ax.set_xticks(range(len(digits)), digits)
    ax.set(xlabel="answer digit", title="Digit accuracy with one head mean-ablated")
    fig.colorbar(im, ax=ax, label="accuracy")
    return fig


def high_loss_figure(worst: dict[str, Any], top: int = 12) -> Figure:
    ranked = worst["classes"][:top]
    fig = new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    names = [r["class"] for r in ranked]
    y = np.arange(len(names))
    ax.barh(y, [r["mean_loss_1l"] for r in ranked], color="tab:red")
    ax.set_yticks(y, [f"{n} (n={r['count']})" for n, r in zip(names, ranked, strict=True)])
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="mean loss per question, 1-layer model (nats)")
    ax.set_title("Question classes ranked by loss")
    for yi, r in zip(y, ranked, strict=True):
        ax.annotate(
            f"exact 1L {pct(r['exact_1l'], 2)} · 2L {pct(r['exact_2l'], 2)}",
            (r["mean_loss_1l"], yi),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    return fig


def _position_chars(task: AdditionTask) -> list[str]:
    n = task.n_digits
    return (
        [f"a{n - 1 - i}" for i in range(n)]
        + ["+"]
        + [f"b{n - 1 - i}" for i in range(n)]
        + ["="]
        + [f"A{n - i}" for i in range(n)]
    )


def sections(results: dict[str, Any], task: AdditionTask) -> list[Section]:
    """The report's sections, in reading order."""
    curves, classes = results["digit_curves"], results["class_accuracy"]
    evals, residue = results["eval"], results["error_residue"]
    out = [
        Section(
            "Loss per answer digit over training",
            "Training loss of each answer digit (A5 is the final carry, A0 the units), logged every "
            "few steps; the dot marks where half of the digit's fall in log-loss is done. "
            "The held-out curves split by the sub-task each digit needs.",
            figures=[
                (digit_curve_figure(curves), "Per-digit training loss"),
                (subtask_curve_figure(curves), "Held-out loss per sub-task"),
            ],
            tables=[
                (
                    ["digit", "10% of fall", "half-way", "90% of fall", "fall (log units)"],
                    [
                        [k, v["start"], v["mid"], v["end"], f"{v['drop']:.2f}"]
                        for k, v in curves["digits"].items()
                    ],
                )
            ],
        ),
        Section(
            "Accuracy overall and per cascade class",
            "Exact match on fresh uniform questions, then on curated sets of each class: S0 no "
            "carry, S1 carries without sum-9, S2 a carry then one sum-9 column, S3/S4/S5 cascades "
            "through 2/3/≥4 sum-9 columns. Wrong digits of the 1-layer model on the fresh "
            f"questions, by the sub-task they needed: {residue['by_subtask']}.",
            figures=[(class_figure(classes), "Exact match per curated class")],
            tables=[
                (
                    ["model", "exact (fresh)", *classes["1-layer"]["classes"], "cascades S2–S5"],
                    [
                        [m, pct(evals[m]["exact"], 2)]
                        + [pct(v["exact"], 2) for v in classes[m]["classes"].values()]
                        + [pct(classes[m]["cascades"], 2)]
                        for m in classes
                    ],
                )
            ],
        ),
        Section(
            "The attention staircase",
            "For each head of the 1-layer model, the mean attention that the position predicting "
            "each answer digit pays to each column's operand pair (a_j and b_j).",
            figures=[(staircase_figure(results["attention_staircase"]), "Attention per column")],
        ),
        Section(
            "Position ablation",
            "Each row mean-ablates the attention output (every layer) at one position; each column "
            "is an answer digit's accuracy. A digit that depends only on the position just before it "
            "shows as one dark cell per column.",
            figures=[
                (position_figure(p, f"{m} model", task), f"Position ablation, {m}")
                for m, p in results["position_ablation"].items()
            ],
        ),
        Section(
            "Head ablation",
            "Loss (nats) overall and per sub-task with each head of the 1-layer model mean-ablated.",
            figures=[(head_figure(results["head_ablation"]), "Digit accuracy per ablated head")],
            tables=[_head_table(results["head_ablation"])],
        ),
        Section(
            "Rare high-loss cases",
            "Question classes ranked by the 1-layer model's mean loss on the fresh questions, with "
            "both models' exact match, and the single worst questions (answers teacher-forced).",
            figures=[(high_loss_figure(results["high_loss_cases"]), "Classes ranked by loss")],
            tables=[
                (
                    ["class", "questions", "mean loss 1-layer", "exact 1-layer", "exact 2-layer"],
                    [
                        [
                            r["class"],
                            r["count"],
                            f"{r['mean_loss_1l']:.3g}",
                            pct(r["exact_1l"], 2),
                            pct(r["exact_2l"], 2),
                        ]
                        for r in results["high_loss_cases"]["classes"][:10]
                    ],
                ),
                (
                    ["question", "truth", "1-layer", "2-layer", "loss 1-layer", "class"],
                    [
                        [
                            w["question"],
                            w["truth"],
                            w["answer_1l"],
                            w["answer_2l"],
                            f"{w['loss_1l']:.3g}",
                            w["class"],
                        ]
                        for w in results["high_loss_cases"]["worst"]
                    ],
                ),
            ],
        ),
    ]
    return out


def _head_table(heads: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    subtasks = list(heads["clean"]["subtask_loss"])
    rows = [
        ["none (clean)", f"{heads['clean']['loss']:.3g}"]
        + [f"{heads['clean']['subtask_loss'][s]:.3g}" for s in subtasks]
    ]
    for h in heads["heads"]:
        rows.append(
            [f"L{h['layer']}H{h['head']}", f"{h['loss']:.3g}"]
            + [f"{h['subtask_loss'].get(s, float('nan')):.3g}" for s in subtasks]
        )
    return ["ablated head", "loss", *subtasks], rows
