"""The workspace on disk: run folders, safetensors checkpoints, JSON results and a SQLite index.

This is the only module that knows the disk layout::

    WORKSPACE/                      default ./runs
        tinylens.db                 SQLite (WAL): the run index and every logged metric
        RUN/
            config.json             the run's full config (its identity is a hash of it)
            checkpoints/step-N.safetensors   model weights at step N (log-spaced, plus the last)
            checkpoints/latest.safetensors   full training state (weights, optimizer, RNG) to resume
            results/NAME.json
            figures/NAME.png
            report.html

Every file is written to a temporary name in the same folder and renamed into place, so a crash never
leaves a half-written file under a real name. Nothing is ever pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open as _safe_open
from safetensors.torch import save_file

from tinylens.errors import CheckpointError, ConfigError, RunNotFoundError, TinylensError

DEFAULT_WORKSPACE = Path("runs")
DB_NAME = "tinylens.db"
FORMAT_VERSION = "1"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    config_json TEXT NOT NULL,
    status TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run TEXT NOT NULL,
    name TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run, name, step)
) WITHOUT ROWID;
"""


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys): the config's identity."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- atomic files ---------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.replace(path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (NaN and ±inf become null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None, so browsers and other tools can read it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TinylensError(f"{path} does not exist") from None
    except json.JSONDecodeError as err:
        raise TinylensError(f"{path} is not valid JSON ({err}); fix or delete it") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically. ``metadata`` values must be strings."""
    contiguous = {k: v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={"format_version": FORMAT_VERSION, **metadata})


def load_tensors(path: Path, *, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file written by :func:`save_tensors` and check its ``kind``.

    Args:
        path: the file.
        kind: the ``kind`` its metadata must carry (e.g. ``"tinylens.model"``).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or of another kind.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with _safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({err}); delete it and retrain, "
            "or resume from an earlier checkpoint"
        ) from None
    if metadata.get("kind") != kind:
        raise CheckpointError(
            f"{path} holds {metadata.get('kind')!r}, not a {kind!r} file; pass a tinylens "
            "checkpoint (checkpoints/step-N.safetensors) or a run name"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {metadata.get('format_version')!r}; this tinylens reads "
            f"version {FORMAT_VERSION}"
        )
    return tensors, metadata


# -- workspace ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One row of the run index."""

    name: str
    kind: str
    """What made the run: ``"train"`` or ``"study"``."""
    status: str
    """``"running"``, ``"interrupted"``, ``"done"`` or ``"failed"``."""
    step: int
    """Last step reached (training runs)."""
    config_hash: str
    created: float
    """Unix time."""
    updated: float


@dataclass(frozen=True)
class MetricSeries:
    """One metric over training: ``steps[i]`` → ``values[i]``, ascending steps."""

    steps: np.ndarray
    values: np.ndarray


