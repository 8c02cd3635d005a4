"""Training runs as a whole: start, resume or reuse a run by config, and open a trained one.

Used by the CLI and by studies, which both want "the model for this config, trained once".
"""

from __future__ import annotations

from dataclasses import dataclass

from transformer_lens.model_bridge import TransformerBridge

from tinylens.config import RunConfig
from tinylens.errors import ConfigError, TinylensError
from tinylens.model import load_model
from tinylens.store import Run, Workspace
from tinylens.tasks import Task, make_task
from tinylens.train import Trainer, TrainResult


@dataclass(frozen=True)
class TrainedModel:
    """A run's model at one checkpoint, with its task and config."""

    run: Run
    config: RunConfig
    task: Task
    model: TransformerBridge
    step: int


def open_or_create(workspace: Workspace, cfg: RunConfig, name: str | None = None) -> Run:
    """The run for ``cfg``: the existing one if ``name`` (default: from the config hash) exists
    with the same config, a new one otherwise. A name taken by another config is an error."""
    name = name or cfg.default_name()
    if workspace.has_run(name):
        run = workspace.run(name)
        existing = RunConfig.from_dict(run.config)
        if existing.identity != cfg.identity:
            raise ConfigError(
                f"run {name!r} already exists with a different config; pick another --name, "
                f"or `tinylens resume {name}` to continue it as it was"
            )
        return run
    return workspace.create_run(name, cfg.to_dict(), kind="train")


def train(
    workspace: Workspace, cfg: RunConfig, name: str | None = None, *, progress: bool = True
) -> TrainResult:
    """Train ``cfg`` to completion, resuming the matching run if one was started before."""
    run = open_or_create(workspace, cfg, name)
    return Trainer(run, cfg, progress=progress).fit()


def resume(workspace: Workspace, name: str, *, progress: bool = True) -> TrainResult:
    """Continue the run ``name`` from its last saved state, with its own stored config."""
    run = workspace.run(name)
    cfg = RunConfig.from_dict(run.config)
    return Trainer(run, cfg, progress=progress).fit()


def load_trained(workspace: Workspace, name: str, step: int | None = None) -> TrainedModel:
    """Open run ``name`` at checkpoint ``step`` (default: its latest)."""
    run = workspace.run(name)
    try:
        cfg = RunConfig.from_dict(run.config)
    except TinylensError as err:
        raise ConfigError(f"run {name!r} has an unreadable config.json: {err}") from None
    path = run.checkpoint_file(step)
    chosen = step if step is not None else run.checkpoint_steps()[-1]
    task = make_task(cfg.task, cfg.task_options)
    return TrainedModel(run, cfg, task, load_model(path), chosen)
