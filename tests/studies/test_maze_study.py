"""The maze study end to end on a tiny solver: every result, figure and claim is produced."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tinylens.errors import UnknownNameError
from tinylens.store import Run
from tinylens.studies.maze import check_claims, study_config
from tinylens.studies.maze_analyses import _layer_matched
from tinylens.tasks.maze_task import MazeTask

RESULTS = ["path_accuracy", "probes", "probe_over_training", "embedding_geometry", "adjacency_heads"]


def read(run: Run, name: str):
    return json.loads((run.path / "results" / f"{name}.json").read_text())


def test_study_writes_results_figures_and_report(maze_study_run: Run) -> None:
    path: Path = maze_study_run.path
    for name in [*RESULTS, "claims"]:
        assert (path / "results" / f"{name}.json").is_file(), name
    figures = sorted(p.name for p in (path / "figures").glob("*.png"))
    assert len(figures) >= 6
    html = (path / "report.html").read_text()
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
        assert set(claim) == {"claim", "expected", "measured", "holds", "rule"}
        assert isinstance(claim["holds"], bool)
    assert claims[0]["holds"] is False  # a 60-step solver cannot solve mazes: the table says so


def test_claim_rules_follow_the_numbers(maze_study_run: Run) -> None:
    results = {name: read(maze_study_run, name) for name in RESULTS}
    task = MazeTask(grid=3)
    results["path_accuracy"]["exact_path"] = 0.95
    probe = results["probes"]["probe"]
    probe["accuracy"] = [0.5, 0.99, 0.97]
    probe["best_site"] = 1
    for control in ("random_init", "shuffled_labels"):
        results["probes"][control]["accuracy"] = [0.5, 0.7, 0.7]
    claims = check_claims(task, results)
    assert claims[0].holds and claims[1].holds
    results["probes"]["random_init"]["accuracy"] = [0.5, 0.9, 0.9]  # a control as good: no claim
    assert not check_claims(task, results)[1].holds


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(UnknownNameError, match="maze study preset"):
        study_config("huge")


def test_ablation_controls_come_from_the_same_layers() -> None:
    order = [(layer, head) for layer in range(3) for head in range(4)]
    top = [(0, 1), (2, 3)]
    for seed in range(20):
        picked = _layer_matched(top, order, random.Random(seed))
        assert [h[0] for h in picked] == [0, 2]
        assert not set(picked) & set(top) and len(set(picked)) == 2
    # a layer with no other head: fall back to any other head
    assert _layer_matched([(0, 0)], [(0, 0), (1, 0)], random.Random(0)) == [(1, 0)]
