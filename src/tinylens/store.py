"""The workspace on disk: run folders, safetensors checkpoints, JSON results and a SQLite index.

This is the only module that knows the disk layout::

    WORKSPACE/                      default ./runs
        tinylens.db                 SQLite (WAL): the run index and every logged metric
        RUN/
            config.json             the run's full config (its identity is a hash of it)
            status.json             kind, status, step, times, and the pid/host of its last writer
            metrics.jsonl           every logged metric, one JSON object a line (append-only)
            checkpoints/step-N.safetensors   model weights at step N (log-spaced, plus the last)
            checkpoints/latest.safetensors   full training state (weights, optimizer, RNG) to resume
            results/NAME.json
            figures/NAME.png
            report.html

The run folders are the truth; ``tinylens.db`` is an index of them that :meth:`Workspace.reindex`
rebuilds (and opening a workspace whose database is missing, empty or corrupt does so by itself).
Every file is written to a temporary name in the same folder and renamed into place, so a crash never
leaves a half-written file under a real name; every checkpoint carries a sha256 of its tensors that
is checked on load. Nothing is ever pickled.
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
import socket
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open as _safe_open
from safetensors.torch import save_file

from tinylens.errors import CheckpointError, ConfigError, RunNotFoundError, TinylensError

try:  # advisory file locks; where fcntl is missing (Windows) locking is skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

DEFAULT_WORKSPACE = Path("runs")
DB_NAME = "tinylens.db"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
FORMAT_VERSION = "1"
CHECKSUM_KEY = "tensors_sha256"
"""Metadata key of a checkpoint's tensor checksum (see :func:`tensors_digest`)."""
STALE_AFTER_S = 600.0
"""A temporary file or staging folder untouched this long is debris of a dead writer (seconds)."""

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # always used with fullmatch
_RESERVED_PREFIX = DB_NAME  # tinylens.db, -wal, -shm, -journal, .corrupt-*: the index's own files
_STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")
# Temporary files: ".NAME.[HOST-PID.]RANDOM.tmp"; staging folders: ".RUN.[HOST-PID.]RANDOM".
# HOST-PID names the writer (absent in files written by tinylens before it was recorded).
_OWNER = r"(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.)?[a-z0-9_]{8}"
_TMP_FILE = re.compile(rf"\.(?P<base>.+?)\.{_OWNER}\.tmp")
_STAGING_DIR = re.compile(rf"\.(?P<base>[A-Za-z0-9][A-Za-z0-9._-]*?)\.{_OWNER}")
_STAGED_FILES = {"config.json", STATUS_FILE}

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        config_json TEXT NOT NULL,
        status TEXT NOT NULL,
        step INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        updated REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS metrics (
        run TEXT NOT NULL,
        name TEXT NOT NULL,
        step INTEGER NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (run, name, step)
    ) WITHOUT ROWID""",
)
_RUN_COLUMNS = "name, kind, status, step, config_hash, created, updated"
_INSERT_RUN = "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

T = TypeVar("T")


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys): the config's identity."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- who is writing -------------------------------------------------------------------------------


def _host_tag() -> str:
    """8 hex digits naming this machine, for the names of temporary files."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _owner_tag() -> str:
    return f"{_host_tag()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _owner_dead(host: str | None, pid: str | None) -> bool:
    """True only when the owner is known to be gone: same machine, no such process."""
    return host == _host_tag() and pid is not None and not _pid_alive(int(pid))


def _is_writable(path: Path) -> bool:
    """Whether this process may create and change files in ``path`` (a folder or a file)."""
    return os.access(path, os.W_OK)


# -- locks ----------------------------------------------------------------------------------------

_THREAD_LOCKS: dict[str, threading.RLock] = {}
_HELD: dict[str, tuple[int, int]] = {}  # resolved path → (fd, depth) of locks this process holds


