"""Presets, overrides, and the checks of every field a config file or config.json can hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinylens.config import (
    MAX_SEED,
    MAX_STEPS,
    PRESETS,
    RunConfig,
    TrainConfig,
    make_run_config,
    parameter_count,
    read_overrides,
)
from tinylens.errors import ConfigError
from tinylens.model import ModelConfig, build_model


def test_a_preset_carries_a_recipe_per_task() -> None:
    addition = make_run_config("addition", "cpu")
    maze = make_run_config("maze", "cpu")
    assert (addition.model.n_layers, addition.train.precision) == (1, "fp32")
    recipe = PRESETS["cpu"].per_task["maze"]
    assert maze.model.n_layers == recipe["model"]["n_layers"]
    assert maze.train.batch_size == recipe["train"]["batch_size"]
    assert maze.train.precision == "bf16"


def test_user_overrides_win_over_the_task_recipe() -> None:
    maze = make_run_config("maze", "cpu", overrides={"model": {"n_layers": 2}, "train": {"lr": 1e-4}})
    recipe = PRESETS["cpu"].per_task["maze"]
    assert maze.model.n_layers == 2 and maze.train.lr == 1e-4
    assert maze.model.d_model == recipe["model"]["d_model"]  # the rest of the recipe stays
    assert maze.train.batch_size == recipe["train"]["batch_size"]


def test_a_run_config_round_trips_through_its_dict() -> None:
    for task in ("addition", "counting", "maze", "seqcont"):
        cfg = make_run_config(task, "tiny", seed=3)
        assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _edited(**changes: object) -> dict[str, object]:
    data = make_run_config("addition", "tiny").to_dict()
    for path, value in changes.items():
        *sections, name = path.split("__")
        target = data
        for section in sections:
            target = target[section]
        if value is DELETE:
            del target[name]
        else:
            target[name] = value
    return data


DELETE = object()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a run config must be a table of fields, got []"),
        (None, "a run config must be a table of fields, got None"),
        (
            "x" * 1000,
            "got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… (1002 characters)",
        ),
        (
            _edited(seed="abc"),
            "run config seed must be an integer in [0, 9_223_372_036_854_775_807], got 'abc'",
        ),
        (_edited(seed=True), "seed must be an integer in [0, 9_223_372_036_854_775_807], got True"),
        (_edited(seed=-1), "seed must be an integer"),
        (_edited(task=5), "run config task must be a name, got 5"),
        (_edited(train=DELETE), "run config lacks the field 'train'"),
        (_edited(model=[1]), "run config model must be a table of fields, got [1]"),
        (_edited(train=None), "run config train must be a table of fields, got None"),
        (_edited(task_options=[]), "run config task_options must be a table, got []"),
        (_edited(task_options__n_digits=True), "addition n_digits must be an integer like 5, got True"),
        (_edited(extra=1), "unknown run config fields ['extra']"),
        (_edited(train__lr=float("inf")), "train lr must be a number in (0, 10], got inf"),
        (_edited(train__lr=float("nan")), "train lr must be a number in (0, 10], got nan"),
        (_edited(train__lr=1e30), "train lr must be a number in (0, 10], got 1e+30"),
        (_edited(train__lr="fast"), "train lr must be a number in (0, 10], got 'fast'"),
        (_edited(train__weight_decay=float("nan")), "train weight_decay must be a number in [0, 10]"),
        (_edited(train__steps=True), "train steps must be an integer in [1, 1_000_000_000], got True"),
        (_edited(train__steps=10**20), "got 100000000000000000000"),
        (_edited(train__steps=5.0), "train steps must be an integer"),
        (_edited(train__beta2=1.0), "train beta2 must be a number in [0, 1), got 1.0"),
        (_edited(train__grad_clip=0), "train grad_clip must be a number in (0, 1e+06] or None"),
        (
            _edited(train__schedule="linear"),
            "train schedule 'linear' is not one of ('constant', 'cosine')",
        ),
        (_edited(train__precision=True), "train precision True is not one of ('fp32', 'bf16')"),
        (_edited(train__bogus=1), "unknown train fields ['bogus']"),
        (_edited(model__n_layers=True), "model n_layers must be an integer in [1, 256], got True"),
        (_edited(model__d_mlp=-1), "model d_mlp must be an integer in [0, 262_144], got -1"),
        (_edited(model__n_ctx=True), "model n_ctx must be an integer in [1, 65_536] or None, got True"),
        (_edited(model__act_fn=None), "model act_fn None is not one of"),
        (_edited(model__normalization_type=1), "model normalization_type 1 is not one of"),
        (_edited(model__bogus=1), "unknown model fields ['bogus']"),
        (
            _edited(model__n_layers=200, model__d_model=4096, model__d_mlp=16384),
            "the model would have 2.7e+10 parameters; tinylens trains at most 1_000_000_000",
        ),
    ],
)
def test_from_dict_checks_every_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict(data)
    assert message in str(caught.value)
    assert len(str(caught.value)) < 300


def test_none_is_allowed_where_the_config_says_so() -> None:
    data = _edited(train__grad_clip=None, model__normalization_type=None)
    cfg = RunConfig.from_dict(data)
    assert cfg.train.grad_clip is None and cfg.model.normalization_type is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr": 0.0}, "train lr must be a number in (0, 10]"),
        ({"lr": 10.5}, "train lr must be a number in (0, 10]"),
        ({"batch_size": 2**21}, "train batch_size must be an integer in [1, 1_048_576]"),
        ({"n_checkpoints": 10**6}, "train n_checkpoints must be an integer in [0, 1_000]"),
        ({"eval_size": False}, "train eval_size must be an integer"),
    ],
)
def test_train_config_bounds(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**fields)
    assert message in str(caught.value)


def test_bounds_are_inclusive() -> None:
    TrainConfig(lr=10.0, steps=MAX_STEPS, weight_decay=0.0, beta1=0.0, grad_clip=None)
    make_run_config("addition", "tiny", seed=MAX_SEED, overrides={"model": {"n_layers": 256}})


def test_read_overrides_refuses_unreadable_files(tmp_path: Path) -> None:
    latin1 = tmp_path / "c.toml"
    latin1.write_bytes("[train]\nlr = 0.1 # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_overrides(latin1)
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_overrides(tmp_path)  # a folder
    deep = tmp_path / "c.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(ConfigError, match="does not parse"):
        read_overrides(deep)


def test_inversion_preset_gives_the_papers_probed_models() -> None:
    counting = make_run_config("counting", "inversion")
    m = counting.model
    assert (m.n_layers, m.n_heads, m.d_model, m.d_vocab, m.n_ctx) == (2, 1, 64, 39, 32)
    assert (counting.train.lr, counting.train.weight_decay, counting.train.batch_size) == (
        1e-3,
        0.01,
        128,
    )
    addition = make_run_config("addition", "inversion")
    m = addition.model
    assert (m.n_layers, m.n_heads, m.d_model) == (2, 4, 32)
    assert addition.task_options["n_digits"] == 3 and addition.task_options["min_operand"] == 100
    assert addition.task_options["sum9_example_frac"] == 0.0  # the paper's data: no enrichment


@pytest.mark.parametrize("norm", ["LN", "LNPre", "RMS", "RMSPre", None])
@pytest.mark.parametrize("positions", ["standard", "rotary"])
@pytest.mark.parametrize("d_mlp", [0, 20])
def test_parameter_count_is_the_built_models(norm: str | None, positions: str, d_mlp: int) -> None:
    cfg = ModelConfig(
        n_layers=2, n_heads=3, d_model=12, d_head=4, d_mlp=d_mlp, normalization_type=norm,
        positional_embedding=positions, d_vocab=7, n_ctx=9,
    )  # fmt: skip
    built = build_model(cfg, seed=0)
    assert parameter_count(cfg) == sum(p.numel() for p in built.parameters())
