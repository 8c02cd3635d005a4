"""Run configuration: what to train (task, model, optimisation, seed), presets, and config files.

A :class:`RunConfig` is plain data. Its identity is the sha256 of its canonical JSON, which names the
run by default, so training the same config twice finds (and resumes or reuses) the same run.

A config file (TOML or JSON) overrides preset fields by section, e.g.::

    [task]
    n_digits = 10
    [model]
    n_layers = 2
    [train]
    steps = 20000
    lr = 1e-3
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, no_type_check

from tinylens.errors import ConfigError, unknown_name
from tinylens.model import ActFn, ModelConfig, Norm, Positions, model_preset
from tinylens.store import config_hash
from tinylens.tasks import TASKS, make_task

Schedule = Literal["constant", "cosine"]
Precision = Literal["fp32", "bf16"]
Forward = Literal["bridge", "direct"]
Device = Literal["cpu", "cuda"]

MAX_STEPS = 10**9
"""Most optimizer updates a run may ask for (also bounds every step-count field)."""
MAX_SEED = 2**63 - 1
"""Largest seed (seeds are stored as JSON and SQLite integers)."""
MAX_PARAMETERS = 10**9
"""Largest model a config may describe: 4 GB of fp32 weights, plus twice that of AdamW state."""


@dataclass(frozen=True)
class Integer:
    """A field that holds an integer in ``[low, high]`` (never a bool)."""

    low: int
    high: int
    optional: bool = False
    """None is allowed too."""

    def problem(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            return f"an integer in [{self.low}, {self.high:_}]" + (" or None" if self.optional else "")
        return None


@dataclass(frozen=True)
class Number:
    """A field that holds a finite number in a range; ``open_low``: the lower end is excluded."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = (
            is_number
            and math.isfinite(value)
            and (self.low < value if self.open_low else self.low <= value)
            and (value < self.high if self.open_high else value <= self.high)
        )
        if ok:
            return None
        interval = (
            f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        )
        return f"a number in {interval}" + (" or None" if self.optional else "")


@dataclass(frozen=True)
class Choice:
    """A field that holds one of the values of a ``Literal`` type (or None if ``optional``)."""

    literal: Any
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        choices = get_args(self.literal)
        # `x in choices` would accept True for a choice of 1; compare types as well
        if any(type(value) is type(c) and value == c for c in choices):
            return None
        if value is None and self.optional:
            return None
        return f"one of {choices}" + (" or None" if self.optional else "")


Rule = Integer | Number | Choice

TRAIN_RULES: dict[str, Rule] = {
    "steps": Integer(1, MAX_STEPS),
    "batch_size": Integer(1, 2**20),
    "lr": Number(0.0, 10.0, open_low=True),
    "weight_decay": Number(0.0, 10.0),
    "beta1": Number(0.0, 1.0, open_high=True),
    "beta2": Number(0.0, 1.0, open_high=True),
    "warmup_steps": Integer(0, MAX_STEPS),
    "schedule": Choice(Schedule),
    "grad_clip": Number(0.0, 1e6, open_low=True, optional=True),
    "log_every": Integer(1, MAX_STEPS),
    "eval_every": Integer(1, MAX_STEPS),
    "eval_size": Integer(1, 10**6),
    "eval_seed": Integer(0, MAX_SEED),
    "save_every": Integer(1, MAX_STEPS),
    "n_checkpoints": Integer(0, 1000),
    "precision": Choice(Precision),
    "forward": Choice(Forward),
    "queries_per_prompt": Integer(1, 1024),
    "device": Choice(Device),
}
"""What each :class:`TrainConfig` field accepts."""

