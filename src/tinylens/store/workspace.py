"""The workspace: a folder of runs (:class:`Workspace`) and the handle on one run folder (:class:`Run`).

The two share a module because each names the other at run time: a workspace makes run handles, and
a run's type hint names its workspace (tinylens checks hints when called, so neither can import the
other only for type checking).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinylens.errors import CheckpointError, ConfigError, RunNotFoundError, TinylensError
from tinylens.store.checkpoints import save_tensors
from tinylens.store.files import (
    _STAGING_DIR,
    _TMP_FILE,
    _is_stale,
    _only_staged_files,
    _read_json_or_none,
    atomic_path,
    config_hash,
    finite_values,
    read_json,
    umask_mode,
    write_json,
)
from tinylens.store.index import (
    _INSERT_RUN,
    _RUN_COLUMNS,
    RunInfo,
    RunState,
    _guess_kind,
    _insert_metrics,
    _status_record,
    _well_typed,
    _WorkspaceIndex,
)
from tinylens.store.layout import (
    _STEP_FILE,
    DB_NAME,
    DEFAULT_WORKSPACE,
    METRICS_FILE,
    STATUS_FILE,
    _check_new_name,
    _valid_name,
)
from tinylens.store.locks import _exclusive, _flock, _is_writable, _owner_tag, _pid_alive
from tinylens.store.metrics import (
    MetricRow,
    MetricSeries,
    _append_metrics,
    _drop_metrics_after,
    read_metrics_file,
)


def _check_root(root: Path) -> None:
    """A workspace path whose nearest existing ancestor is not a folder is a user error."""
    for path in (root, *root.parents):
        try:
            exists = path.exists()
        except OSError:  # e.g. a parent we may not look into: let later file access say so
            return
        if exists:
            if not path.is_dir():
                what = "exists and is not a folder" if path == root else f"lies under the file {path}"
                raise ConfigError(f"workspace {root} {what}; pass another --workspace")
            return


class Workspace(_WorkspaceIndex):
    """A folder of runs plus their SQLite index. Cheap to open; safe to open from several processes.

    The index is rebuilt from the run folders when ``tinylens.db`` is missing, empty or corrupt (a
    corrupt one is kept as ``tinylens.db.corrupt-TIME``). A workspace this process may not write is
    opened read-only: listing and reading work, writing raises :class:`TinylensError`.

    ``read_only=True`` opens it read-only even where it could be written (a viewer such as the
    explorer): it reads what writers have committed, and never writes.

    ``index=False`` opens a handle that writes run files only and never opens ``tinylens.db``: what
    a sweep's workers use, so that the driver stays the index's one writer (it calls
    :meth:`index_run` when a worker is done). Listing runs and reading indexed metrics need the
    index and raise on such a handle; a run's own files read and write as usual.
    """

    def __init__(
        self, root: Path | str = DEFAULT_WORKSPACE, *, index: bool = True, read_only: bool = False
    ) -> None:
        self.root = Path(root)
        _check_root(self.root)
        self._db: sqlite3.Connection | None = None
        self.read_only = read_only
        """Set when the index was opened read-only (asked for, or the folder or database is not
        writable): nothing is written, not even a rebuilt index."""
        self.indexed = index
        """False: a files-only handle (see above)."""

    def reindex(self) -> list[str]:
        """Rebuild the run index from the run folders; return the names indexed, oldest first.

        Each folder holding a ``config.json`` becomes one row (kind, status, step and times from its
        ``status.json``, else guessed from its checkpoints); rows whose folder is gone are dropped
        with their metrics; each run's metrics are restored from its ``metrics.jsonl`` (rows the
        file lacks, e.g. of runs made before the file existed, are kept). Safe to run at any time,
        also beside a training.

        Raises:
            TinylensError: the workspace is read-only.
        """
        self._require_writable()

        def rebuild(db: sqlite3.Connection) -> list[str]:
            with db:
                db.execute("BEGIN IMMEDIATE")
                return self._fill_index(db)

        with _exclusive(self._ensure_root()):
            return self._query(rebuild)

    def index_run(self, name: str) -> None:
        """Bring run ``name``'s index row and metrics up to date with its folder, e.g. after a
        files-only handle (``index=False``, a sweep's worker) trained it. The run's
        ``metrics.jsonl``, when it has one, replaces its indexed metrics.

        Raises:
            RunNotFoundError: there is no such run folder.
            TinylensError: the workspace is read-only, or this handle is files-only.
        """
        run = self.run(name)
        self._require_writable()

        def update(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(_INSERT_RUN, self._row(db, name))
                if (run.path / METRICS_FILE).is_file():
                    db.execute("DELETE FROM metrics WHERE run = ?", (name,))
                _insert_metrics(db, name, read_metrics_file(run.path / METRICS_FILE))

        self._query(update)

    # -- runs --

    def run_names(self) -> list[str]:
        return [info.name for info in self.runs()]

    def runs(self) -> list[RunInfo]:
        """Every run in the index, oldest first (a workspace with no runs and no index: [])."""
        folders = self._run_folders()
        if not (self.root / DB_NAME).exists() and not folders:
            return []

        def select(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return db.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created").fetchall()

        rows = self._query(select)
        if set(folders) - {row[0] for row in rows} and not self.read_only:
            self._index_missing()
            rows = self._query(select)
        return [self._alive(RunInfo(*row)) for row in rows]

    def has_run(self, name: str) -> bool:
        return _valid_name(name) and (self.root / name / "config.json").is_file()

    def create_run(self, name: str, config: dict[str, Any], *, kind: str) -> Run:
        """Make the folder and index row of a new run, or return the run if it already exists
        with the same config (another process may have made it a moment ago).

        Creation is serialised across processes by a lock on the workspace folder; the folder (with
        ``config.json`` and ``status.json``) appears whole or not at all.

        Raises:
            ConfigError: the name is not allowed, is taken by a run with another config or by
                something that is not a run, or the workspace cannot be written.
        """
        _check_new_name(name)
        self._require_writable()
        root = self._ensure_root()
        _ = self.db  # open (or rebuild) the index before taking the lock that rebuilding takes
        with _exclusive(root):
            self.remove_stale_files()
            if self.has_run(name):
                return self._same_config_run(name, config)
            if os.path.lexists(root / name):
                raise ConfigError(f"{root / name} already exists and is not a run; pick another --name")
            self._create(name, config, kind)
        return Run(self, name)

    def _same_config_run(self, name: str, config: dict[str, Any]) -> Run:
        run = Run(self, name)
        existing = _read_json_or_none(run.path / "config.json")
        if config_hash(existing) != config_hash(finite_values(config)):
            raise ConfigError(
                f"run {name!r} already exists in {self.root} with a different config; "
                "pick another --name"
            )
        return run

    def _create(self, name: str, config: dict[str, Any], kind: str) -> None:
        now = time.time()
        status = _new_status(kind, "running", 0, created=now)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.{_owner_tag()}.", dir=self.root))
        staging.chmod(umask_mode(0o777))  # mkdtemp makes 0700: the run folder must be readable
        try:
            write_json(staging / "config.json", config)
            write_json(staging / STATUS_FILE, status)
            row = (name, kind, config_hash(finite_values(config)), json.dumps(config, sort_keys=True))

            def insert(db: sqlite3.Connection) -> None:
                with db:  # the row commits only if the folder made it into place
                    db.execute("DELETE FROM metrics WHERE run = ?", (name,))  # a stale run's
                    db.execute(
                        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, 'running', 0, ?, ?)",
                        (*row, now, now),
                    )
                    staging.replace(self.root / name)  # the run appears whole or not at all

            self._query(insert)  # a corrupt index is moved aside and rebuilt, then this retried
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def run(self, name: str) -> Run:
        """The run called ``name``; :class:`RunNotFoundError` lists the known ones otherwise."""
        if not _valid_name(name):
            raise RunNotFoundError(f"{name!r} is not a run name (letters, digits, '.', '_', '-')")
        if not self.has_run(name):
            known = self._run_folders()
            listed = ", ".join(known[-20:]) if known else "none yet; train one with `tinylens train`"
            raise RunNotFoundError(f"no run named {name!r} in workspace {self.root}; runs: {listed}")
        return Run(self, name)

    def set_status(self, name: str, status: str, step: int | None = None) -> None:
        """Record ``status`` (and ``step``) in the run's ``status.json`` and in the index.

        The writer's pid and host are recorded with it, so a ``running`` run whose process died
        reads as ``interrupted``.
        """
        self._require_writable()
        folder = self.root / name
        record = _status_record(folder) or {}
        if not record and self.indexed:  # a run made before status files: start from its index row
            row = self._query(
                lambda db: db.execute(
                    "SELECT kind, step, created FROM runs WHERE name = ?", (name,)
                ).fetchone()
            )
            if row is not None:
                record = {"kind": row[0], "step": row[1], "created": row[2]}
        new_step = record.get("step", 0) if step is None else int(step)
        record = _new_status(
            record.get("kind", "train"), status, new_step, created=record.get("created", time.time())
        )
        if folder.is_dir():
            write_json(folder / STATUS_FILE, record)
        if not self.indexed:
            return

        def update(db: sqlite3.Connection) -> None:
            with db:
                changed = db.execute(
                    "UPDATE runs SET status = ?, step = ?, updated = ? WHERE name = ?",
                    (status, new_step, record["updated"], name),
                ).rowcount
                if not changed and self.has_run(name):  # the index lost the row: put it back
                    db.execute(_INSERT_RUN, self._row(db, name))

        self._query(update)

    def info(self, name: str) -> RunInfo:
        row = self._query(
            lambda db: db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE name = ?", (name,)).fetchone()
        )
        if row is None and self.has_run(name):  # the folder is there, its row was lost
            self._index_missing()
            row = self._query(
                lambda db: db.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE name = ?", (name,)
                ).fetchone()
            )
        if row is None:
            raise RunNotFoundError(f"run {name!r} is not in the index of {self.root}")
        return self._alive(RunInfo(*row))

    def _alive(self, info: RunInfo) -> RunInfo:
        """``info``, with a ``running`` run whose recorded process is gone shown ``interrupted``."""
        if info.status != "running":
            return info
        dead = Run(self, info.name).state().status == "interrupted"
        return replace(info, status="interrupted") if dead else info

    # -- metrics --

    def log_metrics(self, run: str, rows: Iterable[tuple[int, str, float]]) -> None:
        """Store ``(step, name, value)`` rows; a repeated (step, name) overwrites.

        Rows go first to the run's own ``metrics.jsonl`` (the record a lost index is rebuilt
        from), then to the index. NaN values are kept in the file only (SQLite stores NaN as NULL).
        """
        clean = [(int(s), str(n), float(v)) for s, n, v in rows]
        if not clean:
            return
        self._require_writable()
        folder = self.root / run
        if not folder.is_dir():
            raise RunNotFoundError(f"no run folder {folder} to log metrics into")
        _append_metrics(folder / METRICS_FILE, clean)
        if not self.indexed:
            return

        def insert(db: sqlite3.Connection) -> None:
            with db:
                _insert_metrics(db, run, clean)

        self._query(insert)

    def delete_metrics_after(self, run: str, step: int) -> None:
        """Drop metrics logged after ``step`` (a resumed run recomputes them)."""
        self._require_writable()
        _drop_metrics_after(self.root / run / METRICS_FILE, step)
        if not self.indexed:
            return

        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM metrics WHERE run = ? AND step > ?", (run, step))

        self._query(delete)

    def metrics(self, run: str, prefix: str = "") -> dict[str, MetricSeries]:
        """Every metric of ``run`` whose name starts with ``prefix``, as arrays sorted by step."""
        rows = self._query(
            lambda db: db.execute(
                "SELECT name, step, value FROM metrics WHERE run = ? AND name >= ? AND name < ? "
                "ORDER BY name, step",
                (run, prefix, prefix + "\U0010ffff"),
            ).fetchall()
        )
        out: dict[str, MetricSeries] = {}
        for name, group in itertools.groupby(rows, key=lambda r: r[0]):
            sel = list(group)
            out[name] = MetricSeries(
                steps=np.array([r[1] for r in sel], dtype=np.int64),
                values=np.array([r[2] for r in sel], dtype=np.float64),
            )
        return out

    # -- housekeeping --

    def remove_stale_files(self) -> list[Path]:
        """Remove staging folders (``.RUN.xxxx``) that a process killed while creating a run left.

        Returns what was removed. See :func:`_is_stale` for the rule that spares live writers.
        """
        if not self.root.is_dir() or not _is_writable(self.root):
            return []
        removed = []
        for path in self.root.iterdir():
            match = _STAGING_DIR.fullmatch(path.name)
            debris = match and path.is_dir() and not path.is_symlink()
            if debris and _only_staged_files(path) and _is_stale(path, match):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed


def _new_status(kind: str, status: str, step: int, *, created: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "status": status,
        "step": step,
        "created": created,
        "updated": time.time(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


class Run:
    """A handle on one run folder. All paths inside it are private to this class."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name
        self.path = workspace.root / name

    @property
    def config(self) -> dict[str, Any]:
        """The run's ``config.json`` as a dict.

        Raises:
            ConfigError: the file is unreadable or does not hold a JSON object.
        """
        path = self.path / "config.json"
        try:
            config = read_json(path)
        except TinylensError as err:
            raise ConfigError(str(err)) from None
        if not isinstance(config, dict):
            raise ConfigError(
                f"{path} holds {type(config).__name__} {json.dumps(config)[:40]}, not the run's "
                "config (a JSON object); restore it, or train a new run"
            )
        return config

    @property
    def config_hash(self) -> str:
        """:func:`config_hash` of ``config.json`` as stored (checkpoints record it)."""
        return config_hash(self.config)

    @property
    def kind(self) -> str:
        """What made the run (``train``, ``decoder``, ``sweep``, ``study``), as its ``status.json``
        records it; guessed from the name as the index does when that file is missing or damaged."""
        kind = _well_typed(_status_record(self.path)).get("kind")
        return kind if isinstance(kind, str) and kind else _guess_kind(self.name)

    # -- checkpoints --

    def checkpoint_steps(self) -> list[int]:
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        steps = (_STEP_FILE.match(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in steps if m)

    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, str]):
        save_tensors(self._step_path(step), tensors, meta)

    def checkpoint_file(self, step: int | None = None) -> Path:
        """Path of the checkpoint at ``step`` (default: the latest), for read-only loading."""
        steps = self.checkpoint_steps()
        if not steps:
            raise CheckpointError(
                f"run {self.name!r} has no checkpoints yet; train it with `tinylens train` first"
            )
        if step is None:
            step = steps[-1]
        if step not in steps:
            raise CheckpointError(
                f"run {self.name!r} has no checkpoint at step {step}; it has steps {steps}"
            )
        return self._step_path(step)

    def save_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        """The full training state, overwritten at each save, to resume from."""
        save_tensors(self._state_path(), tensors, meta)

    def state_file(self) -> Path | None:
        path = self._state_path()
        return path if path.is_file() else None

    def state_path(self) -> Path:
        """Where the training state lives, whether it exists or not (for messages)."""
        return self._state_path()

    def discard_training(self) -> None:
        """Delete everything training wrote (checkpoints, metrics, results, figures, report), keep
        ``config.json``, and record the run as ``running`` at step 0: a start from scratch.

        The caller holds the run's lock (:meth:`lock`). The training state goes first and the
        status last, so a process killed part-way leaves a run that resuming refuses (it lacks its
        state but shows progress) and that this call finishes clearing when run again.
        """
        self.workspace._require_writable()
        self._state_path().unlink(missing_ok=True)
        self.remove_result("train_summary")  # no longer "trained" for a sweep, from here on
        for folder in ("checkpoints", "results", "figures"):
            shutil.rmtree(self.path / folder, ignore_errors=True)
        self.report_path.unlink(missing_ok=True)
        self.workspace.delete_metrics_after(self.name, -1)  # steps start at 0: every row
        self.set_status("running", 0)

    # -- results and figures --

    def write_result(self, name: str, obj: Any) -> Path:
        path = self.path / "results" / f"{name}.json"
        write_json(path, obj)
        return path

    def read_result(self, name: str) -> Any:
        return read_json(self.path / "results" / f"{name}.json")

    def has_result(self, name: str) -> bool:
        return (self.path / "results" / f"{name}.json").is_file()

    def remove_result(self, name: str) -> None:
        """Delete ``results/NAME.json`` if it exists (e.g. a failure record once a rerun succeeds)."""
        (self.path / "results" / f"{name}.json").unlink(missing_ok=True)

    def figure_names(self) -> list[str]:
        """Names of the saved figures (``figures/NAME.png``), sorted."""
        return sorted(p.stem for p in (self.path / "figures").glob("*.png"))

    def write_figure_png(self, name: str, png: bytes) -> Path:
        """Save an already-rendered PNG as ``figures/NAME.png``."""
        path = self.path / "figures" / f"{name}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(png)
        return path

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def write_report(self, html: str) -> Path:
        """The run's self-contained ``report.html``."""
        path = self.report_path
        with atomic_path(path) as tmp:
            tmp.write_text(html, encoding="utf-8")
        return path

    # -- index and metrics --

    def set_status(self, status: str, step: int | None = None) -> None:
        self.workspace.set_status(self.name, status, step)

    def log_metrics(self, rows: Iterable[tuple[int, str, float]]) -> None:
        self.workspace.log_metrics(self.name, rows)

    def metrics(self, prefix: str = "") -> dict[str, MetricSeries]:
        return self.workspace.metrics(self.name, prefix)

    def metric_rows(self) -> list[MetricRow]:
        """The rows of the run's own ``metrics.jsonl`` (NaN included), in the order logged."""
        return read_metrics_file(self.path / METRICS_FILE)

    def state(self) -> RunState:
        """The run's ``status.json`` as its last writer left it (no index needed), with a
        ``running`` run whose process died on this host shown ``interrupted``."""
        record = _status_record(self.path)
        checked = _well_typed(record)
        pid, host = record.get("pid"), record.get("host")
        pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        host = host if isinstance(host, str) else None
        status = checked.get("status", "unknown")
        if status == "running" and pid is not None and host == socket.gethostname():
            status = status if _pid_alive(pid) else "interrupted"
        return RunState(status, checked.get("step", 0), pid, host)

    # -- concurrency and housekeeping --

    @contextlib.contextmanager
    def lock(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the run's writer lock (one trainer per run at a time, across processes).

        If another process holds it, call ``on_wait`` (e.g. to say so), then wait for it.
        """
        target = self.path / "config.json"  # written once, never replaced: a stable lock file
        try:
            fd = _flock(target, blocking=False)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fd = _flock(target)
        try:
            yield
        finally:
            if fd >= 0:
                os.close(fd)

    def remove_stale_files(self) -> list[Path]:
        """Remove temporary files (``.NAME.xxxx.tmp``) a killed writer left in this run's folder.

        Only files whose writer is known dead, or that nobody touched for :data:`STALE_AFTER_S`,
        are removed (see :func:`_is_stale`). Returns what was removed.
        """
        if not self.path.is_dir() or not _is_writable(self.path):
            return []
        removed = []
        for folder in (self.path, *(p for p in self.path.iterdir() if p.is_dir())):
            for path in folder.iterdir():
                match = _TMP_FILE.fullmatch(path.name)
                if match and path.is_file() and _is_stale(path, match):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def _step_path(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step-{step}.safetensors"

    def _state_path(self) -> Path:
        return self.path / "checkpoints" / "latest.safetensors"
