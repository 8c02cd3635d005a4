"""Studies: one module per paper, each a pipeline from training to a report.

A study is the only place that knows a paper: which task and models, which analyses and controls,
which figures, which claims to check. ``tinylens study NAME`` runs one end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tinylens.errors import ConfigError, unknown_name
from tinylens.store import Run, Workspace
from tinylens.studies.addition import run_addition_study
from tinylens.studies.maze import run_maze_study
from tinylens.studies.seqcont import run_seqcont_study

StudyFn = Callable[..., Run]
"""``fn(workspace, preset, *, progress) -> the study's run`` (its folder holds report.html)."""

STUDIES: dict[str, StudyFn] = {
    "addition": run_addition_study,
    "maze": run_maze_study,
    "seqcont": run_seqcont_study,
}
"""Registry: study name → its pipeline."""

TAKES_A_MODEL = ("seqcont",)
"""Studies that can study a given pretrained checkpoint instead of training their own model."""


def run_study(
    name: str,
    workspace: Workspace,
    preset: str,
    *,
    progress: bool = True,
    model: Path | None = None,
) -> Run:
    if name not in STUDIES:
        raise unknown_name("study", name, STUDIES)
    if model is None:
        return STUDIES[name](workspace, preset, progress=progress)
    if name not in TAKES_A_MODEL:
        raise ConfigError(
            f"--model applies to the {', '.join(TAKES_A_MODEL)} study only; the {name} study "
            "trains its own models"
        )
    return STUDIES[name](workspace, preset, progress=progress, model=model)


__all__ = ["STUDIES", "run_study"]
