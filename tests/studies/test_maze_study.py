"""The maze study end to end on a tiny solver: every result, figure and claim is produced."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from tinylens.errors import UnknownNameError
from tinylens.store import Run
from tinylens.studies.maze import study_config
from tinylens.studies.maze_analyses import _layer_matched

RESULTS = ["path_accuracy", "probes", "probe_over_training", "embedding_geometry", "adjacency_heads"]


def read(run: Run, name: str):
    return run.read_result(name)


def test_study_writes_results_figures_and_report(maze_study_run: Run) -> None:
    for name in [*RESULTS, "claims"]:
        assert maze_study_run.read_result(name) is not None, name
    figures = maze_study_run.figure_names()
    assert len(figures) >= 6
    html = maze_study_run.report_path.read_text()
    assert html.index("Claims") < html.index("Linear probes")
    assert html.count("data:image/png;base64,") == len(figures)


def test_probe_results_cover_every_layer_and_both_controls(maze_study_run: Run) -> None:
    probes = read(maze_study_run, "probes")
    assert probes["sites"] == [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_post",
    ]
    assert probes["n_walls"] == 12  # 3×3 lattice
    for key in ("probe", "random_init", "shuffled_labels"):
        assert len(probes[key]["accuracy"]) == len(probes[key]["f1"]) == 3
        assert all(0 <= a <= 1 for a in probes[key]["accuracy"])
    # before any layer the <PATH_START> residual is the same for every maze: nothing to decode
    assert probes["probe"]["accuracy"][0] == pytest.approx(probes["probe"]["majority"], abs=1e-6)
    over = read(maze_study_run, "probe_over_training")
    assert over["steps"] == sorted(over["steps"]) and over["steps"][-1] == 60
    assert len(over["probe_accuracy"]) == len(over["path_accuracy"]) == len(over["steps"])


def test_claims_are_measured_not_hard_coded(maze_study_run: Run) -> None:
    claims = read(maze_study_run, "claims")
    assert len(claims) == 5
    for claim in claims:
        assert {"claim", "expected", "measured", "holds", "rule", "conditions"} <= set(claim)
        assert isinstance(claim["holds"], bool)
    assert claims[0]["holds"] is False  # a 60-step solver cannot solve mazes: the table says so


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(UnknownNameError, match="maze study preset"):
        study_config("huge")


def test_long_preset_is_the_quick_recipe_trained_longer() -> None:
    quick, long = study_config("quick").solver, study_config("long").solver
    assert long.train.steps > quick.train.steps
    assert replace(long, train=replace(long.train, steps=quick.train.steps)) == replace(
        quick, preset=long.preset
    )
    assert quick.train.queries_per_prompt > 1  # several queries share each adjacency list
    assert study_config("paper").solver.train.queries_per_prompt == 1  # as maze-transformer trains


def test_ablation_controls_come_from_the_same_layers() -> None:
    order = [(layer, head) for layer in range(3) for head in range(4)]
    top = [(0, 1), (2, 3)]
    for seed in range(20):
        picked = _layer_matched(top, order, random.Random(seed))
        assert [h[0] for h in picked] == [0, 2]
        assert not set(picked) & set(top) and len(set(picked)) == 2
    # a layer with no other head: fall back to any other head
    assert _layer_matched([(0, 0)], [(0, 0), (1, 0)], random.Random(0)) == [(1, 0)]


def test_a_solver_that_learned_nothing_passes_no_claim(maze_study_run: Run) -> None:
    """The tiny preset's 60-step solver cannot solve mazes: every claim must say so."""
    assert [c["claim"] for c in read(maze_study_run, "claims") if c["holds"]] == []
