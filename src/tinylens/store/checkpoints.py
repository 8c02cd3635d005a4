"""Safetensors checkpoints, written atomically with a sha256 of their tensors and metadata that is
checked on load. Nothing is ever pickled."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open as _safe_open
from safetensors.torch import save_file

from tinylens.errors import CheckpointError
from tinylens.store.files import atomic_path

FORMAT_VERSION = "1"
CHECKSUM_KEY = "sha256"
"""Metadata key of a checkpoint's checksum (see :func:`checkpoint_digest`)."""
_READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)
"""What safetensors raises on a truncated or garbled file."""


def checkpoint_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 (hex) over the metadata (canonical JSON, without the checksum itself), then every
    tensor's name, dtype, shape and bytes in sorted name order.

    The metadata is covered too: a damaged ``step`` or optimizer setting in a resume state would
    otherwise resume silently from the wrong place.
    """
    return _digest(metadata, ((name, tensors[name]) for name in sorted(tensors)))


def _digest(metadata: dict[str, str], tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """:func:`checkpoint_digest` of ``(name, tensor)`` pairs given in sorted name order, taken one
    at a time (so a caller can stream them from a file)."""
    digest = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    digest.update(json.dumps(meta, sort_keys=True).encode() + b"\0")
    for name, tensor in tensors:
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically, with a checksum of its tensors and metadata.

    ``metadata`` values must be strings.
    """
    contiguous = {k: v.detach().contiguous() for k, v in tensors.items()}
    meta = {"format_version": FORMAT_VERSION, **metadata}
    meta[CHECKSUM_KEY] = checkpoint_digest(contiguous, meta)
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
    _require_file(path)
    try:
        with _safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except _READ_ERRORS as err:
        raise _corrupt(path, err) from None
    _check_header(path, metadata, kind)
    # Files written before checksums existed have none; they load as before (the model loader
    # still refuses non-finite weights).
    if CHECKSUM_KEY in metadata and checkpoint_digest(tensors, metadata) != metadata[CHECKSUM_KEY]:
        raise _damaged(path)
    return tensors, metadata


def verify_tensors(path: Path, *, kind: str) -> dict[str, str]:
    """Check a file as :func:`load_tensors` does (present, readable, of ``kind``, matching its
    checksum) while holding one tensor at a time; return its metadata.

    For a caller that only needs to know that a checkpoint is whole (e.g. a sweep reusing a
    finished trial), not its tensors.

    Raises:
        CheckpointError: as :func:`load_tensors`.
    """
    _require_file(path)
    try:
        with _safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            names = sorted(f.keys())
            digest = None  # files written before checksums existed have none
            if CHECKSUM_KEY in metadata:
                digest = _digest(metadata, ((name, f.get_tensor(name)) for name in names))
    except _READ_ERRORS as err:
        raise _corrupt(path, err) from None
    _check_header(path, metadata, kind)
    if digest is not None and digest != metadata[CHECKSUM_KEY]:
        raise _damaged(path)
    return metadata


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is truncated or corrupt ({err}); delete it and retrain, "
        "or resume from an earlier checkpoint"
    )


def _damaged(path: Path) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is damaged: its tensors or metadata do not match the checksum "
        "written with them; delete it and use another checkpoint of the run, or retrain"
    )


def _check_header(path: Path, metadata: dict[str, str], kind: str) -> None:
    """A CheckpointError unless the metadata says ``kind`` and this format version."""
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


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, without reading (or checking) its tensors."""
    try:
        with _safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except _READ_ERRORS as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({err})") from None
