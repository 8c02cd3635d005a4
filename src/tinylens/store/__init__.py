"""The workspace on disk: run folders, safetensors checkpoints, JSON results and a SQLite index.

This package is the only code that knows the disk layout::

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

Modules, each importing only those above it:

- :mod:`~tinylens.store.layout`: the names in the layout above, and the rule for run names.
- :mod:`~tinylens.store.locks`: who is writing (host and pid), whether we may write, file locks.
- :mod:`~tinylens.store.files`: atomic writes, JSON, config hashes, the stale-temporary-file rule.
- :mod:`~tinylens.store.checkpoints`: safetensors files with checksums.
- :mod:`~tinylens.store.metrics`: ``metrics.jsonl`` and :class:`MetricSeries`.
- :mod:`~tinylens.store.index`: ``tinylens.db``: schema, opening (WAL, read-only), rebuilding.
- :mod:`~tinylens.store.workspace`: :class:`Workspace` and :class:`Run`.

Import from ``tinylens.store`` itself; the modules are an implementation detail.
"""

from __future__ import annotations

from tinylens.store.checkpoints import (
    CHECKSUM_KEY,
    FORMAT_VERSION,
    checkpoint_digest,
    load_tensors,
    read_metadata,
    save_tensors,
    verify_tensors,
)
from tinylens.store.files import (
    STALE_AFTER_S,
    atomic_path,
    config_hash,
    finite_values,
    read_json,
    write_json,
)
from tinylens.store.index import RunInfo, RunState
from tinylens.store.layout import DB_NAME, DEFAULT_WORKSPACE, METRICS_FILE, STATUS_FILE
from tinylens.store.locks import _host_tag as _host_tag  # not public; tests name it
from tinylens.store.metrics import MetricRow, MetricSeries, read_metrics_file
from tinylens.store.workspace import Run, Workspace

__all__ = [
    # workspaces and runs
    "Workspace",
    "Run",
    "RunInfo",
    "RunState",
    "DEFAULT_WORKSPACE",
    # metrics
    "MetricSeries",
    "MetricRow",
    "read_metrics_file",
    # checkpoints
    "save_tensors",
    "load_tensors",
    "verify_tensors",
    "read_metadata",
    "checkpoint_digest",
    "FORMAT_VERSION",
    "CHECKSUM_KEY",
    # JSON and atomic files
    "atomic_path",
    "write_json",
    "read_json",
    "finite_values",
    "config_hash",
    # the layout's file names, and when a temporary file counts as debris
    "DB_NAME",
    "STATUS_FILE",
    "METRICS_FILE",
    "STALE_AFTER_S",
]
