"""Ablation against hand computations on tiny random models."""

from __future__ import annotations

import copy

import pytest
import torch

from tinylens import hooks
from tinylens.analysis.ablation import Ablation, run_ablated
from tinylens.analysis.attention import mean_attention
from tinylens.errors import ConfigError, UnknownNameError
from tinylens.model import build_model

from ..helpers import model_cfg


@pytest.fixture(params=[{"n_layers": 1, "n_heads": 3}, {"n_layers": 2, "n_heads": 2}])
def model(request: pytest.FixtureRequest):
    return build_model(model_cfg(**request.param), seed=3).eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 12, (16, 18), generator=torch.Generator().manual_seed(0))


def test_zero_ablating_a_head_removes_its_w_o_contribution(model, tokens) -> None:
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            ablated = run_ablated(model, tokens, [Ablation(hooks.attn_z(layer), head=head, kind="zero")])
            w_o = model.blocks[layer].attn.W_O[head]  # [d_head, d_model]

            with torch.no_grad():
                # upstream of the ablated head nothing changes, so its clean z is the one removed
                _, cache = model.run_with_cache(tokens)
                z = cache[hooks.attn_z(layer)][:, :, head]  # [batch, pos, d_head]

                def remove_head(act, *, hook, contribution=z @ w_o):
                    return act - contribution

                expected = model.run_with_hooks(tokens, fwd_hooks=[(hooks.attn_out(layer), remove_head)])
            torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=1e-5)


def test_zero_ablating_the_mlp_equals_zeroing_its_output_weights(model, tokens) -> None:
    layer = model.cfg.n_layers - 1
    ablated = run_ablated(model, tokens, [Ablation(hooks.mlp_out(layer), kind="zero")])
    surgery = copy.deepcopy(model)
    with torch.no_grad():
        mlp_out = surgery.blocks[layer].mlp.out
        mlp_out.weight.zero_()
        mlp_out.bias.zero_()
        torch.testing.assert_close(ablated, surgery(tokens), atol=1e-5, rtol=1e-5)


def test_mean_ablation_uses_the_reference_mean_per_position(model, tokens) -> None:
    reference = torch.randint(0, 12, (32, 18), generator=torch.Generator().manual_seed(1))
    hook = hooks.resid_mid(0)
    ablated = run_ablated(model, tokens, [Ablation(hook, kind="mean")], reference=reference)
    with torch.no_grad():
        _, cache = model.run_with_cache(reference)
        mean = cache[hook].mean(0)  # [pos, d_model]
        expected = model.run_with_hooks(
            tokens, fwd_hooks=[(hook, lambda act, *, hook: mean.expand_as(act).clone())]
        )
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=1e-5)


def test_resample_from_a_single_reference_equals_mean_of_it(model, tokens) -> None:
    one = tokens[:1]
    site = dict(hook=hooks.attn_z(0), head=1, positions=(3, 7))
    a = run_ablated(model, tokens, [Ablation(**site, kind="resample")], reference=one)
    b = run_ablated(model, tokens, [Ablation(**site, kind="mean")], reference=one)
    torch.testing.assert_close(a, b)


def test_resample_gives_each_input_one_reference_example(model, tokens) -> None:
    reference = torch.randint(0, 12, (4, 18), generator=torch.Generator().manual_seed(2))
    site = dict(hook=hooks.attn_z(0), head=0)
    singles = [
        run_ablated(model, tokens, [Ablation(**site, kind="mean")], reference=reference[j : j + 1])
        for j in range(4)
    ]
    picks = []
    for seed in (0, 1):
        out = run_ablated(
            model, tokens, [Ablation(**site, kind="resample")], reference=reference, seed=seed
        )
        # float32 logits of order 1 by two code paths (a 4-row reference batch against a 1-row
        # one): equal up to a few ulps, so 1e-5; another reference's logits differ by > 0.1
        matches = [
            [j for j in range(4) if torch.allclose(out[i], singles[j][i], atol=1e-5, rtol=1e-5)]
            for i in range(tokens.shape[0])
        ]
        assert all(m for m in matches), "every input must get some reference example's activation"
        picks.append([m[0] for m in matches])
    assert picks[0] != picks[1], "the seed chooses which reference each input gets"


def test_position_ablation_is_causal(model, tokens) -> None:
    clean = model(tokens).detach()
    ablated = run_ablated(model, tokens, [Ablation(hooks.resid_pre(0), positions=(9,), kind="zero")])
    torch.testing.assert_close(ablated[:, :9], clean[:, :9])
    assert not torch.allclose(ablated[:, 9], clean[:, 9])


def test_model_is_left_as_found(model, tokens) -> None:
    before = model(tokens).detach()
    run_ablated(model, tokens, [Ablation(hooks.attn_z(0), head=0, kind="resample")], seed=5)
    torch.testing.assert_close(model(tokens).detach(), before)


@pytest.mark.parametrize(
    ("ablation", "error", "fragment"),
    [
        (Ablation("blocks.0.attn.hook_zz"), UnknownNameError, "did you mean"),
        (Ablation("blocks.0.attn.hook_z", head=7), ConfigError, "valid: 0–"),
        (Ablation("blocks.0.hook_resid_post", positions=(18,)), ConfigError, "valid: 0–17"),
        (Ablation("blocks.0.hook_resid_post", head=0), ConfigError, "no head axis"),
    ],
)
def test_bad_sites_are_clear_errors(model, tokens, ablation, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        run_ablated(model, tokens, [ablation])


def test_mean_attention_matches_manual_average(model, tokens) -> None:
    patterns = mean_attention(model, tokens, batch_size=5)
    assert patterns.shape == (model.cfg.n_layers, model.cfg.n_heads, 18, 18)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(patterns.shape[:-1]))
    _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(patterns[layer], cache[hooks.attn_pattern(layer)].mean(0))
