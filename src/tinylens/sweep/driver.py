"""The sweep's driver: expand the spec, create the runs, run what is missing, index and record.

The driver is the only writer of ``tinylens.db`` during a sweep: it creates each trial's run, the
workers write only their run folders, and the driver indexes each run as its trial returns. The
sweep's own record is a run of kind ``sweep`` (``sweep-NAME-HASH8``) holding the spec and
``results/trials.json``, one row per trial read back from the trial's files, so a rerun, another
backend or another machine gives the same rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tinylens.errors import ConfigError, Interrupted, TinylensError
from tinylens.store import Run, Workspace
from tinylens.sweep.backends import BACKENDS, require_ray, run_local, run_ray
from tinylens.sweep.spec import SweepSpec, Trial, expand, steps_to_name
from tinylens.sweep.trial import (
    FAILURE_RESULT,
    TrialJob,
    TrialOutcome,
    diverged,
    is_complete,
    is_reusable,
)

TRIALS_RESULT = "trials"
"""The sweep run's ``results/trials.json``: one row per trial."""
SPEC_RESULT = "spec"
"""The sweep run's ``results/spec.json``: the whole spec as last run (execution and report
settings included, which the run's config leaves out)."""
TIME_METRICS = ("train_seconds",)
_console = Console(stderr=True)
"""Metrics that measure wall-clock time: they differ between runs of the same trial."""