MODEL_RULES: dict[str, Rule] = {
    "n_layers": Integer(1, 256),
    "n_heads": Integer(1, 256),
    "d_model": Integer(1, 2**16),
    "d_head": Integer(1, 2**16),
    "d_mlp": Integer(0, 2**18),
    "act_fn": Choice(ActFn),
    "normalization_type": Choice(Norm, optional=True),
    "positional_embedding": Choice(Positions),
    "d_vocab": Integer(1, 2**20, optional=True),
    "n_ctx": Integer(1, 2**16, optional=True),
}
"""What each :class:`~tinylens.model.ModelConfig` field accepts (checked here, at the boundary)."""


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def check_fields(section: str, values: dict[str, Any], rules: dict[str, Rule]) -> None:
    """Raise :class:`ConfigError` naming the first field of ``values`` its rule rejects.

    Fields without a rule are left alone (unknown names are rejected separately).
    """
    for name, value in values.items():
        rule = rules.get(name)
        wanted = rule.problem(value) if rule is not None else None
        if wanted is None:
            continue
        what = f"{section} {name}" if section else name
        if isinstance(rule, Choice):
            raise ConfigError(f"{what} {shown(value)} is not {wanted}")
        raise ConfigError(f"{what} must be {wanted}, got {shown(value)}")


# Validated by __post_init__ with our own errors; runtime type-checkers (the test suite's
# jaxtyping hook) would pre-empt those with their own, so they skip this class.
@no_type_check
@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one training run."""

    steps: int = 10_000
    """Optimizer updates in total."""
    batch_size: int = 128
    """Fresh questions per update."""
    lr: float = 2e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only (not biases, norms)."""
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 100
    """Linear warm-up from 0 to ``lr``."""
    schedule: Schedule = "cosine"
    """After warm-up: hold ``lr`` ("constant") or decay it to 0 at ``steps`` ("cosine")."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this; None for no clipping."""
    log_every: int = 10
    """Log training loss (overall and per answer position) every this many steps."""
    eval_every: int = 250
    """Evaluate on the held-out set every this many steps (and at the first and last)."""
    eval_size: int = 2048
    """Questions in the held-out set (drawn once, seeded by ``eval_seed``, never enriched)."""
    eval_seed: int = 0
    save_every: int = 500
    """Save the full training state (to resume from) every this many steps."""
    n_checkpoints: int = 16
    """Model checkpoints kept for later analysis, log-spaced over training, plus init and last."""
    precision: Precision = "fp32"
    """``bf16``: the training forward pass under bfloat16 autocast (weights, optimizer state and
    evaluation stay fp32). About 1.5× the steps per second on a CPU with AVX-512 bf16."""
    forward: Forward = "bridge"
    """The training forward pass: through the TransformerLens bridge, or ``direct``: the same function
    computed from the model's weights without hooks (:mod:`tinylens.train_forward`; about 1.3× the
    steps per second on the maze recipe). Evaluation and analyses always use the bridge."""
    queries_per_prompt: int = 1
    """Questions per shared prefix (a maze's adjacency list): each training row holds the prefix once
    and this many questions after it, each seeing the prefix and itself only, so the loss is exactly
    that of as many ordinary sequences (:func:`tinylens.train_forward.shared_prefix_forward`). Needs
    ``forward = "direct"``, a task with a shared prefix, and ``batch_size`` (questions per update) a
    multiple of it."""
    device: Device = "cpu"
    """Where the model trains: ``cuda`` needs a CUDA build of torch and a GPU. The weights start
    the same on either (they are drawn on the CPU), the data stream is the same (drawn on the CPU),
    but GPU arithmetic rounds differently, so a GPU run is a run of its own. Checkpoints are stored
    on the CPU; analyses load them there."""

    def __post_init__(self) -> None:
        check_fields("train", {f.name: getattr(self, f.name) for f in fields(self)}, TRAIN_RULES)
        if self.queries_per_prompt > 1:
            if self.forward != "direct":
                raise ConfigError(
                    "train queries_per_prompt > 1 packs several questions into one row, which only "
                    "the direct forward pass reads; set train.forward = 'direct'"
                )
            if self.batch_size % self.queries_per_prompt:
                raise ConfigError(
                    f"train batch_size {self.batch_size} must be a multiple of queries_per_prompt "
                    f"{self.queries_per_prompt} (questions per update, grouped by prompt)"
                )


