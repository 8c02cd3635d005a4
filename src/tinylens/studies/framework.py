"""The study framework: a :class:`Study` record, the registry, and the one runner every study uses.

Background:
    A study is the only place that knows a paper. It declares its presets, a ``measure`` step that
    trains (or reuses) its models and returns a typed, frozen result, the paper's ``claims`` checked
    on that result, and the report ``sections`` that show it. Everything else (the run folder,
    writing results, claims and figures, the report header with elapsed time and versions, marking
    the run ``failed`` when anything raises) is this module's, written once.

Usage:
    STUDY = Study(name="addition", title="…", summary="…", presets=("quick", "tiny"),
                  configure=study_config, measure=measure, claims=check_claims, sections=sections)
    register(STUDY)                                   # in tinylens/studies/__init__.py
    run = run_study("addition", Workspace("runs"), "quick")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from tinylens import runs
from tinylens.config import RunConfig
from tinylens.errors import ConfigError, Interrupted, TinylensError, unknown_name
from tinylens.store import Run, Workspace, config_hash
from tinylens.studies.claims import Claim
from tinylens.studies.report import Section, render_report


@runtime_checkable
class StudyConfig(Protocol):
    """What a study's configuration offers the runner: its preset and a canonical dict."""

    @property
    def preset(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class StudyResult(Protocol):
    """A study's measurements: frozen, and serialisable one JSON file per field."""

    def to_json(self) -> dict[str, Any]:
        """``{result name: JSON-able value}``; each becomes ``results/<name>.json``."""
        ...

    def meta(self) -> list[str]:
        """Lines for the report's header: which models, how many inputs."""
        ...


@dataclass(frozen=True)
class StudyInputs:
    """What a user hands a study instead of its built-in models and data (``--model``,
    ``--prompts``); None where not given. ``configure`` checks them before anything is written."""

    model: Path | None = None
    """A local Hugging Face checkpoint folder (studies with ``takes_model``)."""
    prompts: Path | None = None
    """A text file of prompts, one per line (studies with ``takes_prompts``)."""
    family: tuple[RunConfig, ...] | None = None
    """A family of models to study instead of the study's own (studies with ``takes_family``):
    the trials of a sweep (``--sweep SPEC``), trained or reused as ordinary runs."""


C = TypeVar("C", bound=StudyConfig)
R = TypeVar("R", bound=StudyResult)


@dataclass(frozen=True)
class StudyContext:
    """What ``measure`` may use besides its config: the workspace, to train or reuse runs."""

    workspace: Workspace
    progress: bool = True

    def trained(self, cfg: RunConfig, what: str) -> runs.TrainedModel:
        """The model of ``cfg`` trained to the end (reused when it was), at its last checkpoint.

        Args:
            cfg: the run's config.
            what: the model's role in the study, for messages (e.g. "1-layer model").

        Raises:
            Interrupted: training was stopped by Ctrl-C; the message says how to continue.
        """
        result = runs.train(self.workspace, cfg, progress=self.progress)
        if result.status == "interrupted":
            raise Interrupted(
                f"training of the {what} stopped at step {result.step}; continue it with "
                f"`tinylens resume {result.run}`, then run the study again"
            )
        return runs.load_trained(self.workspace, result.run)


@dataclass(frozen=True)
class Study(Generic[C, R]):
    """One paper's reproduction: presets → measure → typed result → claims and report sections."""

    name: str
    """Registry name, the argument of ``tinylens study``."""
    title: str
    """The report's title."""
    summary: str
    """One line for ``tinylens study --list``: the paper and its question."""
    presets: tuple[str, ...]
    """Preset names; the first is the default."""
    configure: Callable[[str, StudyInputs], C]
    """``(preset, inputs) → config``; raises UnknownNameError for a bad preset and a
    TinylensError for unusable inputs."""
    measure: Callable[[StudyContext, C], R]
    """Trains or reuses the models and runs every analysis."""
    claims: Callable[[R], list[Claim]]
    """The paper's claims, each judged on the result by its stated rule."""
    sections: Callable[[R], list[Section]]
    """The report's sections (text, tables, figures) after the claims table."""
    takes_model: bool = False
    """Whether ``--model DIR`` can replace the trained model by a local pretrained checkpoint."""
    takes_prompts: bool = False
    """Whether ``--prompts FILE`` can replace the task's prompts by a user's text file."""
    takes_family: bool = False
    """Whether ``--sweep SPEC`` can replace the study's model family by a sweep's trials."""


STUDIES: dict[str, Study[Any, Any]] = {}
"""Registry: study name → study. Filled by :func:`register` in ``tinylens.studies``."""


def register(study: Study[Any, Any]) -> Study[Any, Any]:
    """Add ``study`` to the registry; a second study of the same name is an error."""
    if study.name in STUDIES:
        raise ValueError(f"a study named {study.name!r} is already registered")
    STUDIES[study.name] = study
    return study


def get_study(name: str) -> Study[Any, Any]:
    if name not in STUDIES:
        raise unknown_name("study", name, STUDIES)
    return STUDIES[name]


def versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the numbers depend on."""
    found = {}
    for package in ("tinylens", "torch", "transformer-lens"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def study_run(workspace: Workspace, study: str, preset: str, config: dict[str, Any]) -> Run:
    """The study's run folder, named by study, preset and config hash; reused when it exists."""
    name = f"study-{study}-{preset}-{config_hash(config)[:8]}"
    if workspace.has_run(name):
        return workspace.run(name)
    return workspace.create_run(name, config, kind="study")


def run_study(
    name: str,
    workspace: Workspace,
    preset: str | None = None,
    *,
    progress: bool = True,
    model: Path | str | None = None,
    prompts: Path | str | None = None,
    family: tuple[RunConfig, ...] | None = None,
) -> Run:
    """Run study ``name`` end to end and return its run (its folder holds ``report.html``).

    The run is marked ``running`` while the study measures, ``done`` once results, claims, figures
    and report are written, ``interrupted`` on Ctrl-C (a training stopped by it raises
    :class:`~tinylens.errors.Interrupted`) and ``failed`` if anything else raises; results
    are written only after every measurement succeeded, so a failed study leaves the previous
    complete results in place. Running it again completes it.

    Args:
        name: a registered study.
        workspace: where its models and its run live.
        preset: one of the study's presets (default: its first).
        progress: show progress bars.
        model: a local pretrained checkpoint folder, for studies that take one.
        prompts: a text file of prompts, one per line, for studies that take one.
        family: run configs of a model family (a sweep's trials), for studies that take one.
    """
    study = get_study(name)
    _check_takes(study, "--model", model, "takes_model", "trains its own models")
    _check_takes(study, "--prompts", prompts, "takes_prompts", "draws its prompts from its task")
    _check_takes(study, "--sweep", family, "takes_family", "trains its own models")
    # configure checks every input it can (presets, a checkpoint folder) before anything is written
    chosen = study.presets[0] if preset is None else preset
    inputs = StudyInputs(
        model=None if model is None else Path(model),
        prompts=None if prompts is None else Path(prompts),
        family=family,
    )
    cfg = study.configure(chosen, inputs)
    run = study_run(workspace, name, cfg.preset, cfg.to_dict())
    run.remove_stale_files()  # what a killed earlier attempt left half-written
    run.set_status("running")
    started = time.perf_counter()
    try:
        result = study.measure(StudyContext(workspace, progress), cfg)
        claims = study.claims(result)
        sections = study.sections(result)
        elapsed = time.perf_counter() - started
        _write(run, study, cfg, result, claims, sections, elapsed)
    except (KeyboardInterrupt, Interrupted):
        _record(run, "interrupted")
        raise
    except BaseException as err:
        _record(run, "failed", {"error": type(err).__name__, "message": str(err)})
        raise
    run.set_status("done")
    return run


def _check_takes(study: Study[Any, Any], option: str, value: object, flag: str, instead: str) -> None:
    if value is None or getattr(study, flag):
        return
    takers = [n for n, s in STUDIES.items() if getattr(s, flag)]
    plural = "studies" if len(takers) > 1 else "study"
    which = f"the {' and '.join(takers)} {plural}" if takers else "no study"
    raise ConfigError(f"{option} applies to {which} only; the {study.name} study {instead}")


def _record(run: Run, status: str, failure: dict[str, str] | None = None) -> None:
    """Mark the run after an error, without letting a second error (a full disk, a locked index)
    hide the first one, which the caller re-raises."""
    try:
        run.set_status(status)
        if failure is not None:
            run.write_result("failure", failure)
    except (OSError, TinylensError):
        pass  # the original error is more useful than the bookkeeping's


def _write(
    run: Run,
    study: Study[Any, Any],
    cfg: StudyConfig,
    result: StudyResult,
    claims: list[Claim],
    sections: list[Section],
    elapsed: float,
) -> None:
    found = versions()
    meta = [
        f"preset {cfg.preset}; " + result.meta()[0],
        *result.meta()[1:],
        f"the study took {elapsed:.0f} s (training included, where it ran now); "
        + ", ".join(f"{k} {v}" for k, v in found.items()),
    ]
    # render (figures included) before the first write: a failure while drawing leaves the
    # previous complete results untouched
    html, pngs = render_report(study.title, meta, claims, sections)
    payload = {key: _json_ready(value) for key, value in result.to_json().items()}
    for key, value in payload.items():
        run.write_result(key, value)
    run.write_result("claims", [c.to_dict() for c in claims])
    run.write_result(
        "provenance",
        {"study": study.name, "preset": cfg.preset, "elapsed_s": elapsed, "versions": found},
    )
    for key, png in pngs.items():
        run.write_figure_png(key, png)
    run.write_report(html)
    run.remove_result("failure")


def _json_ready(value: Any) -> Any:
    """``value`` after a JSON round trip check: a result that cannot be written fails here, before
    any file of the run is touched."""
    json.dumps(value, allow_nan=True)
    return value
