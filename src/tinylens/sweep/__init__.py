"""Sweeps: many training runs of one spec, with their measurements, locally or on a Ray cluster.

Usage::

    spec = read_spec("addition-depth.toml")
    result = run_sweep(Workspace("runs"), spec, backend="ray")   # or "local"
    write_report(result.run, spec, result.trials)

Each trial is an ordinary run (its name and folder are the ones ``tinylens train`` would give the
same config), so a sweep is resumable and shares runs with everything else in the workspace. See
:mod:`~tinylens.sweep.spec` for the spec file, :mod:`~tinylens.sweep.driver` for what is recorded,
and :mod:`~tinylens.sweep.backends` for how trials run.
"""

from __future__ import annotations

from tinylens.sweep.backends import BACKENDS
from tinylens.sweep.driver import SweepResult, TrialResult, read_trials, run_sweep
from tinylens.sweep.report import write_report
from tinylens.sweep.spec import SweepSpec, Trial, expand, parse_spec, read_spec
from tinylens.sweep.trial import TrialJob, TrialOutcome, run_trial

__all__ = [
    "run_sweep",
    "read_spec",
    "parse_spec",
    "expand",
    "write_report",
    "read_trials",
    "SweepSpec",
    "Trial",
    "SweepResult",
    "TrialResult",
    "TrialJob",
    "TrialOutcome",
    "run_trial",
    "BACKENDS",
]
