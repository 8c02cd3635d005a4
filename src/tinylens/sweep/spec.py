"""A sweep's spec file and its expansion into trials (one ordinary training run each).

A spec is TOML (or JSON)::

    [sweep]
    name = "addition-depth"      # optional; default: TASK-PRESET
    task = "addition"
    preset = "cpu"
    cpus_per_trial = 1           # torch threads of a trial in both backends; Ray's num_cpus
    max_retries = 3              # Ray: reruns of a trial whose worker died

    [base]                       # a `tinylens train --config` file's sections: task, model, train
    train = { steps = 3000 }

    [grid]                       # every combination, in file order (the last key varies fastest)
    "model.n_layers" = [1, 2]
    seed = [0, 1, 2]

    [random]                     # seeded draws, crossed with the grid
    samples = 4
    seed = 1234
    "train.lr" = { log_uniform = [3e-4, 3e-3] }    # also uniform, int_uniform, choice
    "model.d_model" = { choice = [64, 128] }

    [measure]                    # per trial, besides the held-out scores training records
    fresh = { n = 10000, seed = 0 }   # as `tinylens eval RUN --n 10000 --seed 0`
    steps_to = [0.9, 0.99]            # first step whose held-out exact match reaches each level

    [report]                     # figures of `tinylens sweep --report`
    x = "model.n_layers"
    group = "seed"
    metrics = ["eval/acc", "steps_to_0.99"]

Axis keys are ``seed``, ``steps`` or ``SECTION.FIELD`` (section ``task``, ``model`` or ``train``).
Each trial is :func:`~tinylens.config.make_run_config` of the task, preset and the base merged with
its axis values, so its run (name, identity, folder) is the one ``tinylens train`` would make for
that config under its default name: a trial trained before, by a sweep or by hand, is reused, not
retrained. (``seed`` in ``[random]`` seeds the draws; to vary the training seed, put ``seed`` in
``[grid]``.)
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinylens.config import PRESETS, RunConfig, make_run_config, read_toml_or_json, shown
from tinylens.errors import ConfigError, TinylensError, unknown_name
from tinylens.store import config_hash
from tinylens.tasks import TASKS

MAX_TRIALS = 10_000
"""Most trials one spec may expand to."""
SECTIONS = ("task", "model", "train")
"""Sections of a run config an axis may set (``SECTION.FIELD``)."""
DISTRIBUTIONS = ("log_uniform", "uniform", "int_uniform", "choice")
"""How a ``[random]`` axis is drawn."""
DEFAULT_DIGITS = 3
"""Significant digits a drawn float keeps: the same draw always names the same run."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Draw:
    """One ``[random]`` axis: a distribution and its arguments."""

    kind: str
    """One of :data:`DISTRIBUTIONS`."""
    values: tuple[Any, ...]
    """``(low, high)`` for the ranges (inclusive for ``int_uniform``), the options for ``choice``."""
    digits: int = DEFAULT_DIGITS

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        low, high = self.values
        if self.kind == "int_uniform":
            return int(rng.integers(low, high + 1))
        if self.kind == "log_uniform":
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        # rounded, so that a draw always names the same run; kept inside the range
        return min(max(float(f"{value:.{self.digits}g}"), low), high)

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: list(self.values), "digits": self.digits}


@dataclass(frozen=True)
class FreshEvalSpec:
    """Score each trial's final model on ``n`` fresh questions drawn from ``seed``."""

    n: int
    seed: int = 0

    @property
    def result_name(self) -> str:
        """The trial run's result file holding the scores (``results/NAME.json``)."""
        return f"eval-fresh-n{self.n}-s{self.seed}"


