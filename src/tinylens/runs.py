"""Training runs as a whole: start, resume or reuse a run by config, and open a trained one.

Used by the CLI and by studies, which both want "the model for this config, trained once".

A run's ``config.json`` is checked before it is used: it must parse into a :class:`RunConfig`, its
task options must give the vocabulary and context its model was sized for, and it must still be the
config the checkpoints were trained with. Any mismatch is a :class:`ConfigError` or
:class:`CheckpointError`, never a model scored on the wrong task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from tinylens.config import RunConfig
from tinylens.errors import CheckpointError, ConfigError, TinylensError
from tinylens.model import MODEL_KIND, load_model
from tinylens.store import Run, Workspace, read_metadata, verify_tensors
from tinylens.tasks import Task, make_task
from tinylens.train import (
    STATE_KIND,
    Trainer,
    TrainResult,
    checkpoint_steps,
    refuse_missing_checkpoints,
    start_over_hint,
)


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
    with the same config, a new one otherwise. A name taken by another config is an error, and so
    is an empty name (None means the default)."""
    if name is None:
        name = cfg.default_name()
    elif not name:
        raise ConfigError(
            "run name must not be empty; leave --name out to use the default name "
            f"({cfg.default_name()})"
        )
    if workspace.has_run(name):
        run = workspace.run(name)
        existing = stored_config(run)
        if existing.identity != cfg.identity:
            raise ConfigError(
                f"run {name!r} already exists with a different config; pick another --name, "
                f"or `tinylens resume {name}` to continue it as it was (if its config.json was "
                "edited by hand, restore it first)"
            )
        return run
    # Another process may create it between the check and here: create_run then returns its run.
    return workspace.create_run(name, cfg.to_dict(), kind="train")


def train(
    workspace: Workspace, cfg: RunConfig, name: str | None = None, *, progress: bool = True
) -> TrainResult:
    """Train ``cfg`` to completion, resuming the matching run if one was started before.

    If another process is training the same run, this waits for it and then reports the run.
    """
    run = open_or_create(workspace, cfg, name)
    return Trainer(run, cfg, progress=progress).fit()


def resume(
    workspace: Workspace, name: str, *, progress: bool = True, restart: bool = False
) -> TrainResult:
    """Continue the run ``name`` from its last saved state, with its own stored config.

    ``restart``: delete what the run saved (checkpoints, metrics, results) and train it from step
    0 instead, e.g. when its checkpoints were lost and resuming is refused.
    """
    run = workspace.run(name)
    cfg = stored_config(run)
    check_task_fits_model(run, cfg)
    return Trainer(run, cfg, progress=progress).fit(restart=restart)


def check_finished(run: Run, cfg: RunConfig) -> None:
    """Check, without building the model, that a run that finished training still holds it:
    every checkpoint training wrote is there, and its training state and final checkpoint are
    whole (they match their checksums) and belong to ``cfg``.

    Raises:
        CheckpointError: a file is missing, damaged or written for another config; the message
            says how to get the run back.
    """
    steps, hint = cfg.train.steps, start_over_hint(run.name)
    refuse_missing_checkpoints(run, checkpoint_steps(cfg.train), steps, f"run {run.name!r}", hint)
    try:
        state = verify_tensors(run.state_path(), kind=STATE_KIND)
        if state.get("config_identity") != cfg.identity or state.get("step") != str(steps):
            raise CheckpointError(
                f"{run.state_path()} is not the final training state of run {run.name!r} (it "
                f"holds step {state.get('step')} of {steps}, or another config)"
            )
        verify_tensors(run.checkpoint_file(steps), kind=MODEL_KIND)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {hint}") from None


def load_trained(workspace: Workspace, name: str, step: int | None = None) -> TrainedModel:
    """Open run ``name`` at checkpoint ``step`` (default: its latest).

    Raises:
        ConfigError: ``config.json`` is unreadable, inconsistent, or was changed after training.
        CheckpointError: the checkpoint is missing, damaged, or holds another model than the config.
    """
    run = workspace.run(name)
    cfg = stored_config(run)
    task = check_task_fits_model(run, cfg)
    # pick the step first, so that a checkpoint a live trainer writes meanwhile cannot make the
    # reported step differ from the loaded weights
    saved = run.checkpoint_steps()
    path = run.checkpoint_file(step if step is not None or not saved else saved[-1])
    chosen = step if step is not None else saved[-1]
    recorded = read_metadata(path).get("run_config_hash")
    if recorded is not None and recorded != run.config_hash:
        raise ConfigError(
            f"{run.path / 'config.json'} was changed after {path.name} was written; restore the "
            "original config.json, or train a new run with the new config"
        )
    return TrainedModel(run, cfg, task, load_model(path, expected=cfg.model), chosen)


def stored_config(run: Run) -> RunConfig:
    """The run's ``config.json`` as a :class:`RunConfig`.

    Raises:
        ConfigError: the file is missing, not JSON, not an object, or has bad fields or types.
    """
    data = run.config
    try:
        return RunConfig.from_dict(data)
    except (TinylensError, TypeError, AttributeError, KeyError, ValueError) as err:
        # TypeError/AttributeError: a field of the wrong type that from_dict did not check itself
        _check_model_run(run, data)
        raise ConfigError(
            f"run {run.name!r} has an unreadable config.json ({err}); restore it, or train a new run"
        ) from None


def _check_model_run(run: Run, config: dict[str, Any]) -> None:
    """A ConfigError saying so if ``run`` is not a trained model run (a decoder, sweep or study
    run), whose config no model config can be read from."""
    kind = run.kind
    if kind == "train":  # as status.json says; a config of another kind still tells
        kind = config.get("kind")
    if not isinstance(kind, str) or kind == "train":
        return
    probed = config.get("probed_run")
    hint = f"; it decodes run {probed!r}: pass that" if isinstance(probed, str) else ""
    raise ConfigError(
        f"run {run.name!r} is a {kind} run, not a trained model run; pass the name of a model run "
        f"instead (`tinylens runs` shows each run's kind){hint}"
    )


def check_task_fits_model(run: Run, cfg: RunConfig) -> Task:
    """The run's task, after checking that it has the vocabulary and context its model was sized for.

    Raises:
        ConfigError: the task options no longer match the model (e.g. ``n_digits`` was edited).
    """
    try:
        task = make_task(cfg.task, cfg.task_options)
    except (TinylensError, TypeError, AttributeError, ValueError) as err:
        raise ConfigError(f"run {run.name!r} has unusable task options in config.json: {err}") from None
    expected = (task.d_vocab, task.seq_len)
    stated = (cfg.model.d_vocab, cfg.model.n_ctx)
    if expected != stated:
        raise ConfigError(
            f"config.json of run {run.name!r} does not fit together: its task options give "
            f"d_vocab {expected[0]} and {expected[1]} tokens a sequence, but its model was built "
            f"for d_vocab {stated[0]} and n_ctx {stated[1]}; was it edited? Restore it, or train "
            "a new run"
        )
    return task
