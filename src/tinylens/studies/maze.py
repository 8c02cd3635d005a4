"""Study ``maze``: reproduce Ivanitskiy, Spies et al., "Structured World Representations in
Maze-Solving Transformers" (2023).

Background:
    A small decoder trained to write the shortest path through a lattice maze, given the maze as a
    shuffled adjacency list, builds a picture of the maze: a linear probe on the residual stream of
    a single token (``<PATH_START>``) decodes every connection; the coordinate embeddings lie like
    the lattice; some heads attend from the current cell to the adjacency-list tokens of its open
    neighbours; and the probe's accuracy rises with the model's generalisation. This study trains
    (or reuses) a solver and measures each claim, with controls, into ``results/*.json``,
    ``figures/*.png``, ``results/claims.json`` and ``report.html``.

Usage:
    tinylens study maze --preset quick
    run = run_maze_study(Workspace("runs"), "quick")

References:
    Ivanitskiy, Spies et al. 2023, arXiv:2312.02566; github.com/understanding-search/maze-transformer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tinylens import runs
from tinylens.analysis.geometry import rank_correlation
from tinylens.config import RunConfig, derive_seed, make_run_config
from tinylens.errors import TinylensError, unknown_name
from tinylens.model import build_model, load_model
from tinylens.store import Run, Workspace
from tinylens.studies import maze_analyses as an
from tinylens.studies import maze_figures as figs
from tinylens.studies.common import study_run
from tinylens.studies.report import Claim, render_report
from tinylens.tasks.maze_task import MazeTask


@dataclass(frozen=True)
class MazeStudyConfig:
    """What the study trains and how many mazes each analysis uses."""

    preset: str
    solver: RunConfig
    n_eval: int = 1000
    """Held-out mazes for path accuracy (greedy decoding)."""
    n_probe: int = 4000
    """Mazes for the connection probes (a quarter held out to score them)."""
    n_probe_checkpoints: int = 1500
    """Mazes per checkpoint for the probe-over-training curve."""
    n_heads: int = 512
    """Mazes for head scores and ablations."""
    top_heads: int = 2
    """How many top-ranked adjacency heads are ablated together."""
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STUDY_PRESETS = ("quick", "paper", "tiny")

QUICK: dict[str, dict[str, Any]] = {"task": {"grid": 5}, "train": {"steps": 7_000}}
"""The CPU preset's maze recipe on 5×5 mazes, cut to 7,000 steps to fit 45 minutes on 2 cores.
(5×5 learns faster per step than 4×4 here: longer paths give more answer tokens per maze.)"""

PAPER: dict[str, dict[str, Any]] = {
    "task": {"grid": 5},
    "model": {"n_layers": 6, "d_model": 256, "n_heads": 8, "d_head": 32, "d_mlp": 1024},
    "train": {"steps": 50_000, "batch_size": 128, "lr": 5e-4, "warmup_steps": 500},
}
"""5×5 mazes with a model the size of maze-transformer's: GPU-sized (hours on a CPU)."""


def study_config(preset: str) -> MazeStudyConfig:
    """``quick``: the CPU solver recipe on 5×5 mazes (about 40 minutes on 2 cores). ``paper``: a
    5×5, 6-layer, d_model 256 solver (GPU-sized). ``tiny``: a seconds-long smoke run; its claims
    mean nothing."""
    if preset not in STUDY_PRESETS:
        raise unknown_name("maze study preset", preset, STUDY_PRESETS)
    if preset == "tiny":
        overrides = {
            "task": {"grid": 3},
            "model": {"n_layers": 2},
            "train": {"steps": 60, "eval_every": 30, "eval_size": 64, "save_every": 30},
        }
        solver = make_run_config("maze", "tiny", overrides=overrides)
        return MazeStudyConfig(
            preset, solver, n_eval=64, n_probe=300, n_probe_checkpoints=120, n_heads=64
        )
    if preset == "quick":
        return MazeStudyConfig(preset, make_run_config("maze", "cpu", overrides=QUICK))
    return MazeStudyConfig(preset, make_run_config("maze", "cpu", overrides=PAPER))


