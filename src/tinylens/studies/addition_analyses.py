"""The measurements of the addition study; each returns JSON-able dicts for results/*.json.

These glue the task's labels to the task-agnostic methods of :mod:`tinylens.analysis`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tinylens import hooks
from tinylens.analysis.ablation import Ablation, run_ablated
from tinylens.analysis.attention import mean_attention
from tinylens.analysis.curves import locate_phase
from tinylens.analysis.protocol import HookedModel
from tinylens.evaluation import answer_logits, answer_loss, evaluate, evaluate_logits, score_answers
from tinylens.store import MetricSeries
from tinylens.tasks import CASES, SUBTASKS, AdditionTask

CASCADE_CLASSES = (2, 3, 4, 5)
"""Classes whose answer needs a carry through at least one sum-9 column (S2–S5)."""


def query_position(task: AdditionTask, column: int) -> int:
    """The position whose logits predict answer digit A_column."""
    return 3 * task.n_digits + 1 - column


def operand_positions(task: AdditionTask, column: int) -> tuple[int, int]:
    """Positions of a_column and b_column."""
    n = task.n_digits
    return n - 1 - column, 2 * n - column


def digit_curves(
    train_loss: dict[str, MetricSeries], eval_loss: dict[str, MetricSeries], task: AdditionTask
) -> dict[str, Any]:
    """Per-digit training-loss curves with their phases, and held-out per-sub-task curves.

    Args:
        train_loss: the ``train/loss/<digit>`` series of the run (e.g. ``run.metrics("train/loss/")``).
        eval_loss: its ``eval/loss/<sub-task>`` series.
        task: the addition task the run trained on.
    """
    train, evals = train_loss, eval_loss
    digits = {}
    for name in task.answer_names:
        series = train[f"train/loss/{name}"]
        phase = locate_phase(series.steps, series.values)
        digits[name] = {
            **phase.__dict__,
            "steps": series.steps.tolist(),
            "values": series.values.tolist(),
        }
    subtasks = {
        name: {"steps": evals[key].steps.tolist(), "values": evals[key].values.tolist()}
        for name in SUBTASKS
        if (key := f"eval/loss/{name}") in evals
    }
    return {"digits": digits, "subtasks": subtasks}


def class_accuracy(
    model: HookedModel, task: AdditionTask, curated: dict[int, torch.Tensor]
) -> dict[str, Any]:
    """Exact match and loss on the curated question set of each class S0…S5."""
    per_class = {}
    for case, tokens in curated.items():
        result = evaluate(model, task, tokens)
        per_class[CASES[case]] = {"exact": result.exact, "loss": result.loss, "count": result.n}
    cascades = float(np.mean([per_class[CASES[c]]["exact"] for c in CASCADE_CLASSES]))
    return {"classes": per_class, "cascades": cascades}


def error_residue(model: HookedModel, task: AdditionTask, tokens: torch.Tensor) -> dict[str, Any]:
    """Which sub-task the wrongly predicted digits needed (BA, UC1 or US9)."""
    _, correct = score_answers(model, task, tokens)  # [batch, answer]
    subtask = task.labels(tokens).subtask.flip(1)  # answer order
    wrong = ~correct
    by_subtask = {name: int((wrong & (subtask == i)).sum()) for i, name in enumerate(SUBTASKS)}
    total = int(wrong.sum())
    return {
        "wrong_digits": total,
        "wrong_questions": int(wrong.any(1).sum()),
        "questions": tokens.shape[0],
        "by_subtask": by_subtask,
        "us9_share": by_subtask["US9"] / total if total else float("nan"),
    }


def attention_staircase(model: HookedModel, task: AdditionTask, tokens: torch.Tensor) -> dict[str, Any]:
    """Mean attention of each head from each answer-predicting position, and its mass per column.

    ``column_mass[layer][head][i][j]`` is the attention that the position predicting answer digit
    ``task.answer_names[i]`` pays to the operand pair of column j (a_j plus b_j).
    """
    patterns = mean_attention(model, tokens)  # [layer, head, query, key]
    n = task.n_digits
    columns = list(range(n))
    queries = [query_position(task, c) for c in range(n, -1, -1)]  # A_n … A_0
    mass = torch.zeros(patterns.shape[0], patterns.shape[1], len(queries), n)
    for j in columns:
        pa, pb = operand_positions(task, j)
        mass[..., j] = patterns[:, :, queries][..., pa] + patterns[:, :, queries][..., pb]
    top = mass.argmax(-1)  # [layer, head, digit]: most-attended column
    return {
        "query_positions": queries,
        "digits": list(task.answer_names),
        "patterns": patterns[:, :, queries].tolist(),
        "column_mass": mass.tolist(),
        "top_column": top.tolist(),
    }


def position_ablation(model: HookedModel, task: AdditionTask, tokens: torch.Tensor) -> dict[str, Any]:
    """Per-digit accuracy when every layer's attention output is mean-ablated at one position."""
    n_layers = int(model.cfg.n_layers)
    clean = evaluate(model, task, tokens)
    positions = list(range(task.seq_len - 1))
    acc = []
    for p in positions:
        ablations = [Ablation(hooks.attn_out(layer), positions=(p,)) for layer in range(n_layers)]
        result = evaluate_logits(task, tokens, run_ablated(model, tokens, ablations))
        acc.append([result.positions[d].acc for d in task.answer_names])
    acc_arr = np.array(acc)  # [position, digit]
    most_harmful = {}
    for i, name in enumerate(task.answer_names):
        column = task.n_digits - i
        most_harmful[name] = {
            "position": int(acc_arr[:, i].argmin()),
            "expected": query_position(task, column),
        }
    own = [acc_arr[query_position(task, task.n_digits - i), i] for i in range(len(task.answer_names))]
    return {
        "positions": positions,
        "digits": list(task.answer_names),
        "clean": [clean.positions[d].acc for d in task.answer_names],
        "acc": acc_arr.tolist(),
        "most_harmful": most_harmful,
        "own_position_acc": float(np.mean(own)),
    }


