"""The run index ``tinylens.db`` (SQLite, WAL): its schema, and :class:`_WorkspaceIndex`, the part of
:class:`~tinylens.store.Workspace` that opens it (creating it, opening it read-only, or rebuilding
it from the run folders when it is missing, empty or corrupt) and queries it."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tinylens.errors import CheckpointError, ConfigError, TinylensError
from tinylens.store.checkpoints import read_metadata
from tinylens.store.files import _read_json_or_none, config_hash
from tinylens.store.layout import _STEP_FILE, DB_NAME, METRICS_FILE, STATUS_FILE, _valid_name
from tinylens.store.locks import _exclusive, _is_writable
from tinylens.store.metrics import MetricRow, read_metrics_file

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


@dataclass(frozen=True)
class RunInfo:
    """One row of the run index."""

    name: str
    kind: str
    """What made the run: ``"train"``, ``"study"`` or ``"sweep"``."""
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
class RunState:
    """A run's ``status.json``, read from its folder alone (no index): what its last writer said."""

    status: str
    """As :attr:`RunInfo.status`: a ``"running"`` run whose process died on this host reads
    ``"interrupted"``; ``"unknown"`` when the file is missing or damaged."""
    step: int
    pid: int | None
    """The last writer's process id."""
    host: str | None
    """The last writer's host name."""


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


class _WorkspaceIndex:
    """The index half of :class:`~tinylens.store.Workspace`, its base class: opening, rebuilding and
    querying ``tinylens.db``."""

    root: Path
    read_only: bool
    indexed: bool
    _db: sqlite3.Connection | None

    @property
    def db(self) -> sqlite3.Connection:
        """The index, opened (created in WAL mode, or rebuilt, as needed) on first use.

        Raises:
            TinylensError: this is a files-only handle (``Workspace(root, index=False)``).
        """
        if not self.indexed:
            raise TinylensError(
                f"this handle on workspace {self.root} writes run files only (index=False); "
                "open Workspace(root) to list runs or read indexed metrics"
            )
        if self._db is None:
            path = self.root / DB_NAME
            writable = not self.read_only and (
                not self.root.exists()
                or (_is_writable(self.root) and (not path.exists() or _is_writable(path)))
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
        # With no -wal data, immutable=1 reads the file as it is and creates nothing. Data still in
        # a -wal file needs mode=ro, which uses the -shm file a writer keeps beside it but would
        # create one that is missing (a copied workspace): then the in-memory rebuild below.
        wal, shm = self.root / f"{DB_NAME}-wal", self.root / f"{DB_NAME}-shm"
        pending = wal.exists() and wal.stat().st_size > 0
        options = (["mode=ro"] if shm.exists() else []) if pending else ["immutable=1"]
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
        status = _well_typed(status)  # a damaged field falls back to the old row or a guess
        kind = status.get("kind") or kind or _guess_kind(name)
        state = status.get("status") or state or _guess_status(folder)
        step = status.get("step", step if step is not None else _guess_step(folder))
        created = status.get("created") or created or (folder / "config.json").stat().st_mtime
        updated = status.get("updated") or updated or created
        config_json = json.dumps(config, sort_keys=True)
        digest = config_hash(config) if isinstance(config, dict) else ""
        return (name, kind, digest, config_json, state, int(step), created, updated)

    def _index_missing(self) -> None:
        """Add index rows for run folders that have none (read-only: rebuilt in memory anyway)."""
        if self.read_only:
            return

        def add_missing(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                indexed = {name for (name,) in db.execute("SELECT name FROM runs")}
                for name in self._run_folders():
                    if name not in indexed:
                        db.execute(_INSERT_RUN, self._row(db, name))
                        rows = read_metrics_file(self.root / name / METRICS_FILE)
                        _insert_metrics(db, name, rows)

        with _exclusive(self.root):
            self._query(add_missing)

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
        if not self.indexed:  # a files-only handle: the folder is what must be writable
            if not _is_writable(self._ensure_root()):
                self.read_only = True
        else:
            _ = self.db
        if self.read_only:
            raise TinylensError(
                f"workspace {self.root} is read-only here; it can be listed and read, not "
                "changed (copy it somewhere writable, or fix its permissions)"
            )


def _insert_metrics(db: sqlite3.Connection, run: str, rows: Iterable[MetricRow]) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO metrics (run, step, name, value) VALUES (?, ?, ?, ?)",
        ((run, s, n, v) for s, n, v in rows if not math.isnan(v)),
    )


_STATUS_TYPES: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "status": str,
    "step": int,
    "created": (int, float),
    "updated": (int, float),
}


def _well_typed(status: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``status.json`` record that have the right type and a sane value; the
    rest are dropped, so one damaged file cannot break listing the whole workspace."""
    kept = {}
    for key, kinds in _STATUS_TYPES.items():
        value = status.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            continue
        if isinstance(value, int | float) and not (math.isfinite(value) and 0 <= value < 2**62):
            continue
        kept[key] = value
    return kept


def _status_record(folder: Path) -> dict[str, Any]:
    record = _read_json_or_none(folder / STATUS_FILE)
    return record if isinstance(record, dict) else {}


def _guess_kind(name: str) -> str:
    for kind in ("study", "sweep"):
        if name.startswith(f"{kind}-"):
            return kind
    return "train"


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