def run_maze_study(workspace: Workspace, preset: str = "quick", *, progress: bool = True) -> Run:
    """Train or reuse the solver, run every analysis, write results, figures and the report."""
    cfg = study_config(preset)
    started = time.perf_counter()
    result = runs.train(workspace, cfg.solver, progress=progress)
    if result.status != "done":
        raise TinylensError(
            f"training of the maze solver stopped at step {result.step}; continue it with "
            f"`tinylens resume {result.run}`, then run the study again"
        )
    trained = runs.load_trained(workspace, result.run)
    task = trained.task
    assert isinstance(task, MazeTask)
    model = trained.model
    untrained = build_model(cfg.solver.model, seed=derive_seed(cfg.seed, "maze-random-init"))
    study = study_run(workspace, "maze", cfg.preset, cfg.to_dict())
    rng = torch.Generator().manual_seed(derive_seed(cfg.seed, "maze-study"))
    eval_tokens = task.sample(cfg.n_eval, rng)
    probe_tokens = task.sample(cfg.n_probe, rng)
    head_tokens = task.sample(cfg.n_heads, rng)

    # -- measurements --
    accuracy = an.path_accuracy(model, task, eval_tokens)
    probes, probe = an.connection_probes(model, untrained, task, probe_tokens, cfg.seed)
    over_training = an.probe_over_training(
        trained.run,
        lambda step: load_model(trained.run.checkpoint_file(step)),
        task,
        probe_tokens[: cfg.n_probe_checkpoints],
        eval_tokens,
        cfg.seed,
    )
    geometry = an.coordinate_geometry(model, untrained, task)
    heads = an.adjacency_heads(model, task, head_tokens, cfg.top_heads, cfg.seed)
    results = {
        "path_accuracy": accuracy,
        "probes": probes,
        "probe_over_training": over_training,
        "embedding_geometry": geometry,
        "adjacency_heads": heads,
    }
    for name, value in results.items():
        study.write_result(name, value)
    claims = check_claims(task, results)
    study.write_result("claims", [c.to_dict() for c in claims])

    # -- report --
    examples = {
        "decoded": an.decoded_mazes(task, probe_tokens, probe),
        "solved": an.solved_examples(model, task, eval_tokens),
    }
    meta = [
        f"preset {preset}; solver run {trained.run.name} ({task.grid}×{task.grid} "
        f"{task.generator} mazes, {cfg.solver.model.n_layers} layers, d_model "
        f"{cfg.solver.model.d_model}, {cfg.solver.train.steps} steps)",
        f"{cfg.n_eval} held-out mazes for path accuracy, {cfg.n_probe} for the probes, "
        f"{cfg.n_heads} for the heads; the study took {time.perf_counter() - started:.0f} s "
        "(training included, where it ran now)",
    ]
    sections = figs.sections(results, examples)
    html, pngs = render_report(
        "Structured World Representations in Maze-Solving Transformers — reproduction",
        meta,
        claims,
        sections,
    )
    for name, png in pngs.items():
        study.write_figure_png(name, png)
    study.write_report(html)
    study.set_status("done")
    return study


# -- claims ---------------------------------------------------------------------------------------


def _spearman(a: list[float], b: list[float]) -> float:
    return rank_correlation(torch.tensor(a), torch.tensor(b))


