"""What the explorer shows, read from a workspace without ever writing to it.

Every call opens the index afresh, read-only: a run still training shows its newest committed
metrics (SQLite's WAL lets a reader in beside the trainer, never blocking it), and nothing here can
rebuild, repair or create a file. Names from a request go through the store's name rule, and every
file served must resolve inside the workspace folder, so neither ``..`` nor a symlink reaches out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinylens.errors import RunNotFoundError, TinylensError
from tinylens.store import Run, Workspace


class NotFoundError(TinylensError):
    """What a request named is not in the workspace (HTTP 404)."""


class WorkspaceView:
    """Read-only views of the workspace at ``root`` for the explorer's pages."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def workspace(self) -> Workspace:
        """A fresh read-only handle: it sees every commit made before this call."""
        return Workspace(self.root, read_only=True)

    def runs(self) -> list[dict[str, Any]]:
        """One row per run of the index: name, kind, status, step, task, preset, the last held-out
        exact match (``acc``; None if never evaluated), created and updated (Unix times)."""
        workspace = self.workspace()
        rows = []
        for info in workspace.runs():
            run = workspace.run(info.name)
            try:
                self.contained(run)
            except NotFoundError:
                continue  # a run reaching out of the workspace is not shown
            config = _config(run)
            acc = workspace.metrics(info.name, "eval/acc").get("eval/acc")
            rows.append(
                {
                    "name": info.name,
                    "kind": info.kind,
                    "status": info.status,
                    "step": info.step,
                    "task": config.get("task") if isinstance(config.get("task"), str) else None,
                    "preset": config.get("preset") if isinstance(config.get("preset"), str) else None,
                    "acc": float(acc.values[-1]) if acc is not None and len(acc.values) else None,
                    "created": info.created,
                    "updated": info.updated,
                }
            )
        return rows

    def run(self, name: str) -> Run:
        """The run ``name``, if its folder lies inside the workspace.

        Raises:
            NotFoundError: no such run, a name the store does not allow, or a folder that resolves
                outside the workspace (a symlink).
        """
        try:
            run = self.workspace().run(name)
        except RunNotFoundError as err:
            raise NotFoundError(str(err)) from None
        self.contained(run)
        return run

    def contained(self, run: Run) -> None:
        """Check that the run's folder and every file the explorer may read from it (config,
        status, metrics, results, figures, checkpoints, report) resolve inside the workspace.

        Raises:
            NotFoundError: one of them is a symlink out of the workspace.
        """
        self.inside(run.path)
        paths = [run.path / n for n in ("config.json", "status.json", "metrics.jsonl", "report.html")]
        for folder in ("results", "figures", "checkpoints"):
            if (run.path / folder).is_dir():
                paths += [run.path / folder, *(run.path / folder).iterdir()]
        for path in paths:
            if path.exists() or path.is_symlink():
                self.inside(path)

    def details(self, name: str) -> dict[str, Any]:
        """A run's page: its config, state, checkpoints, results, figures and whether it has a
        report."""
        run = self.run(name)
        state = run.state()
        return {
            "name": name,
            "config": _config(run),
            "status": state.status,
            "step": state.step,
            "checkpoints": run.checkpoint_steps(),
            "results": sorted(p.stem for p in (run.path / "results").glob("*.json")),
            "figures": run.figure_names(),
            "report": run.report_path.is_file(),
        }

    def metrics(self, name: str) -> dict[str, dict[str, list[Any]]]:
        """Every metric of run ``name``: ``{metric: {"steps": [...], "values": [...]}}`` (the app's
        responses send NaN as null)."""
        self.run(name)
        series = self.workspace().metrics(name)
        return {
            metric: {"steps": s.steps.tolist(), "values": s.values.tolist()}
            for metric, s in series.items()
        }

    def report(self, name: str) -> Path:
        run = self.run(name)
        if not run.report_path.is_file():
            raise NotFoundError(
                f"run {name!r} has no report; `tinylens study` writes one for a study run"
            )
        return self.inside(run.report_path)

    def figure(self, name: str, figure: str) -> Path:
        run = self.run(name)
        if figure not in run.figure_names():
            raise NotFoundError(f"run {name!r} has no figure {figure!r}; it has {run.figure_names()}")
        return self.inside(run.path / "figures" / f"{figure}.png")

    def inside(self, path: Path) -> Path:
        """``path`` resolved, if it lies inside the workspace folder."""
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise NotFoundError(f"{path.name} cannot be resolved inside the workspace") from None
        if not resolved.is_relative_to(self.root):
            raise NotFoundError(f"{path.name} is not inside the workspace {self.root}")
        return resolved


def _config(run: Run) -> dict[str, Any]:
    try:
        return run.config
    except TinylensError:
        return {}
