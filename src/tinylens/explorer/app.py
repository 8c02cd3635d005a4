"""The explorer's web app: a JSON API over a workspace, and the static pages that draw it.

Routes (every name goes through the store's run-name rule; no route takes a file path)::

    GET  /                                   the runs table
    GET  /run?name=RUN                       a run: curves, checkpoints, report, live probe
    GET  /api/runs                           [{name, kind, status, step, task, preset, shape,
                                              params, differs, acc, ...}]
    GET  /api/runs/RUN                       config, shape, params, status, checkpoints, results,
                                             figures, left_out, group (the runs it is compared with)
    GET  /api/runs/RUN/metrics               {metric: {steps, values}}
    GET  /api/runs/RUN/views                 a study's heatmaps, circuits and curves to draw
    GET  /api/runs/RUN/results/NAME          results/NAME.json
    POST /api/runs/RUN/probe                 {"text": ...} or {"seed": N}, optional "step" (an int)
    GET  /runs/RUN/report                    the run's report.html
    GET  /runs/RUN/figures/NAME.png          a figure

Errors are ``{"error": message}`` with a 4xx status (404 unknown run or file, or a file left out
because it links out of the workspace; 400 a malformed request or question, each field of the wrong
type named with what it got); anything unexpected is a 500 with a one-line message, never a
traceback.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tinylens.errors import TinylensError
from tinylens.explorer.data import NotFoundError, WorkspaceView
from tinylens.explorer.probe import BadRequestError, ModelCache, ProbeRequest, probe
from tinylens.explorer.views import study_views
from tinylens.store import finite_values

STATIC = Path(__file__).parent / "static"
_RESULT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A result's name, as the store writes them (``results/NAME.json``)."""
MAX_BODY = 64 * 1024
"""Largest probe request accepted, in bytes (a maze prompt is a few kB)."""
log = logging.getLogger("tinylens.explorer")


def create_app(workspace: Path | str) -> Starlette:
    """The explorer over the workspace folder ``workspace`` (read-only; it may not exist yet)."""
    view = WorkspaceView(workspace)
    models = ModelCache(view.workspace)

    async def runs(request: Request) -> Response:
        return _JSON(await run_in_threadpool(view.runs))

    async def run(request: Request) -> Response:
        return _JSON(await run_in_threadpool(view.details, request.path_params["run"]))

    async def metrics(request: Request) -> Response:
        return _JSON(await run_in_threadpool(view.metrics, request.path_params["run"]))

    async def views(request: Request) -> Response:
        run_ = await run_in_threadpool(view.run, request.path_params["run"])
        return _JSON(await run_in_threadpool(study_views, run_))

    async def result(request: Request) -> Response:
        name, key = request.path_params["run"], request.path_params["result"]
        return _JSON(await run_in_threadpool(_result, view, name, key))

    async def probe_run(request: Request) -> Response:
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > MAX_BODY:  # refused before it is read
            raise BadRequestError(f"the request declares {declared} bytes; at most {MAX_BODY}")
        body = await request.body()
        if len(body) > MAX_BODY:
            raise BadRequestError(f"the request has {len(body)} bytes; at most {MAX_BODY}")
        try:
            data = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            raise BadRequestError(
                'the request body must be JSON, e.g. {"text": "12345+67890="}'
            ) from None
        name = request.path_params["run"]
        answer = await run_in_threadpool(_probe, view, models, name, ProbeRequest.from_json(data))
        return _JSON(answer)

    async def report(request: Request) -> Response:
        path = await run_in_threadpool(view.report, request.path_params["run"])
        return FileResponse(path, media_type="text/html")

    async def figure(request: Request) -> Response:
        run_name, fig = request.path_params["run"], request.path_params["figure"]
        path = await run_in_threadpool(view.figure, run_name, fig)
        return FileResponse(path, media_type="image/png")

    async def page(request: Request) -> Response:
        name = "run.html" if request.url.path == "/run" else "index.html"
        return FileResponse(STATIC / name, media_type="text/html")

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/run", page),
            Route("/api/runs", runs),
            Route("/api/runs/{run}", run),
            Route("/api/runs/{run}/metrics", metrics),
            Route("/api/runs/{run}/views", views),
            Route("/api/runs/{run}/results/{result}", result),
            Route("/api/runs/{run}/probe", probe_run, methods=["POST"]),
            Route("/runs/{run}/report", report),
            Route("/runs/{run}/figures/{figure}.png", figure),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={
            NotFoundError: _error(404),
            BadRequestError: _error(400),
            TinylensError: _error(400),
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.models = models
    app.state.view = view
    return app


class _JSON(JSONResponse):
    """JSON with NaN and infinities (which results and configs may hold) sent as null: strict
    JSON, which browsers parse."""

    def render(self, content: Any) -> bytes:
        return super().render(finite_values(content))


def _result(view: WorkspaceView, name: str, key: str) -> Any:
    run = view.run(name)
    if not _RESULT_NAME.fullmatch(key):
        raise NotFoundError(f"run {name!r} has no result {key!r}")
    return run.read_result(key)


def _probe(view: WorkspaceView, models: ModelCache, name: str, request: ProbeRequest) -> dict[str, Any]:
    """Probe run ``name`` at the request's step, or else its latest checkpoint (of those inside
    the workspace: a checkpoint linked in from outside is never loaded)."""
    steps = view.run(name).checkpoint_steps()
    if not steps:
        raise NotFoundError(f"run {name!r} has no checkpoint yet")
    step = steps[-1] if request.step is None else request.step
    if step not in steps:
        raise BadRequestError(f"run {name!r} has no checkpoint at step {step}; it has {steps}")
    return probe(models.get(name, step), request)


def _error(status: int):
    async def handler(request: Request, exc: Exception) -> Response:
        return _JSON({"error": str(exc)}, status_code=status)

    return handler


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404/405 (no such route, wrong method), as JSON like ours."""
    message = exc.detail if exc.status_code != 404 else f"no page {request.url.path!r}"
    return _JSON({"error": message}, status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %r", request.method, request.url.path, exc)
    return _JSON({"error": f"internal error: {type(exc).__name__}"}, status_code=500)
