"""Studies: one module per paper, each a pipeline from training to a report.

A study is the only place that knows a paper: which task and models, which analyses and controls,
which figures, which claims to check. ``tinylens study NAME`` runs one end to end.
"""

from __future__ import annotations

from collections.abc import Callable

from tinylens.errors import unknown_name
from tinylens.store import Run, Workspace
from tinylens.studies.addition import run_addition_study
from tinylens.studies.maze import run_maze_study

StudyFn = Callable[..., Run]
"""``fn(workspace, preset, *, progress) -> the study's run`` (its folder holds report.html)."""

STUDIES: dict[str, StudyFn] = {"addition": run_addition_study, "maze": run_maze_study}
"""Registry: study name → its pipeline."""


def run_study(name: str, workspace: Workspace, preset: str, *, progress: bool = True) -> Run:
    if name not in STUDIES:
        raise unknown_name("study", name, STUDIES)
    return STUDIES[name](workspace, preset, progress=progress)


__all__ = ["STUDIES", "run_study"]