def check_claims(task: MazeTask, results: dict[str, Any]) -> list[Claim]:
    """Each finding of STUDIES.md against our measurements; the rules are stated in each claim."""
    acc, probes = results["path_accuracy"], results["probes"]
    over, geometry = results["probe_over_training"], results["embedding_geometry"]
    heads = results["adjacency_heads"]
    claims = [
        Claim(
            f"A small transformer learns to solve {task.grid}×{task.grid} mazes",
            "high exact-path accuracy on held-out mazes",
            f"exact path {acc['exact_path']:.1%}, valid path {acc['valid_path']:.1%} on "
            f"{acc['n']} held-out mazes (greedy)",
            acc["exact_path"] >= 0.9,
            "≥ 90% exact path on held-out mazes",
        )
    ]
    best = probes["probe"]["best_site"]
    p_acc = probes["probe"]["accuracy"][best]
    ctrl = max(*probes["random_init"]["accuracy"], *probes["shuffled_labels"]["accuracy"])
    worst = probes["probe"]["worst_label_accuracy"]
    claims.append(
        Claim(
            "A linear probe on the <PATH_START> residual stream decodes every connection",
            "the maze is linearly decodable from one token",
            f"best site {probes['sites'][best]}: accuracy {p_acc:.1%}, F1 "
            f"{probes['probe']['f1'][best]:.3f}, worst wall {worst:.1%}; "
            f"best control {ctrl:.1%} (majority class {probes['probe']['majority']:.1%})",
            p_acc >= 0.9 and p_acc - ctrl >= 0.15,
            "best-layer held-out accuracy ≥ 90% and ≥ 15 points above the best layer of both "
            "controls (random-init model, shuffled labels)",
        )
    )
    rho = _spearman(over["probe_accuracy"], over["path_accuracy"])
    rise = over["probe_accuracy"][-1] - over["probe_accuracy"][0]
    claims.append(
        Claim(
            "The probe's accuracy rises together with generalisation",
            "probe accuracy and path accuracy improve together over training",
            f"Spearman {rho:.2f} across {len(over['steps'])} checkpoints; probe accuracy "
            f"{over['probe_accuracy'][0]:.1%} → {over['probe_accuracy'][-1]:.1%}, path "
            f"{over['path_accuracy'][0]:.1%} → {over['path_accuracy'][-1]:.1%}",
            rho >= 0.8 and rise >= 0.1,
            "rank correlation ≥ 0.8 between probe and path accuracy over the saved checkpoints, "
            "and the probe gains ≥ 10 points",
        )
    )
    trained_rho = geometry["trained"]["spearman"]
    random_rho = geometry["random_init"]["spearman"]
    claims.append(
        Claim(
            "Coordinate embeddings form the lattice",
            "embedding distance tracks grid distance",
            f"Spearman(embedding distance, lattice distance) {trained_rho:.2f}; random init "
            f"{random_rho:.2f}",
            trained_rho >= 0.5 and trained_rho - random_rho >= 0.3,
            "rank correlation ≥ 0.5, and ≥ 0.3 above the random-init model's",
        )
    )
    order = heads["order"]
    top_layer, top_head = order[0]
    v = heads["valid_per_key"][top_layer][top_head]
    iv = heads["invalid_per_key"][top_layer][top_head]
    clean = heads["clean"]["valid_next_step"]
    drop_top = clean - heads["top_ablated"]["valid_next_step"]
    drop_control = clean - heads["control_ablated"]["valid_next_step"]
    claims.append(
        Claim(
            "Adjacency heads attend from the current cell to its valid neighbours",
            "some heads attend to the adjacency-list tokens of open neighbours",
            f"top head L{top_layer}H{top_head}: attention per token {v:.3f} on valid next cells vs "
            f"{iv:.3f} on walled-off neighbours; ablating the top {heads['top_k']} drops valid "
            f"next steps by {drop_top:.1%} (other heads of the same layers: {drop_control:.1%})",
            v >= 2 * iv and drop_top - drop_control >= 0.1,
            "the top head's attention per token on valid next cells ≥ 2× that on walled-off "
            "neighbours, and ablating the top heads costs ≥ 10 points more valid next steps than "
            "ablating as many other heads of the same layers",
        )
    )
    return claims
