"""One trial, as a worker runs it: train (or resume, or reuse) its run, then measure it.

:func:`run_trial` is what both backends execute, in this process (``local``) or in a Ray worker.
It writes inside the trial's own run folder only and never opens ``tinylens.db``: the sweep's driver
indexes the run when the trial returns, so the index has one writer (a workspace on a network
filesystem, where SQLite's locking is unreliable, stays safe).

It never raises for a failed trial: an error (a diverged run, a damaged checkpoint, a bug) comes back
as an outcome with status ``failed`` and the error's text, and is kept in the run's
``results/failure.json``, so the sweep finishes the other trials. A worker that dies (killed, out of
memory) is the backend's to retry; the retry resumes the run from its last saved state.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tinylens import runs
from tinylens.config import RunConfig
from tinylens.errors import ConfigError, TinylensError
from tinylens.evaluation import evaluate_fresh
from tinylens.store import Run, Workspace
from tinylens.sweep.spec import FreshEvalSpec
from tinylens.train import DivergenceError, Trainer

FAILURE_RESULT = "failure"
"""The run's result file (``results/failure.json``) holding a failed trial's error."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables that size the thread pools of processes a trial starts."""


@dataclass(frozen=True)
class TrialJob:
    """What a worker needs to run one trial: plain data, so Ray can ship it to another machine."""

    root: str
    """The workspace folder (on a cluster: the same path on every node)."""
    run: str
    """The trial's run, already created by the driver."""
    config: dict
    """The run's config (:meth:`RunConfig.to_dict`); checked against the run's ``config.json``."""
    fresh: FreshEvalSpec | None
    cpus: int
    """Torch threads for the trial."""
    gpus: int = 0
    """GPUs the trial needs (1 for ``train.device = "cuda"``; Ray hides GPUs from tasks that ask
    for none)."""


@dataclass(frozen=True)
class TrialOutcome:
    """How one execution of a trial ended."""

    run: str
    status: str
    """``"done"``, ``"interrupted"`` (Ctrl-C; the run resumes next time) or ``"failed"``."""
    error: str | None
    """``"ErrorType: message"`` of a failed trial."""
    pid: int
    """The process that ran it (a Ray worker's, for the ``ray`` backend)."""
    trained_steps: int
    """Optimizer steps this execution took (0: the run was already trained)."""
    elapsed_s: float
    """Wall-clock seconds of this execution, training and measuring."""


def run_trial(job: TrialJob) -> TrialOutcome:
    """Train ``job.run`` to the end (resuming its saved state), then score it on fresh questions
    if the spec asks; both are skipped when already done. Never raises for a failed trial."""
    started = time.perf_counter()
    trained = 0
    status, error = "done", None
    run: Run | None = None
    try:
        with torch_threads(job.cpus):
            workspace = Workspace(job.root, index=False)
            run = workspace.run(job.run)
            cfg = RunConfig.from_dict(job.config)
            check_same_config(run, cfg)
            if is_trained(run):
                runs.check_finished(run, cfg)
            else:
                result = Trainer(run, cfg, progress=False).fit()
                trained, status = result.trained_steps, result.status
            if status == "done" and job.fresh is not None and not run.has_result(job.fresh.result_name):
                _score_fresh(workspace, job.run, job.fresh)
            if status == "done":
                run.remove_result(FAILURE_RESULT)
    except Exception as err:  # reported as the trial's outcome, so the sweep goes on
        status, error = "failed", f"{type(err).__name__}: {err}"
        if run is not None:
            with contextlib.suppress(Exception):  # the original error is what matters
                run.write_result(FAILURE_RESULT, {"error": error})
    return TrialOutcome(job.run, status, error, os.getpid(), trained, time.perf_counter() - started)


def check_same_config(run: Run, cfg: RunConfig) -> None:
    """A ConfigError unless the run's ``config.json`` is readable and is the trial's config."""
    if runs.stored_config(run).identity != cfg.identity:
        raise ConfigError(
            f"run {run.name!r} holds another config than the sweep's trial; was its config.json "
            "edited? Restore it, or remove the run folder"
        )


def is_reusable(run: Run, cfg: RunConfig, fresh: FreshEvalSpec | None) -> bool:
    """Whether the trial needs no more work and its run still holds it: complete
    (:func:`is_complete`), with the trial's config and whole checkpoints
    (:func:`~tinylens.runs.check_finished`). A run that is not goes to :func:`run_trial`, which
    finishes it or records why it cannot."""
    if not is_complete(run, fresh):
        return False
    try:
        check_same_config(run, cfg)
        runs.check_finished(run, cfg)
    except TinylensError:
        return False
    return True


def is_trained(run: Run) -> bool:
    """Whether the run finished training (its summary is written when it does)."""
    return run.state().status == "done" and run.has_result("train_summary")


def diverged(run: Run) -> bool:
    """Whether the run's last failure was a divergence (deterministic: a rerun diverges again)."""
    if not run.has_result(FAILURE_RESULT):
        return False
    try:
        error = run.read_result(FAILURE_RESULT).get("error", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(error, str) and error.startswith(f"{DivergenceError.__name__}:")


def is_complete(run: Run, fresh: FreshEvalSpec | None) -> bool:
    """Whether the trial needs no more work: trained, and scored if the spec asks."""
    return is_trained(run) and (fresh is None or run.has_result(fresh.result_name))


def _score_fresh(workspace: Workspace, name: str, fresh: FreshEvalSpec) -> None:
    trained = runs.load_trained(workspace, name)
    scores = evaluate_fresh(trained.model.eval(), trained.task, fresh.n, fresh.seed)
    trained.run.write_result(
        fresh.result_name,
        {
            "step": trained.step,
            "seed": fresh.seed,
            **scores.result.to_dict(),
            "generation": scores.generation,
        },
    )


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads (and ``n`` in the OpenMP/MKL variables, for the
    processes it starts); restore both after.

    Why: two trials that each take every core run far slower than one after the other (OpenMP
    threads spin); and a trial's float sums depend on its thread count, so both backends must give
    a trial the same count for their results to agree bit for bit.
    """
    before_threads = torch.get_num_threads()
    before_env = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    torch.set_num_threads(n)
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        for name, value in before_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