def _flock(path: Path, *, blocking: bool = True) -> int:
    """Open ``path`` and take an exclusive ``flock`` on it; the fd, or -1 when locks are unsupported.

    Raises:
        BlockingIOError: ``blocking`` is False and another process holds the lock.
    """
    if fcntl is None:
        return -1
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # e.g. ENOLCK on a network file system: go on unlocked, as before
        os.close(fd)
        return -1
    return fd


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a folder or file) against other processes and threads.

    Re-entrant within a process: ``flock`` locks belong to an open file, so a second ``open`` +
    ``flock`` of the same path by the same process would deadlock on itself.
    """
    key = str(path.resolve())
    with _THREAD_LOCKS.setdefault(key, threading.RLock()):
        fd, depth = _HELD.get(key, (-1, 0))
        if depth == 0:
            fd = _flock(path)
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _HELD.pop(key)
            if depth > 1:
                _HELD[key] = (fd, depth - 1)
            elif fd >= 0:
                os.close(fd)  # releases the flock


# -- atomic files ---------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    The temporary name carries this process's host tag and pid, so that debris of a killed writer
    can be told apart from a live writer's file (see :meth:`Run.remove_stale_files`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{_owner_tag()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TinylensError(f"{path} is not valid JSON ({err}); fix or delete it") from None
    except OSError as err:
        raise TinylensError(f"cannot read {path}: {err.strerror}") from None


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- checkpoints ----------------------------------------------------------------------------------


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order (hex)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically, with a checksum of its tensors in the metadata.

    ``metadata`` values must be strings.
    """
    contiguous = {k: v.detach().contiguous() for k, v in tensors.items()}
    meta = {"format_version": FORMAT_VERSION, **metadata, CHECKSUM_KEY: tensors_digest(contiguous)}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=meta)


def load_tensors(path: Path, *, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file written by :func:`save_tensors`, check its ``kind`` and checksum.

    Args:
        path: the file.
        kind: the ``kind`` its metadata must carry (e.g. ``"tinylens.model"``).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, damaged (its tensors no longer
            match their checksum) or of another kind.
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
    # Files written before checksums existed have none; they load as before.
    if CHECKSUM_KEY in metadata and tensors_digest(tensors) != metadata[CHECKSUM_KEY]:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its tensors do not match the checksum written with "
            "them; delete it and use another checkpoint of the run, or retrain"
        )
    return tensors, metadata


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, without reading (or checking) its tensors."""
    try:
        with _safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({err})") from None


# -- metrics files --------------------------------------------------------------------------------

MetricRow = tuple[int, str, float]
"""``(step, name, value)``."""


def _encode_value(value: float) -> float | str:
    """JSON has no NaN or infinity: those are written as the strings "nan", "inf", "-inf"."""
    return value if math.isfinite(value) else repr(value)


def _metric_line(row: MetricRow) -> str:
    step, name, value = row
    obj = {"step": step, "name": name, "value": _encode_value(value)}
    return json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n"


def _parse_metric_line(line: str) -> MetricRow | None:
    """The row of one line, or None for a line that is not one (a kill -9 can cut the last)."""
    try:
        obj = json.loads(line)
        value = obj["value"]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None
        return int(obj["step"]), str(obj["name"]), float(value)
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics_file(path: Path) -> list[MetricRow]:
    """Every ``(step, name, value)`` row of a ``metrics.jsonl``, in file order; [] if none.

    Lines that do not parse (a truncated last line after a crash) are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = (_parse_metric_line(line) for line in text.splitlines())
    return [r for r in rows if r is not None]


def _append_metrics(path: Path, rows: list[MetricRow]) -> None:
    """Append rows in one write; first cut a partial last line left by a killed writer."""
    with path.open("a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                keep = f.read().rfind(b"\n") + 1
                f.truncate(keep)
        f.write("".join(_metric_line(r) for r in rows).encode())


def _drop_metrics_after(path: Path, step: int) -> None:
    """Rewrite ``path`` without rows after ``step`` (and without unreadable lines), if any."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    rows = [_parse_metric_line(line) for line in lines]
    kept = [line for line, row in zip(lines, rows, strict=True) if row is not None and row[0] <= step]
    if len(kept) == len(lines) and (not lines or lines[-1].endswith("\n")):
        return
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")


# -- workspace ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One row of the run index."""

    name: str
    kind: str
    """What made the run: ``"train"`` or ``"study"``."""
    status: str
    """``"running"``, ``"interrupted"``, ``"done"`` or ``"failed"``. A run recorded as running
    whose process has died (on this machine) is reported ``"interrupted"``."""
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


def _is_database_damage(err: sqlite3.Error) -> bool:
    """Corruption (not a lock or a permission): "file is not a database", "disk image is malformed"."""
    return isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError)