@dataclass(frozen=True)
class ReportSpec:
    """What ``--report`` draws: each metric against ``x``, one line per value of ``group``."""

    x: str | None = None
    """An axis (default: the first grid axis with more than one value, else the first random
    axis, else the trial number)."""
    group: str | None = None
    """An axis whose values each get a line (default: none; trials sharing an ``x`` are averaged)."""
    metrics: tuple[str, ...] = ()
    """Metric names (default: every metric the trials have, except times)."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed spec: what to train (task, preset, base, axes), measure and report."""

    task: str
    preset: str
    name: str
    base: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    samples: int = 0
    """Number of ``[random]`` draws (0: no random axes)."""
    random_seed: int = 0
    random: dict[str, Draw] = field(default_factory=dict)
    fresh: FreshEvalSpec | None = None
    steps_to: tuple[float, ...] = ()
    cpus_per_trial: int = 1
    max_retries: int = 3
    report: ReportSpec = field(default_factory=ReportSpec)

    @property
    def axes(self) -> list[str]:
        """Every axis, grid axes first."""
        return [*self.grid, *(k for k in sorted(self.random) if k not in self.grid)]

    def identity_dict(self) -> dict[str, Any]:
        """What decides the trials and their measurements (not how they run or are drawn)."""
        return {
            "task": self.task,
            "preset": self.preset,
            "base": self.base,
            "grid": {k: list(v) for k, v in self.grid.items()},
            "random": {
                "samples": self.samples,
                "seed": self.random_seed,
                "axes": {k: d.to_dict() for k, d in sorted(self.random.items())},
            },
            "measure": {
                "fresh": None if self.fresh is None else {"n": self.fresh.n, "seed": self.fresh.seed},
                "steps_to": list(self.steps_to),
            },
        }

    @property
    def run_name(self) -> str:
        """The sweep's own record in the workspace: ``sweep-NAME-HASH8``."""
        return f"sweep-{self.name}-{config_hash(self.identity_dict())[:8]}"


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: its axis values and the run config they give."""

    index: int
    axes: dict[str, Any]
    config: RunConfig

    @property
    def run(self) -> str:
        return self.config.default_name()


def read_spec(path: Path | str) -> SweepSpec:
    """Parse and check a spec file (TOML, or JSON by its ``.json`` suffix).

    Raises:
        ConfigError: the file is unreadable, does not parse, or has an unknown or invalid entry.
    """
    path = Path(path)
    data = read_toml_or_json(path, "sweep spec")
    try:
        return parse_spec(data)
    except TinylensError as err:
        raise type(err)(f"sweep spec {path}: {err}") from None


def parse_spec(data: Any) -> SweepSpec:
    """A :class:`SweepSpec` from the parsed file's tables (see the module docstring)."""
    _table("the spec", data, {"sweep", "base", "grid", "random", "measure", "report"})
    sweep = _table(
        "[sweep]", data.get("sweep"), {"name", "task", "preset", "cpus_per_trial", "max_retries"}
    )
    task, preset, name = _parse_names(sweep)
    base = _table("[base]", data.get("base"), set(SECTIONS))
    for section, values in base.items():
        _table(f"[base.{section}]", values, None)
    grid = {}
    for key, values in _table("[grid]", data.get("grid"), None).items():
        _check_axis(key)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"[grid] {key} must be a non-empty list of values, got {shown(values)}")
        grid[key] = tuple(values)
    samples, random_seed, random = _parse_random(data.get("random"))
    both = sorted(set(grid) & set(random))
    if both:
        raise ConfigError(f"{both[0]!r} is both a [grid] and a [random] axis; keep it in one")
    fresh, levels = _parse_measure(data.get("measure"))
    report = _table("[report]", data.get("report"), {"x", "group", "metrics"})
    metrics = report.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"[report] metrics must be a list of metric names, got {shown(metrics)}")
    spec = SweepSpec(
        task=task,
        preset=preset,
        name=name,
        base=base,
        grid=grid,
        samples=samples,
        random_seed=random_seed,
        random=random,
        fresh=fresh,
        steps_to=levels,
        cpus_per_trial=_integer("[sweep] cpus_per_trial", sweep.get("cpus_per_trial", 1), 1, 1024),
        max_retries=_integer("[sweep] max_retries", sweep.get("max_retries", 3), 0, 100),
        report=ReportSpec(report.get("x"), report.get("group"), tuple(metrics)),
    )
    for what in ("x", "group"):
        axis = getattr(spec.report, what)
        if axis is not None and axis not in spec.axes:
            raise ConfigError(
                f"[report] {what} = {axis!r} is not an axis of the sweep; axes: {spec.axes or 'none'}"
            )
    return spec


