"""Builders and comparisons shared by the sweep tests (local and Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from tinylens.store import Workspace
from tinylens.sweep import SweepResult, SweepSpec, parse_spec

# Short tiny-preset trials: a few seconds each. save_every is small, so a killed trial resumes.
TRAIN = {"steps": 120, "eval_every": 40, "eval_size": 128, "save_every": 20, "log_every": 10}


def spec_table(**sections: Any) -> dict[str, Any]:
    """A 4-trial spec (n_layers 1, 2 × seed 0, 1) as parsed TOML; ``sections`` replace tables."""
    table: dict[str, Any] = {
        "sweep": {"name": "test", "task": "addition", "preset": "tiny", "cpus_per_trial": 1},
        "base": {"train": dict(TRAIN)},
        "grid": {"model.n_layers": [1, 2], "seed": [0, 1]},
        "measure": {"fresh": {"n": 300, "seed": 0}, "steps_to": [0.01]},
    }
    table.update(sections)
    return table


def four_trials(**sections: Any) -> SweepSpec:
    return parse_spec(spec_table(**sections))


def final_weights(root: Path, run: str) -> dict[str, torch.Tensor]:
    path = Workspace(root, index=False).run(run).checkpoint_file()
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def metric_rows(root: Path, run: str) -> list[tuple[int, str, float]]:
    return sorted(Workspace(root, index=False).run(run).metric_rows())


def comparable(result: SweepResult) -> list[dict[str, Any]]:
    """The sweep's rows without wall-clock times, as JSON would hold them."""
    rows = json.loads(json.dumps([t.to_dict() for t in result.trials]))
    for row in rows:
        row["metrics"].pop("train_seconds")
    return rows


def assert_same_sweeps(a_root: Path, a: SweepResult, b_root: Path, b: SweepResult) -> None:
    """Same trial rows, and every trial's final weights and logged metrics equal bit for bit."""
    assert comparable(a) == comparable(b)
    for trial in a.trials:
        wa, wb = final_weights(a_root, trial.run), final_weights(b_root, trial.run)
        assert wa.keys() == wb.keys()
        for key, value in wa.items():
            assert torch.equal(value, wb[key]), f"{trial.run}: {key} differs"
        assert metric_rows(a_root, trial.run) == metric_rows(b_root, trial.run), trial.run
