"""What a run's config says about its model, and which config values tell a group of runs apart.

The start page and the run page show each model's shape (layers × heads × d_model, d_head, d_mlp)
and how many parameters it has, and, among the runs of one kind, task and preset (a sweep's
trials, a study's models, the seeds of one recipe), the config values that differ between them:
without these, four ``seqcont-cpu-s0-<hash>`` runs of different widths look the same.

Everything here reads ``config.json`` as stored, a plain dict, and never fails on a damaged one:
what cannot be read is left out (no shape, no count, no difference).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tinylens.config import MODEL_RULES, check_fields, parameter_count
from tinylens.errors import TinylensError
from tinylens.model import ModelConfig

SHAPE_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp")
"""A model's shape, as the pages show it; the first three are needed, the others shown if given."""
MODEL_SECTIONS = ("model", "decoder")
"""Where a config describes a model: a training run's ``model``, a decoder run's ``decoder``."""
MAX_DEPTH = 8
"""Nesting followed when comparing configs (ours are 3 deep); anything deeper compares whole."""

GroupKey = tuple[str, str | None, str | None]
"""Runs compared with each other: (kind, task, preset), as the runs table shows them."""


def model_shape(config: Mapping[str, Any]) -> dict[str, int] | None:
    """The shape of the model ``config`` describes, or None if it describes none (a study or a
    sweep) or not readably.

    Returns:
        ``n_layers``, ``n_heads`` and ``d_model`` always, ``d_head`` and ``d_mlp`` where the config
        gives them (a decoder's config has no ``d_mlp``).
    """
    for section in MODEL_SECTIONS:
        model = config.get(section)
        if not isinstance(model, dict):
            continue
        shape = {f: model[f] for f in SHAPE_FIELDS if _count(model.get(f))}
        if all(f in shape for f in SHAPE_FIELDS[:3]):
            return shape
    return None


def model_parameters(config: Mapping[str, Any]) -> int | None:
    """How many parameters a training run's model has (:func:`tinylens.config.parameter_count`,
    by arithmetic from the config: no model is built); None for other runs or a damaged config."""
    model = config.get("model")
    if not isinstance(model, dict):
        return None
    try:
        check_fields("model", model, MODEL_RULES)  # rejects a bool where a width belongs
        return parameter_count(ModelConfig.from_dict(model))
    except (TinylensError, TypeError):  # TypeError: a required field is missing
        return None


def group_key(kind: str, config: Mapping[str, Any]) -> GroupKey:
    """The group a run is compared within: its kind, task and preset (None where not a name)."""
    task, preset = config.get("task"), config.get("preset")
    return kind, task if isinstance(task, str) else None, preset if isinstance(preset, str) else None


def differing_values(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """For runs compared with each other (name → config), each run's values of the config fields
    whose values are not the same in all of them.

    Fields are dotted paths into the config, as a sweep's grid names them (``model.d_model``,
    ``train.lr``, ``seed``); a field one run lacks counts as a difference, its value None there.

    Returns:
        name → {field: value}, the fields sorted; every run gets the same fields (none when the
        runs are alike or there is only one).
    """
    flat = {name: _flatten(config) for name, config in configs.items()}
    fields = sorted({key for values in flat.values() for key in values})
    differing = [f for f in fields if len({_canonical(v.get(f, _ABSENT)) for v in flat.values()}) > 1]
    return {name: {f: values.get(f) for f in differing} for name, values in flat.items()}


_ABSENT = object()


def _canonical(value: Any) -> str:
    """A value as comparable text: equal JSON values give equal text, a missing field its own."""
    if value is _ABSENT:
        return "\0absent"
    return json.dumps(value, sort_keys=True, default=repr)


def _flatten(config: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """``{"model": {"d_model": 16}}`` → ``{"model.d_model": 16}``; lists and empty tables are
    values, and so is anything nested deeper than :data:`MAX_DEPTH`."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and depth < MAX_DEPTH:
            flat.update(_flatten(value, f"{path}.", depth + 1))
        else:
            flat[path] = value
    return flat


def _count(value: Any) -> bool:
    """A non-negative integer, not a bool: a width or a count (d_mlp 0: an attention-only model)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
