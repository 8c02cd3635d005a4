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
    run = run_study("maze", Workspace("runs"), "quick")

References:
    Ivanitskiy, Spies et al. 2023, arXiv:2312.02566; github.com/understanding-search/maze-transformer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tinylens import runs
from tinylens.analysis.geometry import rank_correlation
from tinylens.config import RunConfig, derive_seed, make_run_config
from tinylens.errors import unknown_name
from tinylens.model import build_model
from tinylens.studies import maze_analyses as an
from tinylens.studies import maze_figures as figs
from tinylens.studies.claims import Claim, Condition
from tinylens.studies.framework import Study, StudyContext
from tinylens.studies.report import Section
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


STUDY_PRESETS = ("quick", "long", "paper", "tiny")

LONG_STEPS = 40_000

QUICK: dict[str, dict[str, Any]] = {"task": {"grid": 5}, "train": {"steps": 12_000}}
"""The CPU preset's maze recipe on 5×5 mazes, 12,000 steps: training and analyses fit 45 minutes
on 2 cores. (5×5 learns faster per step than 4×4 here: longer paths give more answer tokens.)"""

LONG: dict[str, dict[str, Any]] = {"task": {"grid": 5}, "train": {"steps": LONG_STEPS}}
"""The quick recipe trained longer, to the ≥ 90% exact path that the quick preset's budget falls
short of (README, "Mazes"). Resumable: run the same command again after a stop."""

PAPER: dict[str, dict[str, Any]] = {
    "task": {"grid": 5},
    "model": {"n_layers": 6, "d_model": 256, "n_heads": 8, "d_head": 32, "d_mlp": 1024},
    "train": {
        "steps": 50_000, "batch_size": 128, "lr": 5e-4, "warmup_steps": 500,
        "queries_per_prompt": 1,  # one query per maze, as maze-transformer trains
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    },
}  # fmt: skip
"""5×5 mazes with a model the size of maze-transformer's: GPU-sized (hours on a CPU). It trains on
the GPU where torch sees one; its analyses run on the CPU."""


def study_config(preset: str) -> MazeStudyConfig:
    """``quick``: the CPU solver recipe on 5×5 mazes (about 42 minutes on 2 cores). ``long``: the
    same recipe trained to ≥ 90% exact path (see :data:`LONG`). ``paper``: a 5×5, 6-layer,
    d_model 256 solver, one query per maze (GPU-sized). ``tiny``: a seconds-long smoke run; its
    claims mean nothing."""
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
    if preset in ("quick", "long"):
        recipe = QUICK if preset == "quick" else LONG
        return MazeStudyConfig(preset, make_run_config("maze", "cpu", overrides=recipe))
    return MazeStudyConfig(preset, make_run_config("maze", "cpu", overrides=PAPER))


@dataclass(frozen=True)
class MazeResult:
    """Every measurement of the maze study (JSON-ready values, see each analysis)."""

    config: MazeStudyConfig
    task: MazeTask
    solver_run: str
    path_accuracy: dict[str, Any]
    """:func:`maze_analyses.path_accuracy` on held-out mazes."""
    probes: dict[str, Any]
    """:func:`maze_analyses.connection_probes`: trained model and both controls, every site."""
    probe_over_training: dict[str, Any]
    embedding_geometry: dict[str, Any]
    adjacency_heads: dict[str, Any]
    examples: dict[str, Any]
    """Mazes to draw (decoded by the probe, solved by the model); not written as results."""

    def to_json(self) -> dict[str, Any]:
        return {
            "path_accuracy": self.path_accuracy,
            "probes": self.probes,
            "probe_over_training": self.probe_over_training,
            "embedding_geometry": self.embedding_geometry,
            "adjacency_heads": self.adjacency_heads,
        }

    def meta(self) -> list[str]:
        cfg, task = self.config, self.task
        return [
            f"solver run {self.solver_run} ({task.grid}×{task.grid} {task.generator} mazes, "
            f"{cfg.solver.model.n_layers} layers, d_model {cfg.solver.model.d_model}, "
            f"{cfg.solver.train.steps} steps)",
            f"{cfg.n_eval} held-out mazes for path accuracy, {cfg.n_probe} for the probes, "
            f"{cfg.n_heads} for the heads",
        ]


