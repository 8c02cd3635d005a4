"""Builders for tests: tiny model and run configs with overridable fields."""

from __future__ import annotations

from tinylens.config import RunConfig, make_run_config
from tinylens.model import ModelConfig


def model_cfg(**overrides: object) -> ModelConfig:
    """A tiny architecture sized for 5-digit addition; override any field."""
    base = {"n_layers": 1, "n_heads": 2, "d_model": 16, "d_head": 8, "d_mlp": 32}
    return ModelConfig(**{**base, **overrides}).sized(d_vocab=12, n_ctx=18)  # type: ignore[arg-type]


def run_cfg(steps: int = 40, seed: int = 0, **train: object) -> RunConfig:
    """The tiny preset, shortened: a few seconds of training."""
    defaults = {"eval_every": 20, "eval_size": 128, "save_every": 20, "log_every": 5}
    return make_run_config(
        "addition",
        "tiny",
        seed=seed,
        steps=steps,
        overrides={"train": {**defaults, **train}},
    )