def _parse_names(sweep: dict[str, Any]) -> tuple[str, str, str]:
    """The ``[sweep]`` table's task, preset and name, checked."""
    task = sweep.get("task")
    if task is None:
        raise ConfigError(f"[sweep] must name a task: task = one of {', '.join(TASKS)}")
    if not isinstance(task, str) or task not in TASKS:
        raise unknown_name("task in [sweep]", task, TASKS)
    preset = sweep.get("preset", "cpu")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise unknown_name("preset in [sweep]", preset, PRESETS)
    name = sweep.get("name", f"{task}-{preset}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"[sweep] name must be 1-100 letters, digits, '.', '_' or '-' (not first), got {shown(name)}"
        )
    return task, preset, name


def _parse_measure(data: Any) -> tuple[FreshEvalSpec | None, tuple[float, ...]]:
    measure = _table("[measure]", data, {"fresh", "steps_to"})
    fresh = None
    if "fresh" in measure:
        given = _table("[measure] fresh", measure["fresh"], {"n", "seed"})
        fresh = FreshEvalSpec(
            _integer("[measure] fresh.n", given.get("n", 10_000), 1, 10**7),
            _integer("[measure] fresh.seed", given.get("seed", 0), 0, 2**63 - 1),
        )
    levels = measure.get("steps_to", [])
    if not isinstance(levels, list) or not all(_is_fraction(v) for v in levels):
        raise ConfigError(f"[measure] steps_to must be a list of numbers in (0, 1], got {shown(levels)}")
    names = [steps_to_name(v) for v in levels]
    if len(set(names)) < len(names):
        raise ConfigError(f"[measure] steps_to has levels that print alike ({names}); keep them apart")
    return fresh, tuple(float(v) for v in levels)


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of ``spec``, each config checked; trials that give the same run are kept once.

    Raises:
        ConfigError: a trial's config is invalid (the message names the trial's axis values), or
            the spec expands to more than :data:`MAX_TRIALS` trials.
    """
    count = math.prod(len(v) for v in spec.grid.values()) * max(spec.samples, 1)
    if count > MAX_TRIALS:
        raise ConfigError(
            f"the sweep expands to {count:_} trials; at most {MAX_TRIALS:_} (trim the [grid] "
            "lists or [random] samples, or split it into several sweeps)"
        )
    draws: list[dict[str, Any]] = [{}]
    if spec.samples:
        rng = np.random.default_rng(spec.random_seed)
        draws = [
            {k: spec.random[k].sample(rng) for k in sorted(spec.random)} for _ in range(spec.samples)
        ]
    trials: list[Trial] = []
    seen: set[str] = set()
    for point in itertools.product(*spec.grid.values()):
        for drawn in draws:
            axes = {**dict(zip(spec.grid, point, strict=True)), **drawn}
            config = trial_config(spec, axes)
            if config.identity in seen:
                continue
            seen.add(config.identity)
            trials.append(Trial(len(trials), axes, config))
    return trials


def trial_config(spec: SweepSpec, axes: dict[str, Any]) -> RunConfig:
    """The run config of the trial at ``axes``."""
    overrides = {section: dict(values) for section, values in spec.base.items()}
    seed, steps = 0, None
    for key, value in axes.items():
        if key == "seed":
            seed = value
        elif key == "steps":
            steps = value
        else:
            section, name = key.split(".", 1)
            overrides.setdefault(section, {})[name] = value
    try:
        return make_run_config(spec.task, spec.preset, seed=seed, steps=steps, overrides=overrides)
    # TypeError: a value of a type no rule checks (e.g. a table where a name belongs)
    except (TinylensError, TypeError) as err:
        where = ", ".join(f"{k} = {shown(v)}" for k, v in axes.items()) or "the base config"
        raise ConfigError(f"the trial at {where}: {err}") from None


def steps_to_name(level: float) -> str:
    """The metric name of a ``steps_to`` level, e.g. ``steps_to_0.99``."""
    return f"steps_to_{level:g}"


def _check_axis(key: str) -> None:
    if key in ("seed", "steps"):
        return
    section, dot, name = key.partition(".")
    if not dot or section not in SECTIONS or not name:
        raise ConfigError(
            f"axis {key!r} is not seed, steps or SECTION.FIELD with SECTION one of {SECTIONS} "
            '(e.g. "model.n_layers"; quote keys with a dot in TOML)'
        )


def _parse_random(data: Any) -> tuple[int, int, dict[str, Draw]]:
    table = _table("[random]", data, None)
    if not table:
        return 0, 0, {}
    samples = _integer("[random] samples", table.get("samples"), 1, MAX_TRIALS)
    seed = _integer("[random] seed", table.get("seed", 0), 0, 2**63 - 1)
    draws = {}
    for key, value in table.items():
        if key in ("samples", "seed"):
            continue
        _check_axis(key)
        given = _table(f"[random] {key}", value, {*DISTRIBUTIONS, "digits"})
        kinds = [k for k in DISTRIBUTIONS if k in given]
        if len(kinds) != 1:
            raise ConfigError(
                f"[random] {key} must give exactly one of {', '.join(DISTRIBUTIONS)}, "
                f"e.g. {{ log_uniform = [3e-4, 3e-3] }}; got {shown(value)}"
            )
        kind, values = kinds[0], given[kinds[0]]
        digits = _integer(f"[random] {key} digits", given.get("digits", DEFAULT_DIGITS), 1, 17)
        if kind == "choice":
            if not isinstance(values, list) or not values:
                raise ConfigError(f"[random] {key} choice must be a non-empty list, got {shown(values)}")
        else:
            _check_range(key, kind, values)
        draws[key] = Draw(kind, tuple(values), digits)
    if not draws:
        raise ConfigError(
            '[random] draws no axis; add one, e.g. "train.lr" = { log_uniform = [3e-4, 3e-3] }'
        )
    return samples, seed, draws


def _check_range(key: str, kind: str, values: Any) -> None:
    numbers = isinstance(values, list) and len(values) == 2
    numbers = numbers and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if kind == "int_uniform":
        numbers = numbers and all(isinstance(v, int) for v in values)
    if not numbers or not all(_finite_number(v) for v in values):
        raise ConfigError(f"[random] {key} {kind} must be [low, high], got {shown(values)}")
    low, high = values
    if low > high or (kind == "log_uniform" and low <= 0):
        need = "0 < low <= high" if kind == "log_uniform" else "low <= high"
        raise ConfigError(f"[random] {key} {kind} needs {need}, got {shown(values)}")
    if kind == "int_uniform" and not -(2**62) <= low <= high < 2**62:
        raise ConfigError(
            f"[random] {key} int_uniform bounds must lie within ±2^62, got {shown(values)}"
        )
    if kind == "uniform" and not math.isfinite(high - low):
        raise ConfigError(f"[random] {key} uniform range is too wide to draw from, got {shown(values)}")


def _table(what: str, data: Any, known: set[str] | None) -> dict[str, Any]:
    """``data`` as a table (None: empty), its keys checked against ``known`` (None: any)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a table, got {shown(data)}")
    if known is not None:
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown entries {unknown} in {what}; valid: {sorted(known)}")
    return data


def _integer(what: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what} must be an integer in [{low}, {high:_}], got {shown(value)}")
    return value


def _finite_number(value: Any) -> bool:
    """A float that is finite, or an int a float can hold (``math.isfinite`` overflows on 10**400)."""
    if isinstance(value, int):
        return abs(value) < 2**1000
    return math.isfinite(value)


def _is_fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1