def head_ablation(model: HookedModel, task: AdditionTask, tokens: torch.Tensor) -> dict[str, Any]:
    """Loss overall and per sub-task, and per-digit accuracy, with each head mean-ablated."""

    def summary(result: Any) -> dict[str, Any]:
        return {
            "loss": result.loss,
            "exact": result.exact,
            "subtask_loss": {k: v.loss for k, v in result.token_groups.items() if v.count},
            "digit_acc": {k: v.acc for k, v in result.positions.items()},
        }

    heads = []
    for layer in range(int(model.cfg.n_layers)):
        for head in range(int(model.cfg.n_heads)):
            logits = run_ablated(model, tokens, [Ablation(hooks.attn_z(layer), head=head)])
            heads.append(
                {"layer": layer, "head": head, **summary(evaluate_logits(task, tokens, logits))}
            )
    return {"clean": summary(evaluate(model, task, tokens)), "heads": heads}


def question_class(task: AdditionTask, tokens: torch.Tensor) -> list[str]:
    """A fine class per question: the cascade class and the digit where the longest cascade lands."""
    labels = task.labels(tokens)
    deepest = labels.cascade_depth.argmax(1)
    names = []
    for case, column in zip(labels.case.tolist(), deepest.tolist(), strict=True):
        names.append(CASES[case] if case < 2 else f"{CASES[case]} into A{column}")
    return names


def high_loss_cases(
    one: HookedModel, two: HookedModel, task: AdditionTask, tokens: torch.Tensor, top: int = 12
) -> dict[str, Any]:
    """Question classes ranked by the 1-layer model's loss; the worst questions; the 2-layer's view."""
    with torch.no_grad():
        logits_1, logits_2 = one(tokens), two(tokens)
    loss_1 = answer_loss(logits_1, tokens, task).sum(1)  # [batch], nats per question
    answers = task.answer_positions
    pred_1 = answer_logits(logits_1, task).argmax(-1)  # [batch, answer]
    pred_2 = answer_logits(logits_2, task).argmax(-1)
    right_1 = (pred_1 == tokens[:, answers]).all(1)
    right_2 = (pred_2 == tokens[:, answers]).all(1)
    classes = question_class(task, tokens)
    ranked = []
    for name in sorted(set(classes)):
        mask = torch.tensor([c == name for c in classes])
        ranked.append(
            {
                "class": name,
                "count": int(mask.sum()),
                "mean_loss_1l": float(loss_1[mask].mean()),
                "exact_1l": float(right_1[mask].float().mean()),
                "exact_2l": float(right_2[mask].float().mean()),
            }
        )
    ranked.sort(key=lambda r: -r["mean_loss_1l"])
    worst = []
    for idx in loss_1.argsort(descending=True)[:top].tolist():
        text = task.decode(tokens[idx])
        worst.append(
            {
                "question": text[: task.prompt_len],
                "truth": text[task.prompt_len :],
                "answer_1l": task.decode(pred_1[idx]),
                "answer_2l": task.decode(pred_2[idx]),
                "loss_1l": float(loss_1[idx]),
                "class": classes[idx],
            }
        )
    return {"classes": ranked, "worst": worst}