ADDED_TRAIN_FIELDS: dict[str, Any] = {"forward": "bridge", "queries_per_prompt": 1, "device": "cpu"}
"""Training fields added after runs were first stored, with their defaults. A run config leaves them
out of its ``config.json`` (and so of its identity) while they hold the default, so runs trained
before they existed keep their names and are reused."""


@dataclass(frozen=True)
class Preset:
    """A named starting point: a model architecture and how to train it."""

    model: str
    """Key of :data:`tinylens.model.MODEL_PRESETS`."""
    train: TrainConfig
    description: str
    per_task: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Task name → ``{"task"|"model"|"train": {field: value}}`` applied for that task (a user's
    overrides still win): the same preset name then means a recipe that works for each task."""


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        model="cpu",
        train=TrainConfig(),
        description="1 layer, 4 heads, d_model 128: >99% on 5-digit addition in minutes on a laptop; "
        "for mazes 6 layers of d_model 64, 8 queries per maze, 128 per step, bf16 (see the README "
        "for what it reaches)",
        per_task={
            # Chosen by measurement on the 2-core CPU at equal wall-clock (README, "Mazes"): 6 thin
            # layers beat 2 wide ones and 8 thinner ones; bf16 autocast runs ~1.5× faster at no
            # cost in accuracy; 8 queries sharing one adjacency list, 16 mazes per step, learn
            # ~3× faster per second than one query per maze.
            "maze": {
                "model": {"n_layers": 6, "d_model": 64, "n_heads": 4, "d_head": 16, "d_mlp": 256},
                "train": {
                    "steps": 12_000,
                    "batch_size": 128,
                    "lr": 2e-3,
                    "precision": "bf16",
                    "forward": "direct",
                    "queries_per_prompt": 8,
                    "eval_every": 500,
                    "eval_size": 512,
                    "save_every": 500,
                },
            },
            # 3 layers so that circuits have depth to share; the five families are learned to
            # near-perfect accuracy within these steps (README, "Sequence continuation").
            "seqcont": {
                "model": {"n_layers": 3, "d_model": 64, "n_heads": 4, "d_head": 16, "d_mlp": 256},
                "train": {"steps": 3_000, "eval_every": 250, "eval_size": 1024},
            },
        },
    ),
    "inversion": Preset(
        model="inversion",
        train=TrainConfig(steps=6_000, lr=1e-3, weight_decay=0.01, eval_every=1_000),
        description="InversionView's probed models: counting (2 layers, 1 head, d_model 64; 99.4% "
        "held out after 6,000 steps, 4.5 min) and 3-digit addition (2 layers, 4 heads, d_model 32, "
        "operands 100-999; 100% after 2,000 steps)",
        per_task={
            # Measured on the 2-core CPU: the paper's widths; our answer-only loss and cosine
            # schedule learn in minutes what the paper trained for 50 epochs.
            "addition": {
                "task": {"n_digits": 3, "min_operand": 100, "sum9_example_frac": 0.0},
                "model": {"n_heads": 4, "d_model": 32, "d_head": 8, "d_mlp": 128},
                "train": {"lr": 3e-3, "batch_size": 256, "eval_size": 4096},
            },
        },
    ),
    "quirke": Preset(
        model="quirke",
        # The paper's recipe: AdamW 8e-5, 10-step warm-up then constant, batch 64, ~30k steps.
        train=TrainConfig(steps=30_000, batch_size=64, lr=8e-5, warmup_steps=10, schedule="constant"),
        description="the paper's model and recipe (1 layer, 3 heads, d_model 510); GPU-sized",
    ),
    "tiny": Preset(
        model="tiny",
        train=TrainConfig(steps=300, batch_size=64, eval_every=100, eval_size=512, save_every=100),
        description="a seconds-long smoke run for tests and demos; learns little",
    ),
}


# Validated by __post_init__, like TrainConfig (see there).
@no_type_check
@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run's result."""

    task: str
    """Task registry name, e.g. ``"addition"``."""
    preset: str
    """The preset it started from (part of the identity and the default run name)."""
    model: ModelConfig
    """Architecture, sized for the task."""
    train: TrainConfig
    seed: int = 0
    """Seeds the initial weights and the training data stream."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the task (e.g. ``n_digits``), in the task's canonical form."""

    def __post_init__(self) -> None:
        for name in ("task", "preset"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"run config {name} must be a name, got {shown(getattr(self, name))}")
        if not isinstance(self.model, ModelConfig) or not isinstance(self.train, TrainConfig):
            raise ConfigError("run config model and train must be a ModelConfig and a TrainConfig")
        check_fields("model", asdict(self.model), MODEL_RULES)
        check_fields("run config", {"seed": self.seed}, {"seed": Integer(0, MAX_SEED)})
        if not isinstance(self.task_options, dict):
            raise ConfigError(f"run config task_options must be a table, got {shown(self.task_options)}")
        check_task_options(self.task, self.task_options)
        shared = self.train.queries_per_prompt > 1
        if shared and make_task(self.task, self.task_options).shared_prefix_len is None:
            raise ConfigError(
                f"the {self.task} task has no prefix shared between questions; "
                "set train.queries_per_prompt = 1"
            )
        n_params = parameter_count(self.model)
        if n_params > MAX_PARAMETERS:
            raise ConfigError(
                f"the model would have {n_params:.3g} parameters; tinylens trains at most "
                f"{MAX_PARAMETERS:_} (lower n_layers, d_model, d_mlp or n_heads × d_head)"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, default in ADDED_TRAIN_FIELDS.items():
            if data["train"][name] == default:
                del data["train"][name]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """Rebuild a config from :meth:`to_dict`'s output (e.g. a run's ``config.json``), checking
        every field's presence, type and range.

        Raises:
            ConfigError: ``data`` is not such a table, or a field is missing, unknown or invalid.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a run config must be a table of fields, got {shown(data)}")
        _reject_unknown("run config", data, {f.name for f in fields(cls)})
        missing = [name for name in ("task", "preset", "model", "train") if name not in data]
        if missing:
            raise ConfigError(f"run config lacks the field {missing[0]!r}")
        for section, known in (("model", ModelConfig), ("train", TrainConfig)):
            if not isinstance(data[section], dict):
                raise ConfigError(
                    f"run config {section} must be a table of fields, got {shown(data[section])}"
                )
            _reject_unknown(section, data[section], {f.name for f in fields(known)})
        # Check types before constructing: ModelConfig's own checks let booleans through.
        check_fields("model", data["model"], MODEL_RULES)
        return cls(
            task=data["task"],
            preset=data["preset"],
            model=ModelConfig.from_dict(data["model"]),
            train=TrainConfig(**data["train"]),
            seed=data.get("seed", 0),
            task_options=data.get("task_options", {}),
        )

    @property
    def identity(self) -> str:
        """sha256 of the canonical JSON; equal configs have equal identities."""
        return config_hash(self.to_dict())

    def default_name(self) -> str:
        return f"{self.task}-{self.preset}-s{self.seed}-{self.identity[:8]}"


def _reject_unknown(what: str, data: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} fields {unknown}; valid fields: {sorted(known)}")


def check_task_options(task: str, options: dict[str, Any]) -> None:
    """Reject a boolean where the task's option is a number (``n_digits = true`` would pass as 1).

    The task's constructor checks everything else when the task is built.
    """
    cls = TASKS.get(task)
    if cls is None:
        raise unknown_name("task", task, sorted(TASKS))
    defaults = {
        name: param.default
        for name, param in inspect.signature(cls).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    for name, value in options.items():
        default = defaults.get(name)
        numeric = isinstance(default, int | float) and not isinstance(default, bool)
        if numeric and isinstance(value, bool):
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ConfigError(f"{task} {name} must be {kind} like {default!r}, got {shown(value)}")


def parameter_count(model: ModelConfig) -> int:
    """How many parameters the model :func:`tinylens.model.build_model` makes for ``model`` has,
    by arithmetic (no model is built; tested equal to the built one's count).

    A config not yet sized for a task (``d_vocab``/``n_ctx`` None) counts no embeddings.
    """
    d, inner = model.d_model, model.n_heads * model.d_head
    norm = {"LN": 2 * d, "RMS": d}.get(model.normalization_type or "", 0)  # the *Pre norms: none
    attention = 3 * (d * inner + inner) + inner * d + d  # W_Q, W_K, W_V, W_O and their biases
    mlp = 2 * d * model.d_mlp + model.d_mlp + d if model.d_mlp else 0
    block = norm + attention + (norm + mlp if model.d_mlp else 0)
    vocab, n_ctx = model.d_vocab or 0, model.n_ctx or 0
    positions = n_ctx * d if model.positional_embedding == "standard" else 0
    return model.n_layers * block + 2 * vocab * d + positions + norm  # embed, unembed, final norm


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed for one purpose ("init", "train-data", …) from the run seed."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def read_toml_or_json(path: Path, what: str = "config file") -> Any:
    """The parsed contents of a TOML file (JSON if its suffix is ``.json``).

    Raises:
        ConfigError: the file is unreadable, not UTF-8 or does not parse; the message calls it
            ``what``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 TOML or JSON"
        ) from None
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, RecursionError) as err:  # JSON/TOML decode errors are ValueErrors
        message = str(err) if isinstance(err, ValueError) else "nested too deeply"
        raise ConfigError(f"{what} {path} does not parse: {shown(message, 200)}") from None


