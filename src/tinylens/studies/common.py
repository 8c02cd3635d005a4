"""What every study pipeline shares: the run folder that holds its results and report."""

from __future__ import annotations

from typing import Any

from tinylens.store import Run, Workspace, config_hash


def study_run(workspace: Workspace, study: str, preset: str, config: dict[str, Any]) -> Run:
    """The study's run folder, named by study, preset and config hash; reused when it exists."""
    name = f"study-{study}-{preset}-{config_hash(config)[:8]}"
    if workspace.has_run(name):
        return workspace.run(name)
    return workspace.create_run(name, config, kind="study")
