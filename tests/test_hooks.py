"""Hook names: every name tinylens spells exists on a real bridge; unknown names fail clearly."""

from __future__ import annotations

import pytest

from tinylens import hooks
from tinylens.errors import UnknownNameError
from tinylens.model import build_model

from .helpers import model_cfg


@pytest.mark.parametrize("n_layers", [1, 3])
def test_every_hook_name_exists(n_layers: int) -> None:
    model = build_model(model_cfg(n_layers=n_layers), seed=0)
    missing = [name for name in hooks.all_hook_names(n_layers) if name not in model.hook_dict]
    assert missing == []
    hooks.check_hook_names(model, hooks.all_hook_names(n_layers))


def test_unknown_hook_name_suggests_close_ones() -> None:
    model = build_model(model_cfg(), seed=0)
    with pytest.raises(UnknownNameError, match=r"blocks\.0\.hook_resid_post"):
        hooks.check_hook_names(model, ["blocks.0.hook_resid_pots"])


def test_unknown_hook_with_nothing_alike_lists_valid_ones() -> None:
    model = build_model(model_cfg(), seed=0)
    with pytest.raises(UnknownNameError, match=r"valid hooks include: .*blocks\.0\.hook_resid_pre"):
        hooks.check_hook_names(model, ["zzz"])
