"""The forward pass from weights against the model's own, on boot_native models of many shapes."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge.sources.native import boot as boot_native

from tinylens import hooks
from tinylens.analysis import ComponentGraph, WeightForward, successor_scores
from tinylens.errors import ConfigError, TinylensError

from ..helpers import assert_close_at_scale, native_cfg

D_VOCAB = 23
SHAPES = {
    "ln": {},
    "rms": {"normalization_type": "RMS"},
    "ln-pre": {"normalization_type": "LNPre"},
    "rms-pre": {"normalization_type": "RMSPre"},
    "no-norm": {"normalization_type": None},
    "final-rms": {"final_rms": True},
    "rotary": {"positional_embedding_type": "rotary"},
    "rotary-partial": {"positional_embedding_type": "rotary", "rotary_dim": 4},
    "attn-only": {"attn_only": True},
    "gated-silu": {"gated_mlp": True, "act_fn": "silu"},
    "gated-gelu-rms-rotary": {
        "gated_mlp": True,
        "act_fn": "gelu",
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
    },
    "1-layer-1-head": {"n_layers": 1, "n_heads": 1, "d_head": 24},
    "4-layers-6-heads": {"n_layers": 4, "n_heads": 6, "d_head": 4},
}
UNSUPPORTED = {
    "grouped-query attention": {"n_key_value_heads": 1},
    "soft-capped attention scores": {"attn_scores_soft_cap": 5.0},
    "soft-capped output logits": {"output_logits_soft_cap": 5.0},
    "bidirectional attention": {"attention_dir": "bidirectional"},
}


def _cfg(**overrides: object) -> TransformerBridgeConfig:
    return native_cfg(D_VOCAB, **overrides)


def _model(dtype: torch.dtype | None = None, **overrides: object):
    model = boot_native(_cfg(**overrides), dtype=dtype).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # every parameter away from its initial value, norms included
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=g).to(param.dtype))
    return model


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward_equals_the_models_logits_and_activations(shape, tokens) -> None:
    model = _model(**SHAPES[shape])
    fwd = WeightForward(model)
    with torch.no_grad():
        run = fwd.run(tokens)
        logits, cache = model.run_with_cache(tokens)
        # float32, two code paths: rounding follows the largest activations (~10 with these
        # weights), not each element, so the bound is 1e-5 of that scale (see the helper)
        assert_close_at_scale(fwd.unembed(run.final), logits)
    ours = {
        hooks.resid_pre: run.resid_pre,
        hooks.attn_z: run.z,
        hooks.attn_out: run.attn_out,
        hooks.resid_mid: run.resid_mid,
        hooks.resid_post: run.resid_post,
    }
    if fwd.has_mlp:
        ours[hooks.mlp_out] = run.mlp_out
    else:
        assert run.mlp_out == []
    for name_of, acts in ours.items():
        assert len(acts) == model.cfg.n_layers
        for layer, act in enumerate(acts):
            name = name_of(layer)
            if name not in cache:  # attention-only bridges have no resid_mid hook
                continue
            assert_close_at_scale(act, cache[name], msg=name)


@pytest.mark.parametrize("shape", ["ln", "rotary", "attn-only", "gated-silu"])
def test_the_graph_built_on_it_equals_the_model(shape, tokens) -> None:
    model = _model(**SHAPES[shape])
    with torch.no_grad():
        assert_close_at_scale(ComponentGraph(model).run(tokens).logits, model(tokens))


@pytest.mark.parametrize("feature", list(UNSUPPORTED))
def test_an_unsupported_feature_is_named(feature) -> None:
    model = _model(**UNSUPPORTED[feature])
    for build in (WeightForward, ComponentGraph, lambda m: successor_scores(m, [torch.arange(3)])):
        with pytest.raises(TinylensError, match=feature):
            build(model)


def test_float64_models_run_in_float64(tokens) -> None:
    model = _model(dtype=torch.float64)
    run = WeightForward(model).run(tokens)
    assert run.final.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(WeightForward(model).unembed(run.final), model(tokens))


def test_a_model_it_does_not_reproduce_is_refused() -> None:
    model = _model()
    with torch.no_grad():  # a second scale that the weights alone cannot show
        model.blocks[1].attn.original_component.scale = 0.5
    with pytest.raises(ConfigError, match="do not reproduce this model"):
        WeightForward(model)


def test_the_self_check_runs_in_eval_mode_and_restores_the_mode() -> None:
    model = _model()
    model.train()
    WeightForward(model)  # checks itself against one forward pass of the model
    assert model.training
    model.eval()
    WeightForward(model)
    assert not model.training
