"""What the explorer shows, read from a workspace without ever writing to it.

Every call opens the index afresh, read-only: a run still training shows its newest committed
metrics (SQLite's WAL lets a reader in beside the trainer, never blocking it), and nothing here can
rebuild, repair or create a file. Names from a request go through the store's name rule.

No file outside the workspace folder is read or served. A run whose folder, config, status or
metrics resolve outside it (a symlink) is not shown at all: the store reads those itself. Any other
entry of a run that does (a results, figures or checkpoints file or folder, the report) is *left
out*: not listed, not served and never followed, while the rest of the run stays reachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinylens.errors import RunNotFoundError, TinylensError
from tinylens.explorer.configs import (
    GroupKey,
    differing_values,
    group_key,
    model_parameters,
    model_shape,
)
from tinylens.store import METRICS_FILE, STATUS_FILE, Run, RunInfo, RunState, Workspace

CORE_FILES = ("config.json", STATUS_FILE, METRICS_FILE)
"""What the store itself reads of a run: one of these outside the workspace hides the run."""
FOLDERS = ("results", "figures", "checkpoints")
"""A run's folders whose entries the explorer lists and serves, each only if it lies inside."""
REPORT = "report.html"


class NotFoundError(TinylensError):
    """What a request named is not in the workspace (HTTP 404)."""


class RunFiles:
    """A run as the explorer sees it: its files that resolve inside the workspace ``root``, and
    no others (see the module docstring)."""

    def __init__(self, run: Run, root: Path) -> None:
        self.run = run
        self.root = root

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def path(self) -> Path:
        return self.run.path

    def config(self) -> dict[str, Any]:
        """``config.json``, or ``{}`` when it cannot be read (the page still shows the run)."""
        try:
            return self.run.config
        except TinylensError:
            return {}

    def state(self) -> RunState:
        return self.run.state()

    def checkpoint_steps(self) -> list[int]:
        """The steps whose checkpoint file lies inside the workspace."""
        if not self._listable("checkpoints"):
            return []
        folder = self.path / "checkpoints"  # the store's layout: checkpoints/step-N.safetensors
        return [s for s in self.run.checkpoint_steps() if self._inside(folder / f"step-{s}.safetensors")]

    def result_names(self) -> list[str]:
        """Names of the results (``results/NAME.json``) inside the workspace, sorted."""
        return self._names("results", ".json")

    def has_result(self, key: str) -> bool:
        return key in self.result_names()

    def read_result(self, key: str) -> Any:
        """``results/KEY.json``, parsed.

        Raises:
            NotFoundError: there is no such result, or it is left out (a link out of the workspace).
        """
        self._served(Path("results") / f"{key}.json", f"no result {key!r}")
        return self.run.read_result(key)

    def figure_names(self) -> list[str]:
        """Names of the figures (``figures/NAME.png``) inside the workspace, sorted."""
        return self._names("figures", ".png")

    def figure_file(self, figure: str) -> Path:
        """The resolved path of ``figures/FIGURE.png``.

        Raises:
            NotFoundError: there is no such figure, or it is left out.
        """
        missing = f"no figure {figure!r}; it has {self.figure_names()}"
        return self._served(Path("figures") / f"{figure}.png", missing)

    def has_report(self) -> bool:
        path = self.path / REPORT
        return path.is_file() and self._inside(path)

    def report_file(self) -> Path:
        """The resolved path of ``report.html``.

        Raises:
            NotFoundError: the run has no report, or it is left out.
        """
        return self._served(Path(REPORT), "no report; `tinylens study` writes one for a study run")

    def left_out(self) -> list[str]:
        """What is left out, relative to the run folder: the report, folders and folder entries
        that resolve outside the workspace (or cannot be resolved). A folder left out is named
        alone: what it holds lies outside and is not even listed."""
        candidates = [self.path / REPORT]
        for folder in FOLDERS:
            candidates += [self.path / folder] if not self._listable(folder) else self._entries(folder)
        return sorted(
            str(p.relative_to(self.path))
            for p in candidates
            if (p.is_symlink() or p.exists()) and not self._inside(p)
        )

    # -- helpers --

    def _served(self, relative: Path, missing: str) -> Path:
        path = self.path / relative
        if not (path.is_symlink() or path.exists()):
            raise NotFoundError(f"run {self.name!r} has {missing}")
        if not self._inside(path):
            raise NotFoundError(
                f"{relative.as_posix()} of run {self.name!r} is not inside the workspace "
                f"{self.root} (a link out of it); it is not served"
            )
        if not path.is_file():
            raise NotFoundError(f"run {self.name!r} has {missing}")
        return path.resolve()

    def _names(self, folder: str, suffix: str) -> list[str]:
        return sorted(
            p.name.removesuffix(suffix)
            for p in self._entries(folder)
            if p.name.endswith(suffix) and self._inside(p) and p.is_file()
        )

    def _entries(self, folder: str) -> list[Path]:
        """The entries of a run folder's ``folder``, unless the folder itself is left out."""
        if not self._listable(folder):
            return []
        try:
            return sorted((self.path / folder).iterdir())
        except OSError:
            return []

    def _listable(self, folder: str) -> bool:
        path = self.path / folder
        return path.is_dir() and self._inside(path)

    def _inside(self, path: Path) -> bool:
        """Whether ``path`` resolves (following every symlink) inside the workspace folder."""
        try:
            return path.resolve().is_relative_to(self.root)
        except (OSError, RuntimeError):  # a symlink loop
            return False


