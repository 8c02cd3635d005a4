"""Names in a workspace's disk layout (see :mod:`tinylens.store`), and the rule for run names."""

from __future__ import annotations

import re
from pathlib import Path

from tinylens.errors import ConfigError

DEFAULT_WORKSPACE = Path("runs")
DB_NAME = "tinylens.db"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # always used with fullmatch
_RESERVED_PREFIX = DB_NAME  # tinylens.db, -wal, -shm, -journal, .corrupt-*: the index's own files
_STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")


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
