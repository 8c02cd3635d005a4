"""The measurements of the maze study, each returning plain JSON-ready results.

Every function takes a model (any TransformerLens model), the task and inputs; the pipeline in
:mod:`tinylens.studies.maze` decides which models and inputs, and turns results into claims.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import torch

from tinylens.analysis.attention import attention_mass
from tinylens.analysis.geometry import embedding_geometry
from tinylens.analysis.heads import ablate_heads, allowed_rate, rank_heads
from tinylens.analysis.probes import (
    ProbeResult,
    fit_probes,
    residual_at,
    residual_names,
    shuffled_labels,
)
from tinylens.analysis.protocol import HookedModel
from tinylens.evaluation import evaluate, greedy_answer
from tinylens.tasks.maze import maze_from_labels
from tinylens.tasks.maze_task import MazeTask
from tinylens.tasks.maze_tokens import PATH_END, coord_tokens, parse_coord


def path_accuracy(model: HookedModel, task: MazeTask, tokens: torch.Tensor) -> dict[str, float]:
    """Greedy-decoded exact path, valid path and target reached, plus teacher-forced exact match."""
    prompt = tokens[:, : task.prompt_len]
    generated = task.generation_metrics(prompt, greedy_answer(model, task, prompt))
    forced = evaluate(model, task, tokens)
    return {**generated, "teacher_forced_exact": forced.exact, "n": int(tokens.shape[0])}


def solved_examples(
    model: HookedModel, task: MazeTask, tokens: torch.Tensor, count: int = 3
) -> list[dict[str, Any]]:
    """A few held-out mazes with the model's greedy path: the first failures, else the first ones."""
    prompt = tokens[:, : task.prompt_len]
    answers = greedy_answer(model, task, prompt[: 4 * count])
    picked: list[dict[str, Any]] = []
    for row, answer in zip(tokens[: 4 * count], answers, strict=True):
        solved = task.solved_maze(row)
        words = task.decode(answer).split()
        cells = words[: words.index(PATH_END)] if PATH_END in words else words
        path = tuple(c for c in (parse_coord(w) for w in cells) if c is not None)
        ok = path == solved.path
        picked.append({"maze": solved, "predicted": path, "title": "solved" if ok else "failed"})
    picked.sort(key=lambda ex: ex["title"] == "solved")  # failures first: they teach more
    return picked[:count]


def _probe_summary(result: ProbeResult) -> dict[str, Any]:
    return {
        "accuracy": result.accuracy.tolist(),
        "f1": result.f1.tolist(),
        "majority": result.majority,
        "best_site": result.best_site,
        "worst_label_accuracy": result.label_accuracy[result.best_site].min().item(),
    }


def connection_probes(
    model: HookedModel, untrained: HookedModel, task: MazeTask, tokens: torch.Tensor, seed: int
) -> tuple[dict[str, Any], ProbeResult]:
    """Probe every wall from the ``<PATH_START>`` residual stream at every layer, with controls.

    Returns the JSON summary (probe, random-init model, shuffled labels; accuracy and F1 per site)
    and the trained model's full probe result (for drawing a decoded maze).
    """
    position = task.prompt_len - 1  # <PATH_START>: the last prompt token
    labels = task.connection_labels(tokens)
    features = residual_at(model, tokens, position)
    probe = fit_probes(features, labels, seed=seed)
    random_init = fit_probes(residual_at(untrained, tokens, position), labels, seed=seed)
    shuffled = fit_probes(features, shuffled_labels(labels, seed), seed=seed)
    summary = {
        "sites": residual_names(model),
        "position": position,
        "n_inputs": int(tokens.shape[0]),
        "n_walls": int(labels.shape[1]),
        "open_share": labels.float().mean().item(),
        "probe": _probe_summary(probe),
        "random_init": _probe_summary(random_init),
        "shuffled_labels": _probe_summary(shuffled),
    }
    return summary, probe


def decoded_mazes(
    task: MazeTask, tokens: torch.Tensor, probe: ProbeResult, count: int = 3
) -> list[dict[str, Any]]:
    """A few held-out mazes as the best probe layer decodes them, beside the truth."""
    site = probe.best_site
    out = []
    for k in range(min(count, len(probe.test_index))):
        row = int(probe.test_index[k])
        solved = task.solved_maze(tokens[row])
        decoded = maze_from_labels(task.grid, probe.predictions[site, k].numpy())
        out.append({"row": row, "true": solved, "decoded": decoded})
    return out


