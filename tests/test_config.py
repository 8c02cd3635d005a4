"""Presets: one name, a recipe per task, and the user's overrides always win."""

from __future__ import annotations

from tinylens.config import PRESETS, make_run_config


def test_a_preset_carries_a_recipe_per_task() -> None:
    addition = make_run_config("addition", "cpu")
    maze = make_run_config("maze", "cpu")
    assert (addition.model.n_layers, addition.train.precision) == (1, "fp32")
    recipe = PRESETS["cpu"].per_task["maze"]
    assert maze.model.n_layers == recipe["model"]["n_layers"]
    assert maze.train.batch_size == recipe["train"]["batch_size"]
    assert maze.train.precision == "bf16"


def test_user_overrides_win_over_the_task_recipe() -> None:
    maze = make_run_config("maze", "cpu", overrides={"model": {"n_layers": 2}, "train": {"lr": 1e-4}})
    recipe = PRESETS["cpu"].per_task["maze"]
    assert maze.model.n_layers == 2 and maze.train.lr == 1e-4
    assert maze.model.d_model == recipe["model"]["d_model"]  # the rest of the recipe stays
    assert maze.train.batch_size == recipe["train"]["batch_size"]