class WorkspaceView:
    """Read-only views of the workspace at ``root`` for the explorer's pages."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def workspace(self) -> Workspace:
        """A fresh read-only handle: it sees every commit made before this call."""
        return Workspace(self.root, read_only=True)

    def runs(self) -> list[dict[str, Any]]:
        """One row per run of the index: name, kind, status, step, task, preset, the model's
        ``shape`` and ``params`` (see :mod:`~tinylens.explorer.configs`; None where there is no
        model), ``differs`` (the config values that tell it from the other runs of its kind, task
        and preset), the last held-out exact match (``acc``; None if never evaluated), created and
        updated (Unix times)."""
        workspace = self.workspace()
        listed = self._listed(workspace)
        differs = _differences({info.name: (info.kind, config) for info, config in listed})
        rows = []
        for info, config in listed:
            acc = workspace.metrics(info.name, "eval/acc").get("eval/acc")
            _, task, preset = group_key(info.kind, config)
            rows.append(
                {
                    "name": info.name,
                    "kind": info.kind,
                    "status": info.status,
                    "step": info.step,
                    "task": task,
                    "preset": preset,
                    "shape": model_shape(config),
                    "params": model_parameters(config),
                    "differs": differs[info.name],
                    "acc": float(acc.values[-1]) if acc is not None and len(acc.values) else None,
                    "created": info.created,
                    "updated": info.updated,
                }
            )
        return rows

    def run(self, name: str) -> RunFiles:
        """The run ``name``, if its folder and core files lie inside the workspace.

        Raises:
            NotFoundError: no such run, a name the store does not allow, or a folder or core file
                that resolves outside the workspace (a symlink).
        """
        try:
            run = self.workspace().run(name)
        except RunNotFoundError as err:
            raise NotFoundError(str(err)) from None
        self.inside(run.path)
        for file in CORE_FILES:
            path = run.path / file
            if path.is_symlink() or path.exists():
                self.inside(path)
        return RunFiles(run, self.root)

    def details(self, name: str) -> dict[str, Any]:
        """A run's page: its config, model, state, checkpoints, results, figures, whether it has a
        report, what was left out, and the runs it is compared with (``group``)."""
        run = self.run(name)
        state = run.state()
        config = run.config()
        return {
            "name": name,
            "config": config,
            "shape": model_shape(config),
            "params": model_parameters(config),
            "status": state.status,
            "step": state.step,
            "checkpoints": run.checkpoint_steps(),
            "results": run.result_names(),
            "figures": run.figure_names(),
            "report": run.has_report(),
            "left_out": run.left_out(),
            "group": self._group(name),
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
        return self.run(name).report_file()

    def figure(self, name: str, figure: str) -> Path:
        return self.run(name).figure_file(figure)

    def inside(self, path: Path) -> Path:
        """``path`` resolved, if it lies inside the workspace folder.

        Raises:
            NotFoundError: it resolves outside, or cannot be resolved (a symlink loop).
        """
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise NotFoundError(f"{path.name} cannot be resolved inside the workspace") from None
        if not resolved.is_relative_to(self.root):
            raise NotFoundError(f"{path.name} is not inside the workspace {self.root}")
        return resolved

    # -- helpers --

    def _listed(self, workspace: Workspace) -> list[tuple[RunInfo, dict[str, Any]]]:
        """The indexed runs the explorer shows (those :meth:`run` accepts), with their configs."""
        listed = []
        for info in workspace.runs():
            try:
                listed.append((info, self.run(info.name).config()))
            except NotFoundError:
                continue  # a run reaching out of the workspace is not shown
        return listed

    def _group(self, name: str) -> dict[str, Any]:
        """The runs of ``name``'s kind, task and preset (itself included, oldest first) with the
        config values that differ among them; a run the index does not list yet stands alone."""
        listed = {info.name: (info.kind, config) for info, config in self._listed(self.workspace())}
        if name not in listed:
            return {
                "kind": None,
                "task": None,
                "preset": None,
                "fields": [],
                "runs": [{"name": name, "values": {}}],
            }
        key = group_key(*listed[name])
        members = {n: config for n, (kind, config) in listed.items() if group_key(kind, config) == key}
        values = differing_values(members)
        return {
            "kind": key[0],
            "task": key[1],
            "preset": key[2],
            "fields": list(values[name]),
            "runs": [{"name": n, "values": v} for n, v in values.items()],
        }


def _differences(runs: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each run's :func:`differing_values` within its group (name → (kind, config))."""
    groups: dict[GroupKey, dict[str, dict[str, Any]]] = {}
    for name, (kind, config) in runs.items():
        groups.setdefault(group_key(kind, config), {})[name] = config
    return {name: v for group in groups.values() for name, v in differing_values(group).items()}
