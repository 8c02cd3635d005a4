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
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, no_type_check

from tinylens.errors import ConfigError, unknown_name
from tinylens.model import ModelConfig, model_preset
from tinylens.store import config_hash
from tinylens.tasks import make_task

Schedule = Literal["constant", "cosine"]
Precision = Literal["fp32", "bf16"]


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

    def __post_init__(self) -> None:
        numbers = ("lr", "weight_decay", "beta1", "beta2")
        for f in (*numbers, *(("grad_clip",) if self.grad_clip is not None else ())):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"train {f} must be a number, got {value!r}")
        positive = ("steps", "batch_size", "log_every", "eval_every", "eval_size", "save_every")
        for f in positive:
            value = getattr(self, f)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"train {f} must be a positive integer, got {value!r}")
        for f in ("warmup_steps", "n_checkpoints", "eval_seed"):
            value = getattr(self, f)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"train {f} must be a non-negative integer, got {value!r}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"train lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"train weight_decay must be ≥ 0, got {self.weight_decay!r}")
        for f in ("beta1", "beta2"):
            if not 0 <= getattr(self, f) < 1:
                raise ConfigError(f"train {f} must be in [0, 1), got {getattr(self, f)!r}")
        for f, choices in (("schedule", Schedule), ("precision", Precision)):
            if getattr(self, f) not in get_args(choices):
                raise ConfigError(f"train {f} {getattr(self, f)!r} is not one of {get_args(choices)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train grad_clip must be positive or None, got {self.grad_clip!r}")


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
        "for mazes 6 layers of d_model 64, batch 64, bf16 (see the README for what it reaches)",
        per_task={
            # Chosen by measurement on the 2-core CPU (README, "Mazes"): at equal compute, 6 thin
            # layers beat 2 wide ones, and bf16 autocast runs ~1.5× faster at no cost in accuracy.
            "maze": {
                "model": {"n_layers": 6, "d_model": 64, "n_heads": 4, "d_head": 16, "d_mlp": 256},
                "train": {
                    "steps": 10_000,
                    "batch_size": 64,
                    "lr": 2e-3,
                    "precision": "bf16",
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        _reject_unknown("run config", data, {f.name for f in fields(cls)})
        try:
            return cls(
                task=data["task"],
                preset=data["preset"],
                model=ModelConfig.from_dict(data["model"]),
                train=_train_from_dict(data["train"]),
                seed=int(data.get("seed", 0)),
                task_options=dict(data.get("task_options", {})),
            )
        except KeyError as err:
            raise ConfigError(f"run config lacks the field {err}") from None

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


def _train_from_dict(data: dict[str, Any]) -> TrainConfig:
    _reject_unknown("train", data, {f.name for f in fields(TrainConfig)})
    return TrainConfig(**data)


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed for one purpose ("init", "train-data", …) from the run seed."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def read_overrides(path: Path) -> dict[str, dict[str, Any]]:
    """Read a TOML or JSON file of ``{"task"|"model"|"train": {field: value}}`` overrides."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {path} does not parse: {err}") from None
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
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    chosen = PRESETS[preset]
    recipe = chosen.per_task.get(task, {})
    overrides = overrides or {}
    overrides = {
        section: {**recipe.get(section, {}), **overrides.get(section, {})}
        for section in {*recipe, *overrides}
    }
    task_obj = make_task(task, overrides.get("task"))
    base_model = model_preset(chosen.model)
    model_fields = {f.name for f in fields(ModelConfig)} - {"d_vocab", "n_ctx"}
    _reject_unknown("model", overrides.get("model", {}), model_fields)
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