class Workspace:
    """A folder of runs plus their SQLite index. Cheap to open; safe to open from several processes."""

    def __init__(self, root: Path | str = DEFAULT_WORKSPACE) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"workspace {self.root} exists and is not a folder")
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """The index, opened (and created, in WAL mode) on first use."""
        if self._db is None:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.root / DB_NAME, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- runs --

    def run_names(self) -> list[str]:
        if not (self.root / DB_NAME).exists():
            return []
        return [r[0] for r in self.db.execute("SELECT name FROM runs ORDER BY created")]

    def runs(self) -> list[RunInfo]:
        if not (self.root / DB_NAME).exists():
            return []
        rows = self.db.execute(
            "SELECT name, kind, status, step, config_hash, created, updated FROM runs ORDER BY created"
        )
        return [RunInfo(*row) for row in rows]

    def has_run(self, name: str) -> bool:
        return bool(_RUN_NAME.match(name)) and (self.root / name / "config.json").is_file()

    def create_run(self, name: str, config: dict[str, Any], *, kind: str) -> Run:
        """Make the folder and index row of a new run; its ``config.json`` is written atomically."""
        if not _RUN_NAME.match(name):
            raise ConfigError(
                f"run name {name!r} is not allowed; use letters, digits, '.', '_' and '-' "
                "(at most 128 characters, not starting with '.' or '-')"
            )
        if self.has_run(name):
            raise ConfigError(f"run {name!r} already exists in {self.root}; pick another --name")
        now = time.time()
        with self.db:  # index first: a run folder never exists without its row
            self.db.execute("DELETE FROM metrics WHERE run = ?", (name,))  # a stale run's leftovers
            self.db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, 'running', 0, ?, ?)",
                (name, kind, config_hash(config), json.dumps(config, sort_keys=True), now, now),
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self._ensure_root()))
        try:
            write_json(staging / "config.json", config)
            staging.replace(self.root / name)  # the run appears whole or not at all
        except BaseException:
            with self.db:
                self.db.execute("DELETE FROM runs WHERE name = ?", (name,))
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Run(self, name)

    def run(self, name: str) -> Run:
        """The run called ``name``; :class:`RunNotFoundError` lists the known ones otherwise."""
        if not _RUN_NAME.match(name):
            raise RunNotFoundError(f"{name!r} is not a run name (letters, digits, '.', '_', '-')")
        if not self.has_run(name):
            known = self.run_names()
            listed = ", ".join(known[-20:]) if known else "none yet; train one with `tinylens train`"
            raise RunNotFoundError(f"no run named {name!r} in workspace {self.root}; runs: {listed}")
        return Run(self, name)

    def set_status(self, name: str, status: str, step: int | None = None) -> None:
        with self.db:
            self.db.execute(
                "UPDATE runs SET status = ?, step = COALESCE(?, step), updated = ? WHERE name = ?",
                (status, step, time.time(), name),
            )

    def info(self, name: str) -> RunInfo:
        row = self.db.execute(
            "SELECT name, kind, status, step, config_hash, created, updated FROM runs WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise RunNotFoundError(f"run {name!r} is not in the index of {self.root}")
        return RunInfo(*row)

    # -- metrics --

    def log_metrics(self, run: str, rows: Iterable[tuple[int, str, float]]) -> None:
        """Store ``(step, name, value)`` rows; a repeated (step, name) overwrites."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO metrics (run, step, name, value) VALUES (?, ?, ?, ?)",
                ((run, int(s), n, float(v)) for s, n, v in rows),
            )

    def delete_metrics_after(self, run: str, step: int) -> None:
        """Drop metrics logged after ``step`` (a resumed run recomputes them)."""
        with self.db:
            self.db.execute("DELETE FROM metrics WHERE run = ? AND step > ?", (run, step))

    def metrics(self, run: str, prefix: str = "") -> dict[str, MetricSeries]:
        """Every metric of ``run`` whose name starts with ``prefix``, as arrays sorted by step."""
        rows = self.db.execute(
            "SELECT name, step, value FROM metrics WHERE run = ? AND name >= ? AND name < ? "
            "ORDER BY name, step",
            (run, prefix, prefix + "\U0010ffff"),
        ).fetchall()
        out: dict[str, MetricSeries] = {}
        for name, group in itertools.groupby(rows, key=lambda r: r[0]):
            sel = list(group)
            out[name] = MetricSeries(
                steps=np.array([r[1] for r in sel], dtype=np.int64),
                values=np.array([r[2] for r in sel], dtype=np.float64),
            )
        return out

    def _ensure_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root


class Run:
    """A handle on one run folder. All paths inside it are private to this class."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name
        self.path = workspace.root / name

    @property
    def config(self) -> dict[str, Any]:
        return read_json(self.path / "config.json")

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
        save_tensors(self.path / "checkpoints" / "latest.safetensors", tensors, meta)

    def state_file(self) -> Path | None:
        path = self.path / "checkpoints" / "latest.safetensors"
        return path if path.is_file() else None

    # -- results and figures --

    def write_result(self, name: str, obj: Any) -> Path:
        path = self.path / "results" / f"{name}.json"
        write_json(path, obj)
        return path

    def read_result(self, name: str) -> Any:
        return read_json(self.path / "results" / f"{name}.json")

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

    def _step_path(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step-{step}.safetensors"