def _retry_locked(action: Callable[[], T], timeout_s: float = 30.0) -> T:
    """Run ``action``, retrying while SQLite says the database is locked or busy.

    Switching a new database to WAL needs an exclusive lock and SQLite does not wait for it
    (no busy handler), so two processes opening a fresh workspace at once need this.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            return action()
        except sqlite3.OperationalError as err:
            text = str(err).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _switch_to_wal(db: sqlite3.Connection) -> None:
    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        db.execute("PRAGMA journal_mode=WAL")


def _has_index_tables(db: sqlite3.Connection) -> bool:
    query = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('runs', 'metrics')"
    return db.execute(query).fetchone()[0] == 2


class Workspace:
    """A folder of runs plus their SQLite index. Cheap to open; safe to open from several processes.

    The index is rebuilt from the run folders when ``tinylens.db`` is missing, empty or corrupt (a
    corrupt one is kept as ``tinylens.db.corrupt-TIME``). A workspace this process may not write is
    opened read-only: listing and reading work, writing raises :class:`TinylensError`.
    """

    def __init__(self, root: Path | str = DEFAULT_WORKSPACE) -> None:
        self.root = Path(root)
        _check_root(self.root)
        self._db: sqlite3.Connection | None = None
        self.read_only = False
        """Set when the index was opened read-only (the folder or database is not writable)."""

    # -- the index --

    @property
    def db(self) -> sqlite3.Connection:
        """The index, opened (created in WAL mode, or rebuilt, as needed) on first use."""
        if self._db is None:
            path = self.root / DB_NAME
            writable = not self.root.exists() or (
                _is_writable(self.root) and (not path.exists() or _is_writable(path))
            )
            self.read_only = not writable
            try:
                self._db = self._open_writable() if writable else self._open_read_only()
            except sqlite3.Error as err:  # e.g. still locked after 30 s, or not a file
                raise TinylensError(f"cannot open the run index {path}: {err}") from None
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

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
        with _exclusive(self._ensure_root()), self.db:
            self.db.execute("BEGIN IMMEDIATE")
            return self._fill_index(self.db)

    def _open_writable(self) -> sqlite3.Connection:
        root = self._ensure_root()
        try:
            db = self._connect(root / DB_NAME)
        except sqlite3.DatabaseError as err:
            if not _is_database_damage(err):
                raise
            with _exclusive(root):  # one process moves it aside; the others then see the new one
                try:
                    db = self._connect(root / DB_NAME)
                except sqlite3.DatabaseError as again:
                    if not _is_database_damage(again):
                        raise
                    self._move_aside_damaged()
                    db = self._connect(root / DB_NAME)
        if not _has_index_tables(db):  # new, empty (zero bytes) or emptied: build it from folders
            with _exclusive(root), db:
                db.execute("BEGIN IMMEDIATE")
                if not _has_index_tables(db):  # another process may have built it meanwhile
                    for statement in _SCHEMA:
                        db.execute(statement)
                    self._fill_index(db)
        return db

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=30.0)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # raises if not a database
            _retry_locked(lambda: _switch_to_wal(db))
            db.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside_damaged(self) -> None:
        """Rename a corrupt ``tinylens.db`` (and its -wal/-shm) to ``tinylens.db.corrupt-TIME``."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            path = self.root / f"{DB_NAME}{suffix}"
            if path.exists():
                path.replace(self.root / f"{DB_NAME}.corrupt-{stamp}{suffix}")

    def _open_read_only(self) -> sqlite3.Connection:
        """The existing index opened read-only, or else an index rebuilt in memory (no writes)."""
        path = self.root / DB_NAME
        uri = "file:" + urllib.parse.quote(str(path.resolve()))
        # With no -wal data, immutable=1 reads the file as it is and creates nothing (a read-only
        # folder cannot get the -shm file mode=ro wants); data still in a -wal file needs mode=ro,
        # and failing that the in-memory rebuild below.
        wal = self.root / f"{DB_NAME}-wal"
        pending = wal.exists() and wal.stat().st_size > 0
        options = ["mode=ro"] if pending else ["immutable=1", "mode=ro"]
        if path.is_file() and path.stat().st_size:
            for option in options:
                try:
                    db = sqlite3.connect(f"{uri}?{option}", uri=True, timeout=30.0)
                except sqlite3.Error:
                    continue
                try:
                    if _has_index_tables(db):
                        return db
                except sqlite3.Error:
                    pass
                db.close()
        db = sqlite3.connect(":memory:")
        with db:
            for statement in _SCHEMA:
                db.execute(statement)
            self._fill_index(db)
        return db

    def _query(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``action`` on the index; if it turns out corrupt, rebuild it once and retry."""
        try:
            return action(self.db)
        except sqlite3.DatabaseError as err:
            if not _is_database_damage(err) or self.read_only:
                raise TinylensError(f"the index {self.root / DB_NAME} is unusable: {err}") from None
            self._recover()
            return action(self.db)

    def _recover(self) -> None:
        self.close()
        with _exclusive(self.root):
            path = self.root / DB_NAME
            try:
                probe = sqlite3.connect(path, timeout=30.0)
                try:
                    healthy = probe.execute("PRAGMA quick_check").fetchone()[0] == "ok"
                finally:
                    probe.close()
            except sqlite3.DatabaseError:
                healthy = False
            if not healthy:
                self._move_aside_damaged()
        _ = self.db

    def _fill_index(self, db: sqlite3.Connection) -> list[str]:
        """(Re)write every run's row and file metrics into ``db``, inside the caller's transaction."""
        names = self._run_folders()
        present = set(names)
        for (gone,) in db.execute("SELECT name FROM runs").fetchall():
            if gone not in present:
                db.execute("DELETE FROM runs WHERE name = ?", (gone,))
                db.execute("DELETE FROM metrics WHERE run = ?", (gone,))
        for name in names:
            db.execute(_INSERT_RUN, self._row(db, name))
            rows = read_metrics_file(self.root / name / METRICS_FILE)
            _insert_metrics(db, name, rows)
        order = db.execute("SELECT name FROM runs ORDER BY created, name").fetchall()
        return [name for (name,) in order]

    def _run_folders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if _valid_name(p.name) and (p / "config.json").is_file()
        )

    def _row(self, db: sqlite3.Connection, name: str) -> tuple[Any, ...]:
        """The index row of run folder ``name``, from its files (and its old row, if any)."""
        folder = self.root / name
        config = _read_json_or_none(folder / "config.json")
        status = _status_record(folder)
        old = db.execute(
            "SELECT kind, status, step, created, updated FROM runs WHERE name = ?", (name,)
        ).fetchone()
        kind, state, step, created, updated = old or (None, None, None, None, None)
        kind = status.get("kind") or kind or ("study" if name.startswith("study-") else "train")
        state = status.get("status") or state or _guess_status(folder)
        step = status.get("step", step if step is not None else _guess_step(folder))
        created = status.get("created") or created or (folder / "config.json").stat().st_mtime
        updated = status.get("updated") or updated or created
        config_json = json.dumps(config, sort_keys=True)
        digest = config_hash(config) if isinstance(config, dict) else ""
        return (name, kind, digest, config_json, state, int(step), created, updated)

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
        if config_hash(existing) != config_hash(_finite(config)):
            raise ConfigError(
                f"run {name!r} already exists in {self.root} with a different config; "
                "pick another --name"
            )
        return run

    def _create(self, name: str, config: dict[str, Any], kind: str) -> None:
        now = time.time()
        status = _new_status(kind, "running", 0, created=now)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.{_owner_tag()}.", dir=self.root))
        try:
            write_json(staging / "config.json", config)
            write_json(staging / STATUS_FILE, status)
            with self.db:  # the row commits only if the folder made it into place
                self.db.execute("DELETE FROM metrics WHERE run = ?", (name,))  # a stale run's
                self.db.execute(
                    "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, 'running', 0, ?, ?)",
                    (
                        name,
                        kind,
                        config_hash(_finite(config)),
                        json.dumps(config, sort_keys=True),
                        now,
                        now,
                    ),
                )
                staging.replace(self.root / name)  # the run appears whole or not at all
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
        if not record:  # a run made before status files existed: start from its index row
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

    def _index_missing(self) -> None:
        """Add index rows for run folders that have none (read-only: rebuilt in memory anyway)."""
        if self.read_only:
            return
        with _exclusive(self.root), self.db:
            self.db.execute("BEGIN IMMEDIATE")
            indexed = {name for (name,) in self.db.execute("SELECT name FROM runs")}
            for name in self._run_folders():
                if name not in indexed:
                    self.db.execute(_INSERT_RUN, self._row(self.db, name))
                    _insert_metrics(self.db, name, read_metrics_file(self.root / name / METRICS_FILE))

    def _alive(self, info: RunInfo) -> RunInfo:
        """``info``, with a ``running`` run whose recorded process is gone shown ``interrupted``."""
        if info.status != "running":
            return info
        record = _status_record(self.root / info.name)
        pid = record.get("pid")
        dead = (
            record.get("status") == "running"
            and isinstance(pid, int)
            and record.get("host") == socket.gethostname()
            and not _pid_alive(pid)
        )
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

        def insert(db: sqlite3.Connection) -> None:
            with db:
                _insert_metrics(db, run, clean)

        self._query(insert)

    def delete_metrics_after(self, run: str, step: int) -> None:
        """Drop metrics logged after ``step`` (a resumed run recomputes them)."""
        self._require_writable()
        _drop_metrics_after(self.root / run / METRICS_FILE, step)

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

    def _ensure_root(self) -> Path:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create the workspace folder {self.root}: {err.strerror}; "
                "pass another --workspace"
            ) from None
        return self.root

    def _require_writable(self) -> None:
        _ = self.db
        if self.read_only:
            raise TinylensError(
                f"workspace {self.root} is read-only here; it can be listed and read, not "
                "changed (copy it somewhere writable, or fix its permissions)"
            )


def _valid_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and _RUN_NAME.fullmatch(name) is not None
        and not name.casefold().startswith(_RESERVED_PREFIX)
    )


def _check_new_name(name: object) -> None:
    if isinstance(name, str) and name.casefold().startswith(_RESERVED_PREFIX):
        raise ConfigError(f"run name {name!r} is reserved for the workspace's index; pick another")
    if not _valid_name(name):
        raise ConfigError(
            f"run name {name!r} is not allowed; use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, not starting with '.' or '-')"
        )


def _insert_metrics(db: sqlite3.Connection, run: str, rows: Iterable[MetricRow]) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO metrics (run, step, name, value) VALUES (?, ?, ?, ?)",
        ((run, s, n, v) for s, n, v in rows if not math.isnan(v)),
    )


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


def _status_record(folder: Path) -> dict[str, Any]:
    record = _read_json_or_none(folder / STATUS_FILE)
    return record if isinstance(record, dict) else {}


def _guess_status(folder: Path) -> str:
    """For a run folder without ``status.json``: done if it wrote its summary, else interrupted."""
    return "done" if (folder / "results" / "train_summary.json").is_file() else "interrupted"


def _guess_step(folder: Path) -> int:
    state = folder / "checkpoints" / "latest.safetensors"
    with contextlib.suppress(CheckpointError, ValueError, KeyError):
        if state.is_file():
            return int(read_metadata(state)["step"])
    steps = [int(m.group(1)) for p in folder.glob("checkpoints/*") if (m := _STEP_FILE.match(p.name))]
    return max(steps, default=0)


def _is_stale(path: Path, match: re.Match[str]) -> bool:
    """Whether a temporary file or staging folder is debris of a writer that will not finish it.

    Its name records the writer's host and pid: on this host, a dead pid means debris at once. A
    writer on another host (or a name without pid, from an older tinylens) cannot be checked, so
    only an entry untouched for :data:`STALE_AFTER_S` counts: a live writer renames its temporary
    file within seconds of its last write, so ten idle minutes never hit a file still being written.
    """
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_S or _owner_dead(match.group("host"), match.group("pid"))


def _only_staged_files(folder: Path) -> bool:
    """A staging folder holds only what :meth:`Workspace.create_run` writes into it."""
    return all(p.name in _STAGED_FILES or _TMP_FILE.fullmatch(p.name) for p in folder.iterdir())


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
