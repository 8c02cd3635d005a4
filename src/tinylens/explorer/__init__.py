"""The explorer: a local web app over a workspace, read-only.

``tinylens explore [--workspace DIR] [--port 8765]`` serves, on 127.0.0.1 only unless ``--host`` is
given, a table of every run (with its model's shape and size, and the config values that tell it
from the other runs of its kind, task and preset), each run's metric curves, its report and
figures, and a live probe of its model at any checkpoint (the answer, per-position probabilities,
attention per head, the maze).
Nothing is fetched from the network: the pages are the plain modules in ``static/``.

Usage:
    app = create_app("runs")          # a Starlette app (tests drive it with its TestClient)
    serve("runs", port=8765)          # uvicorn, until Ctrl-C
"""

from __future__ import annotations

from pathlib import Path

from tinylens.explorer.app import create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def serve(workspace: Path | str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve the explorer until interrupted."""
    import uvicorn  # noqa: PLC0415 (only the server needs it)

    uvicorn.run(create_app(workspace), host=host, port=port, log_level="warning")


__all__ = ["create_app", "serve", "DEFAULT_HOST", "DEFAULT_PORT"]