def measure(ctx: StudyContext, cfg: MazeStudyConfig) -> MazeResult:
    """Train or reuse the solver and run every analysis."""
    trained = ctx.trained(cfg.solver, "maze solver")
    task = trained.task
    assert isinstance(task, MazeTask)
    model = trained.model
    untrained = build_model(cfg.solver.model, seed=derive_seed(cfg.seed, "maze-random-init"))
    rng = torch.Generator().manual_seed(derive_seed(cfg.seed, "maze-study"))
    eval_tokens = task.sample(cfg.n_eval, rng)
    probe_tokens = task.sample(cfg.n_probe, rng)
    head_tokens = task.sample(cfg.n_heads, rng)
    run = trained.run
    # lazily, one model in memory at a time, each checked against the run's config like any load
    checkpoints = (
        (step, runs.load_trained(ctx.workspace, run.name, step).model) for step in run.checkpoint_steps()
    )

    accuracy = an.path_accuracy(model, task, eval_tokens)
    probes, probe = an.connection_probes(model, untrained, task, probe_tokens, cfg.seed)
    over_training = an.probe_over_training(
        checkpoints, task, probe_tokens[: cfg.n_probe_checkpoints], eval_tokens, cfg.seed
    )
    return MazeResult(
        config=cfg,
        task=task,
        solver_run=run.name,
        path_accuracy=accuracy,
        probes=probes,
        probe_over_training=over_training,
        embedding_geometry=an.coordinate_geometry(model, untrained, task),
        adjacency_heads=an.adjacency_heads(model, task, head_tokens, cfg.top_heads, cfg.seed),
        examples={
            "decoded": an.decoded_mazes(task, probe_tokens, probe),
            "solved": an.solved_examples(model, task, eval_tokens),
        },
    )


def sections(result: MazeResult) -> list[Section]:
    return figs.sections(result.to_json(), result.examples)


# -- claims ---------------------------------------------------------------------------------------


def _spearman(a: list[float], b: list[float]) -> float:
    return rank_correlation(torch.tensor(a), torch.tensor(b))


def check_claims(result: MazeResult) -> list[Claim]:
    """Each finding of STUDIES.md against our measurements; the rule is stated in each claim."""
    return [
        solves_claim(result.task.grid, result.path_accuracy),
        probe_claim(result.probes),
        probe_rises_claim(result.probe_over_training),
        lattice_claim(result.embedding_geometry),
        adjacency_heads_claim(result.adjacency_heads),
    ]


def solves_claim(grid: int, acc: dict[str, Any]) -> Claim:
    return Claim.at_least(
        f"A small transformer learns to solve {grid}×{grid} mazes",
        "high exact-path accuracy on held-out mazes",
        acc["exact_path"],
        0.9,
        "exact path on held-out mazes",
        fmt="{:.0%}",
        measured=f"exact path {acc['exact_path']:.1%}, valid path {acc['valid_path']:.1%} on "
        f"{acc['n']} held-out mazes (greedy)",
    )


def probe_claim(probes: dict[str, Any]) -> Claim:
    best = probes["probe"]["best_site"]
    p_acc = probes["probe"]["accuracy"][best]
    ctrl = max(*probes["random_init"]["accuracy"], *probes["shuffled_labels"]["accuracy"])
    worst = probes["probe"]["worst_label_accuracy"]
    return Claim.of(
        "A linear probe on the <PATH_START> residual stream decodes every connection",
        "the maze is linearly decodable from one token",
        f"best site {probes['sites'][best]}: accuracy {p_acc:.1%}, F1 "
        f"{probes['probe']['f1'][best]:.3f}, worst wall {worst:.1%}; "
        f"best control {ctrl:.1%} (majority class {probes['probe']['majority']:.1%})",
        [
            Condition("best-layer held-out probe accuracy", p_acc, ">=", 0.9, "{:.0%}"),
            Condition("its lead over the best control", p_acc - ctrl, ">=", 0.15, "{:.0%}"),
        ],
        note="controls: the best layer of a random-init model and of shuffled labels",
        control=ctrl,
    )