def read_overrides(path: Path) -> dict[str, dict[str, Any]]:
    """Read a TOML or JSON file of ``{"task"|"model"|"train": {field: value}}`` overrides."""
    path = Path(path)
    data = read_toml_or_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of sections [task], [model], [train]")
    _reject_unknown(f"section of {path.name}:", data, {"task", "model", "train"})
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] in {path} must be a table of field = value")
    return data


def make_run_config(
    task: str,
    preset: str = "cpu",
    *,
    seed: int = 0,
    steps: int | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> RunConfig:
    """Resolve a task, a preset and optional overrides into a validated :class:`RunConfig`."""
    if preset not in PRESETS:
        raise unknown_name("preset", preset, PRESETS)
    check_fields("", {"seed": seed}, {"seed": Integer(0, MAX_SEED)})
    chosen = PRESETS[preset]
    recipe = chosen.per_task.get(task, {})
    overrides = overrides or {}
    overrides = {
        section: {**recipe.get(section, {}), **overrides.get(section, {})}
        for section in {*recipe, *overrides}
    }
    check_task_options(task, overrides.get("task", {}))
    task_obj = make_task(task, overrides.get("task"))
    base_model = model_preset(chosen.model)
    model_fields = {f.name for f in fields(ModelConfig)} - {"d_vocab", "n_ctx"}
    _reject_unknown("model", overrides.get("model", {}), model_fields)
    check_fields("model", overrides.get("model", {}), MODEL_RULES)
    model = replace(base_model, **overrides.get("model", {}))
    train_over = overrides.get("train", {})
    _reject_unknown("train", train_over, {f.name for f in fields(TrainConfig)})
    train = replace(chosen.train, **train_over)
    if steps is not None:
        train = replace(train, steps=steps)
    return RunConfig(
        task=task,
        preset=preset,
        model=model.sized(d_vocab=task_obj.d_vocab, n_ctx=task_obj.seq_len),
        train=train,
        seed=seed,
        task_options=task_obj.options(),
    )
