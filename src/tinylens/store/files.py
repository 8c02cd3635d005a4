"""Files written whole or never: atomic renames, strict JSON, config hashes, and the rule that tells
the temporary files and staging folders of a killed writer from those of a live one."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinylens.errors import TinylensError
from tinylens.store.layout import STATUS_FILE
from tinylens.store.locks import _owner_dead, _owner_tag

STALE_AFTER_S = 600.0
"""A temporary file or staging folder untouched this long is debris of a dead writer (seconds)."""

# Temporary files: ".NAME.[HOST-PID.]RANDOM.tmp"; staging folders: ".RUN.[HOST-PID.]RANDOM".
# HOST-PID names the writer (absent in files written by tinylens before it was recorded).
_OWNER = r"(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.)?[a-z0-9_]{8}"
_TMP_FILE = re.compile(rf"\.(?P<base>.+?)\.{_OWNER}\.tmp")
_STAGING_DIR = re.compile(rf"\.(?P<base>[A-Za-z0-9][A-Za-z0-9._-]*?)\.{_OWNER}")
_STAGED_FILES = {"config.json", STATUS_FILE}


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys): the config's identity."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what ``open``/``mkdir`` would have given a new file."""
    return mode & ~_umask()


@functools.cache
def _umask() -> int:
    current = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(current)
    return current


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
    tmp_path.chmod(umask_mode(0o666))  # mkstemp makes 0600: others could not read the workspace
    try:
        yield tmp_path
        tmp_path.replace(path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (NaN and ±inf become null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(finite_values(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def finite_values(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None, so browsers and other tools can read it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_values(v) for v in obj]
    return obj


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TinylensError(f"{path} does not exist") from None
    # ValueError: besides bad JSON, an integer of more digits than Python converts (4300)
    except (ValueError, UnicodeDecodeError) as err:
        raise TinylensError(f"{path} is not valid JSON ({err}); fix or delete it") from None
    except RecursionError:
        raise TinylensError(f"{path} is nested too deeply to be ours; fix or delete it") from None
    except OSError as err:
        raise TinylensError(f"cannot read {path}: {err.strerror}") from None


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


# -- debris of killed writers ---------------------------------------------------------------------


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