def probe_rises_claim(over: dict[str, Any]) -> Claim:
    rho = _spearman(over["probe_accuracy"], over["path_accuracy"])
    rise = over["probe_accuracy"][-1] - over["probe_accuracy"][0]
    return Claim.of(
        "The probe's accuracy rises together with generalisation",
        "probe accuracy and path accuracy improve together over training",
        f"Spearman {rho:.2f} across {len(over['steps'])} checkpoints; probe accuracy "
        f"{over['probe_accuracy'][0]:.1%} → {over['probe_accuracy'][-1]:.1%}, path "
        f"{over['path_accuracy'][0]:.1%} → {over['path_accuracy'][-1]:.1%}",
        [
            Condition("rank correlation of probe and path accuracy", rho, ">=", 0.8, "{:.1f}"),
            Condition("probe accuracy gained over training", rise, ">=", 0.1, "{:.0%}"),
        ],
        note="over the saved checkpoints",
    )


def lattice_claim(geometry: dict[str, Any]) -> Claim:
    trained_rho = geometry["trained"]["spearman"]
    random_rho = geometry["random_init"]["spearman"]
    return Claim.of(
        "Coordinate embeddings form the lattice",
        "embedding distance tracks grid distance",
        f"Spearman(embedding distance, lattice distance) {trained_rho:.2f}; random init "
        f"{random_rho:.2f}",
        [
            Condition("rank correlation", trained_rho, ">=", 0.5, "{:.1f}"),
            Condition(
                "its lead over the random-init model", trained_rho - random_rho, ">=", 0.3, "{:.1f}"
            ),
        ],
        control=random_rho,
    )


def adjacency_heads_claim(heads: dict[str, Any]) -> Claim:
    top_layer, top_head = heads["order"][0]
    v = heads["valid_per_key"][top_layer][top_head]
    iv = heads["invalid_per_key"][top_layer][top_head]
    clean = heads["clean"]["valid_next_step"]
    drop_top = clean - heads["top_ablated"]["valid_next_step"]
    drop_control = clean - heads["control_ablated"]["valid_next_step"]
    # no attention at all on walled-off neighbours leaves the ratio unmeasured (NaN), and so
    # does a head that attends to nothing (0 / 0): a condition never holds on either
    ratio = v / iv if iv > 0 else math.nan
    return Claim.of(
        "Adjacency heads attend from the current cell to its valid neighbours",
        "some heads attend to the adjacency-list tokens of open neighbours",
        f"top head L{top_layer}H{top_head}: attention per token {v:.3f} on valid next cells vs "
        f"{iv:.3f} on walled-off neighbours; ablating the top {heads['top_k']} drops valid "
        f"next steps by {drop_top:.1%} (other heads of the same layers: {drop_control:.1%})",
        [
            Condition(
                "top head's attention on valid next cells over walled-off neighbours",
                ratio,
                ">=",
                2,
                "{:g}×",
            ),
            Condition(
                "extra drop in valid next steps from ablating the top heads",
                drop_top - drop_control,
                ">=",
                0.1,
                "{:.0%}",
            ),
        ],
        note="the control ablates as many other heads of the same layers",
        control=drop_control,
    )


STUDY = Study(
    name="maze",
    title="Structured World Representations in Maze-Solving Transformers — reproduction",
    summary="Ivanitskiy, Spies et al. 2023: does a maze solver hold a map of the maze?",
    presets=STUDY_PRESETS,
    configure=lambda preset, _inputs: study_config(preset),
    measure=measure,
    claims=check_claims,
    sections=sections,
)