def probe_over_training(
    checkpoints: Iterable[tuple[int, HookedModel]],
    task: MazeTask,
    probe_tokens: torch.Tensor,
    eval_tokens: torch.Tensor,
    seed: int,
) -> dict[str, Any]:
    """At each checkpoint: the best layer's probe accuracy and the held-out path accuracy
    (teacher-forced exact match, which equals greedy exact path).

    Args:
        checkpoints: ``(step, model)`` pairs in ascending steps; a lazy iterable keeps one model
            in memory at a time.
    """
    position = task.prompt_len - 1
    labels = task.connection_labels(probe_tokens)
    steps, probe_acc, path_acc = [], [], []
    for step, model in checkpoints:
        result = fit_probes(residual_at(model, probe_tokens, position), labels, seed=seed)
        steps.append(step)
        probe_acc.append(float(result.accuracy.max()))
        path_acc.append(evaluate(model, task, eval_tokens).exact)
    return {"steps": steps, "probe_accuracy": probe_acc, "path_accuracy": path_acc}


def _layer_matched(
    top: list[tuple[int, int]], order: list[tuple[int, int]], rng: random.Random
) -> list[tuple[int, int]]:
    """For each top head, a random head of the same layer outside the top (any layer if none)."""
    rest = [h for h in order if h not in top]
    picked: list[tuple[int, int]] = []
    for layer, _ in top:
        pool = [h for h in rest if h[0] == layer and h not in picked] or [
            h for h in rest if h not in picked
        ]
        picked.append(rng.choice(pool))
    return picked


def coordinate_geometry(model: HookedModel, untrained: HookedModel, task: MazeTask) -> dict[str, Any]:
    """PCA of the coordinate-token embeddings and how their distances track lattice distance."""
    names = coord_tokens(task.grid)
    ids = torch.tensor([task.vocab.index(t) for t in names])
    points = torch.tensor([parse_coord(t) for t in names], dtype=torch.float32)
    out: dict[str, Any] = {"tokens": names, "points": points.tolist()}
    for key, m in (("trained", model), ("random_init", untrained)):
        geometry = embedding_geometry(m.W_E[ids], points)
        out[key] = {
            "projection": geometry.projection.tolist(),
            "explained": geometry.explained.tolist(),
            "spearman": geometry.spearman,
            "pearson": geometry.pearson,
        }
    return out


def adjacency_heads(
    model: HookedModel, task: MazeTask, tokens: torch.Tensor, top_k: int, seed: int
) -> dict[str, Any]:
    """Score heads by attention from the current path cell to tokens naming a legal next cell
    minus tokens naming a walled-off neighbour, per token (the two sets differ in size); ablate
    the top heads, and as a control as many random other heads from the same layers (early
    heads matter more to everything, so a layer-blind control would flatter the top heads).

    The ablation measure is the share of path positions (teacher-forced) whose top prediction is a
    cell joined to the current one by an open wall ("valid next step"), and the share that is the
    true next cell.
    """
    steps = task.next_steps(tokens)
    key_sets = {"valid": steps.valid_keys, "invalid": steps.invalid_keys}
    mass = attention_mass(model, tokens, steps.query, key_sets)
    per_key = attention_mass(model, tokens, steps.query, key_sets, per_key=True)
    score = per_key["valid"] - per_key["invalid"]
    order = rank_heads(score)
    n_queries = int(steps.query.sum())
    per_query = {
        "valid": steps.valid_keys.sum().item() / n_queries,
        "invalid": steps.invalid_keys.sum().item() / n_queries,
    }
    next_token = torch.zeros_like(steps.allowed)
    next_token.scatter_(-1, tokens.roll(-1, dims=1)[:, :, None], True)

    def measure(heads: list[tuple[int, int]]) -> dict[str, float]:
        logits = ablate_heads(model, tokens, heads, kind="mean")
        return {
            "valid_next_step": allowed_rate(logits, steps.query, steps.allowed),
            "correct_next_step": allowed_rate(logits, steps.query, next_token),
        }

    top_k = min(top_k, len(order) - 1)
    top = order[:top_k]
    controls = [measure(_layer_matched(top, order, random.Random(seed + k))) for k in range(3)]
    return {
        "valid_mass": mass["valid"].tolist(),
        "invalid_mass": mass["invalid"].tolist(),
        "valid_per_key": per_key["valid"].tolist(),
        "invalid_per_key": per_key["invalid"].tolist(),
        "score": score.tolist(),
        "keys_per_query": per_query,
        "order": [list(h) for h in order],
        "top_k": top_k,
        "clean": measure([]),
        "top_ablated": measure(top),
        "control_ablated": {key: sum(c[key] for c in controls) / len(controls) for key in controls[0]},
        "n_queries": n_queries,
    }