@dataclass(frozen=True)
class TrialResult:
    """One trial's row in ``trials.json``: read from its run's files, whoever trained it."""

    trial: int
    run: str
    axes: dict[str, Any]
    status: str
    """``"done"``, ``"failed"``, ``"interrupted"`` or ``"pending"`` (never started)."""
    error: str | None
    metrics: dict[str, float]
    """``steps``, ``eval/acc`` and ``eval/loss`` (held-out, at the last step), ``fresh/…`` (the
    spec's fresh questions), ``steps_to_L`` (first step with held-out exact match ≥ L; NaN if
    never), ``train_seconds``."""

    def to_dict(self) -> dict[str, Any]:
        metrics = {k: None if math.isnan(v) else v for k, v in self.metrics.items()}
        return {**self.__dict__, "metrics": metrics}


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` did."""

    run: Run
    """The sweep's record (its folder holds ``results/trials.json`` and, with a report,
    ``report.html``)."""
    trials: list[TrialResult]
    outcomes: dict[str, TrialOutcome] = field(default_factory=dict)
    """Run name → how its trial ended, for the trials this call ran (the rest were complete)."""

    @property
    def failed(self) -> list[TrialResult]:
        return [t for t in self.trials if t.status != "done"]


def run_sweep(
    workspace: Workspace,
    spec: SweepSpec,
    *,
    backend: str = "local",
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run every trial of ``spec`` that is not complete yet, and record all of them.

    A trial is complete when its run finished training and holds the measurements the spec asks
    for; a finished sweep run again trains and measures nothing (and never starts Ray). A complete
    trial is reused only while its ``config.json`` is the trial's and its training state and final
    checkpoint match their checksums (:func:`~tinylens.runs.check_finished`, without building the
    model); otherwise it is recorded ``failed`` with the reason, and the other trials go on, as
    they do when any trial raises.

    Args:
        workspace: where the runs and the sweep's record live (on a cluster: a folder every node
            mounts at the same path).
        spec: the parsed spec (:func:`~tinylens.sweep.spec.read_spec`).
        backend: ``"local"`` (one trial after another, here) or ``"ray"``.
        address: the Ray cluster (default: start a local one).
        num_cpus: CPUs of the local Ray (default: all).
        progress: show a progress bar of trials done, running and failed.

    Raises:
        ConfigError: the spec gives an invalid trial (nothing is written then), or an unknown backend.
        Interrupted: Ctrl-C; every trial keeps its saved state and the next run continues.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
    if backend == "ray":
        require_ray()
    trials = expand(spec)  # every trial checked before anything is written
    record = _sweep_run(workspace, spec)
    trial_runs = {t.run: _trial_run(workspace, t) for t in trials}
    todo = [t for t in trials if _needs_work(trial_runs[t.run], t, spec)]
    root = str(workspace.root.resolve())  # a worker elsewhere may start in another folder
    jobs = [
        TrialJob(
            root,
            t.run,
            t.config.to_dict(),
            spec.fresh,
            spec.cpus_per_trial,
            gpus=1 if t.config.train.device == "cuda" else 0,
        )
        for t in todo
    ]
    outcomes: dict[str, TrialOutcome] = {}
    record.set_status("running")
    try:
        if jobs:
            done = len(trials) - len(todo)
            in_process = backend == "local"
            with _Progress(len(trials), done, workspace, in_process, show=progress) as bar:

                def on_outcome(job: TrialJob, outcome: TrialOutcome) -> None:
                    outcomes[job.run] = outcome
                    bar.finished(outcome)
                    _index(workspace, job.run)

                if backend == "local":
                    run_local(jobs, on_outcome, bar.poll)
                else:
                    run_ray(
                        jobs, on_outcome, bar.poll, address=address, num_cpus=num_cpus,
                        max_retries=spec.max_retries,
                    )  # fmt: skip
        if any(o.status == "interrupted" for o in outcomes.values()):
            raise Interrupted("a trial was interrupted")
    except (KeyboardInterrupt, Interrupted):
        for job in jobs:  # what the stopped trials saved, for `tinylens runs`
            if job.run not in outcomes:
                _index(workspace, job.run)
        _write_record(record, spec, trials, outcomes)
        record.set_status("interrupted")
        left = sum(1 for t in trials if _status(workspace.run(t.run), spec, outcomes) != "done")
        raise Interrupted(
            f"sweep {spec.name} stopped with {left} of {len(trials)} trials unfinished; "
            "run it again to continue (finished trials are kept, stopped ones resume)"
        ) from None
    except BaseException:
        record.set_status("failed")
        raise
    results = _write_record(record, spec, trials, outcomes)
    record.set_status("done" if all(r.status == "done" for r in results) else "failed")
    return SweepResult(record, results, outcomes)


def _trial_run(workspace: Workspace, trial: Trial) -> Run:
    """The trial's run: made if new, else the folder as it is, even if its ``config.json`` was
    damaged or edited since: :func:`run_trial` then records the trial ``failed`` saying so, and
    the other trials go on."""
    if workspace.has_run(trial.run):
        return workspace.run(trial.run)
    return workspace.create_run(trial.run, trial.config.to_dict(), kind="train")


def _needs_work(run: Run, trial: Trial, spec: SweepSpec) -> bool:
    """Not complete with whole files (a damaged trial goes to :func:`run_trial`, which records
    it ``failed``), and not a trial that diverged: resuming one replays the same steps to the same
    NaN, so it stays ``failed`` until its config changes (a new trial)."""
    return not is_reusable(run, trial.config, spec.fresh) and not diverged(run)


def _index(workspace: Workspace, name: str) -> None:
    """Index a run the workers wrote; if the index is unusable now, the files still hold it all
    and ``tinylens reindex`` (or the next sweep) brings it in, so the sweep goes on."""
    try:
        workspace.index_run(name)
    except TinylensError as err:
        _console.print(f"warning: run {name} is not indexed yet ({err}); `tinylens reindex` adds it")


def read_trials(run: Run) -> list[TrialResult]:
    """The rows a sweep run recorded (``results/trials.json``)."""
    rows = run.read_result(TRIALS_RESULT)
    return [
        TrialResult(
            **{**row, "metrics": {k: math.nan if v is None else v for k, v in row["metrics"].items()}}
        )
        for row in rows
    ]


def trial_result(trial: Trial, run: Run, spec: SweepSpec, outcome: TrialOutcome | None) -> TrialResult:
    """A trial's row, from its run's files (``outcome``: how this call's execution ended)."""
    status = _status(run, spec, {run.name: outcome} if outcome else {})
    error = None
    if status == "failed":
        error = outcome.error if outcome is not None else _stored_error(run)
    return TrialResult(trial.index, run.name, trial.axes, status, error, _metrics(run, spec))


def _status(run: Run, spec: SweepSpec, outcomes: dict[str, TrialOutcome]) -> str:
    outcome = outcomes.get(run.name)
    if outcome is not None and outcome.status != "done":
        return outcome.status
    if is_complete(run, spec.fresh):
        return "done"
    if run.has_result(FAILURE_RESULT):
        return "failed"
    return "interrupted" if run.state_file() is not None else "pending"


def _stored_error(run: Run) -> str | None:
    try:
        error = run.read_result(FAILURE_RESULT).get("error")
    except (OSError, ValueError, AttributeError):
        return None
    return error if isinstance(error, str) else None


def _metrics(run: Run, spec: SweepSpec) -> dict[str, float]:
    """The trial's numbers, from its summary, its metrics file and its fresh-question scores."""
    metrics: dict[str, float] = {}
    if run.has_result("train_summary"):
        summary = run.read_result("train_summary")
        metrics["steps"] = float(summary["step"])
        metrics["eval/acc"] = float(summary["eval"]["exact"])
        metrics["eval/loss"] = float(summary["eval"]["loss"])
        metrics["train_seconds"] = float(summary["elapsed_s"])
    if spec.steps_to:
        curve = sorted((step, value) for step, name, value in run.metric_rows() if name == "eval/acc")
        for level in spec.steps_to:
            reached = next((step for step, value in curve if value >= level), math.nan)
            metrics[steps_to_name(level)] = float(reached)
    if spec.fresh is not None and run.has_result(spec.fresh.result_name):
        fresh = run.read_result(spec.fresh.result_name)
        metrics["fresh/acc"] = float(fresh["exact"])
        metrics["fresh/loss"] = float(fresh["loss"])
        metrics.update({f"fresh/{k}": float(v) for k, v in fresh["generation"].items()})
    return metrics


def _sweep_run(workspace: Workspace, spec: SweepSpec) -> Run:
    name = spec.run_name
    if workspace.has_run(name):
        return workspace.run(name)
    return workspace.create_run(name, spec.identity_dict(), kind="sweep")


def _write_record(
    record: Run, spec: SweepSpec, trials: Sequence[Trial], outcomes: dict[str, TrialOutcome]
) -> list[TrialResult]:
    workspace = record.workspace
    results = [trial_result(t, workspace.run(t.run), spec, outcomes.get(t.run)) for t in trials]
    record.write_result(SPEC_RESULT, {
        **spec.identity_dict(),
        "name": spec.name,
        "cpus_per_trial": spec.cpus_per_trial,
        "max_retries": spec.max_retries,
        "report": {"x": spec.report.x, "group": spec.report.group, "metrics": list(spec.report.metrics)},
    })  # fmt: skip
    record.write_result(TRIALS_RESULT, [r.to_dict() for r in results])
    return results


class _Progress:
    """A Rich bar of trials done, with counts of those running and failed."""

    def __init__(
        self, total: int, done: int, workspace: Workspace, in_process: bool, *, show: bool
    ) -> None:
        self.workspace = workspace
        self.in_process = in_process
        """Trials run in this process, one at a time (the local backend)."""
        self.failed = 0
        self.bar = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} done"),
            TextColumn("{task.fields[running]} running  {task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not show,
        )
        self.task = self.bar.add_task("trials", total=total, completed=done, running=0, failed=0)

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def poll(self, in_flight: Sequence[TrialJob]) -> None:
        """Count the in-flight trials that a live worker is training (their ``status.json`` says
        so; a queued trial's says the driver made it, or names a dead process)."""
        if self.in_process:
            running = len(in_flight)
        else:
            states = [self.workspace.run(job.run).state() for job in in_flight]
            running = sum(s.status == "running" and s.pid != os.getpid() for s in states)
        self.bar.update(self.task, running=running)

    def finished(self, outcome: TrialOutcome) -> None:
        self.failed += outcome.status == "failed"
        self.bar.update(self.task, advance=outcome.status == "done", failed=self.failed, running=0)
