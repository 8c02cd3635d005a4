"""Processes sharing a workspace: who is writing (host and pid tags), whether this process may
write, and exclusive file locks across processes and threads."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

try:  # advisory file locks; where fcntl is missing (Windows) locking is skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


# -- who is writing -------------------------------------------------------------------------------


def _host_tag() -> str:
    """8 hex digits naming this machine, for the names of temporary files."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _owner_tag() -> str:
    return f"{_host_tag()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if not 0 < pid < 2**31:  # a damaged status.json: os.kill would overflow
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
