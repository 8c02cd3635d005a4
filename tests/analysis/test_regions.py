"""Stable-region interpolation: the fast sweep against one hooked pass per α, and bad input."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge.sources.native import boot as boot_native

from tinylens.analysis import (
    interpolate,
    interpolation_path,
    plane_slice,
    random_directions,
    sign_flips,
)
from tinylens.analysis.forward import WeightForward
from tinylens.analysis.regions import runners
from tinylens.errors import ConfigError, UnknownNameError
from tinylens.model import load_pretrained

from ..helpers import native_cfg, save_tiny_gpt2

D_VOCAB = 23
SHAPES = {
    "ln": {},
    "rms-rotary-gated": {
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "gated_mlp": True,
        "act_fn": "silu",
    },
    "3-layers-attn-only": {"n_layers": 3, "attn_only": True},
}
CURVES = ("l2", "kl", "logit_diff", "normalised", "sharpness")


def _model(**overrides: object):
    model = boot_native(native_cfg(D_VOCAB, **overrides), dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=g).to(param.dtype))
    return model


def _prompts(n: int = 5, seq: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, D_VOCAB, (n, seq), generator=g),
        torch.randint(0, D_VOCAB, (n, seq), generator=g),
    )


def _assert_same(ours, ref) -> None:
    torch.testing.assert_close(ours.kept, ref.kept)
    for name in CURVES:
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode", ["linear", "arc", "slerp"])
def test_fast_and_batched_equal_one_hooked_pass_per_alpha(shape, mode) -> None:
    model = _model(**SHAPES[shape])
    a, b = _prompts()
    ref = interpolate(model, a, b, mode=mode, method="reference")
    assert ref.l2.shape == (5, 11) and ref.alphas.shape == (11,)
    for method in ("fast", "batched"):
        _assert_same(interpolate(model, a, b, mode=mode, method=method), ref)


@pytest.mark.parametrize(
    ("write", "read", "position"),
    [
        ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", 3),
        ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre", -1),
        ("blocks.0.attn.hook_z", None, -2),
        ("blocks.0.hook_mlp_out", "blocks.1.mlp.hook_pre", 2),
    ],
)
def test_other_sites_and_positions_equal_the_reference(write, read, position) -> None:
    model = _model()
    a, b = _prompts(seed=1)
    kw = {"write_hook": write, "read_hook": read, "position": position, "steps": 5}
    ref = interpolate(model, a, b, method="reference", **kw)
    _assert_same(interpolate(model, a, b, **kw), ref)


def test_tiny_gpt2_from_transformers_equals_the_reference(tmp_path) -> None:
    save_tiny_gpt2(tmp_path, ["a", "b", "c", "d", "e", "f"], seed=1)
    model = load_pretrained(tmp_path)
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randint(0, 8, (4, 6), generator=g) for _ in range(2))
    for mode in ("linear", "arc"):
        ref = interpolate(model, a, b, mode=mode, steps=6, method="reference")
        _assert_same(interpolate(model, a, b, mode=mode, steps=6), ref)


def test_curve_endpoints_and_sharpness() -> None:
    model = _model()
    a, b = _prompts()
    c = interpolate(model, a, b, steps=4)
    torch.testing.assert_close(c.l2[:, 0], torch.zeros(5, dtype=c.l2.dtype))
    torch.testing.assert_close(c.kl[:, 0], torch.zeros(5, dtype=c.kl.dtype))
    assert c.dropped == 0 and c.kept.all()
    torch.testing.assert_close(c.normalised[:, -1], torch.ones(5, dtype=c.l2.dtype))
    assert (c.sharpness >= 1 - 1e-9).all()  # max Δ of a curve from 0 to 1 is at least 1/(steps − 1)
    same = interpolate(model, a, a, steps=4)  # d(1) = 0 for every pair: all dropped
    assert same.dropped == 5 and same.normalised.shape == (0, 4) and same.sharpness.shape == (0,)


def test_paths_end_where_they_should() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    mean = torch.randn(6, generator=g)
    alphas = torch.linspace(0, 1, 7)
    for mode in ("linear", "slerp"):
        path = interpolation_path(a, b, alphas, mode, mean)
        torch.testing.assert_close(path[:, 0], a)
        torch.testing.assert_close(path[:, -1], b)
    arc = interpolation_path(a, b, alphas, "arc", mean)
    radius = (a - mean).norm(dim=-1)[:, None].expand(-1, 7)
    torch.testing.assert_close((arc - mean).norm(dim=-1), radius)
    torch.testing.assert_close(arc[:, 0], a)


def test_model_mode_and_weights_are_unchanged() -> None:
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = _prompts()
    interpolate(model, a, b, steps=3)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("shape", ["ln", "rms-rotary-gated"])
def test_sign_flips_count_what_one_hooked_pass_shows(shape) -> None:
    model = _model(**SHAPES[shape])
    a, b = _prompts()
    flips = sign_flips(model, a, b, steps=3)
    assert flips.shape == (5, 3) and (flips[:, 0] == 0).all()
    with torch.no_grad():
        _, cache_a = model.run_with_cache(a)
        _, cache_b = model.run_with_cache(b)
        got = {}

        def write(act, *, hook):
            out = act.clone()
            out[:, -1] = cache_b["blocks.0.hook_resid_post"][:, -1]
            return out

        def read(act, *, hook):
            got["pre"] = act[:, -1]

        model.run_with_hooks(
            a, fwd_hooks=[("blocks.0.hook_resid_post", write), ("blocks.1.mlp.hook_pre", read)]
        )
    clean = cache_a["blocks.1.mlp.hook_pre"][:, -1] > 0
    assert torch.equal(flips[:, -1], ((got["pre"] > 0) != clean).sum(-1))
    assert flips[:, -1].sum() > 0


def test_targets_are_the_same_as_the_prompts_they_come_from() -> None:
    model = _model()
    a, b = _prompts()
    with torch.no_grad():
        _, cache = model.run_with_cache(b)
    targets = cache["blocks.0.hook_resid_post"][:, -1]
    by_prompt = interpolate(model, a, b, mode="arc")
    by_target = interpolate(model, a, targets=targets, mode="arc")
    for name in ("l2", "kl", "normalised", "sharpness"):
        torch.testing.assert_close(getattr(by_target, name), getattr(by_prompt, name))


def test_random_directions_follow_the_activations_covariance() -> None:
    model = _model()
    prompts = torch.randint(0, D_VOCAB, (40, 6), generator=torch.Generator().manual_seed(3))
    dirs = random_directions(model, prompts, 20_000, seed=1)
    assert dirs.shape == (20_000, 24) and dirs.dtype == torch.float64
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts)
    acts = cache["blocks.0.hook_resid_post"][:, -1]
    expected = torch.cov(acts.T)
    assert float((torch.cov(dirs.T) - expected).abs().max()) < 0.1 * float(expected.abs().max())
    three = random_directions(model, prompts, 3, seed=1)
    assert torch.equal(three, random_directions(model, prompts, 3, seed=1))
    assert not torch.equal(three, random_directions(model, prompts, 3, seed=2))
    a = prompts[:4]
    curves = interpolate(model, a, targets=acts[:4] + dirs[:4])
    assert curves.l2.shape == (4, 11)


@pytest.mark.parametrize("method", ["fast", "batched"])
def test_pairs_in_chunks_give_the_curves_of_one_pass(method) -> None:
    model = _model()
    a, b = _prompts(n=7)
    whole = interpolate(model, a, b, mode="arc", method=method, steps=5)
    _assert_same(interpolate(model, a, b, mode="arc", method=method, steps=5, batch_size=2), whole)
    torch.testing.assert_close(
        sign_flips(model, a, b, steps=3, batch_size=3), sign_flips(model, a, b, steps=3)
    )
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        interpolate(model, a, b, batch_size=0)


@pytest.mark.parametrize("shape", ["ln", "rms-rotary-gated"])
def test_plane_slice_agrees_with_the_reference_and_with_interpolate(shape) -> None:
    model = _model(**SHAPES[shape])
    a, b = _prompts(n=3, seed=4)
    three = torch.stack([a[0], b[0], a[1]])
    ref = plane_slice(model, three, steps=7, method="reference")
    assert ref.distances.shape == (3, 7, 7) and ref.alphas.shape == (7,)
    for method in ("fast", "batched"):
        got = plane_slice(model, three, steps=7, method=method)
        torch.testing.assert_close(got.distances, ref.distances, atol=1e-5, rtol=1e-5)
    # the grid is −0.25 … 1.25 in steps of 0.25: (α, β) = (0, 0) is A itself, (1, 0) is B's point.
    # A patched with its own activation reads what it read clean, up to the rounding of a float64
    # forward run in another batch shape: a relative error of a few hundred ε (2.2e-16) per layer.
    # (cdist's ‖x‖² + ‖y‖² − 2x·y form gave √(ε‖x‖²) ≈ 4e-8 here, larger the faster the kernel.)
    scale = float(ref.distances[1, 1, 1])  # ‖read(A) − read(B)‖, the slice's own scale
    assert float(ref.distances[0, 1, 1]) <= 1e-12 * scale
    line = interpolate(model, three[:1], three[1:2], steps=5)  # α = 0, 0.25, …, 1
    torch.testing.assert_close(ref.distances[0, 1, 1:6], line.l2[0])
    assert torch.equal(ref.corners[:2], torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=ref.corners.dtype))
    rgb = ref.rgb()
    assert rgb.shape == (7, 7, 3) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    assert float(rgb[1, 1, 0]) >= 1 - 1e-12  # A's own point is pure A, up to that rounding


def test_plane_slice_refuses_what_spans_no_plane() -> None:
    model = _model()
    a, b = _prompts(n=2)
    with pytest.raises(ConfigError, match="3 prompts"):
        plane_slice(model, a)
    with pytest.raises(ConfigError, match="span no plane"):
        plane_slice(model, torch.stack([a[0], a[0], b[0]]))
    with pytest.raises(ConfigError, match="low < high"):
        plane_slice(model, torch.stack([a[0], a[1], b[0]]), low=1.0, high=0.0)
    with pytest.raises(ConfigError, match="steps must be"):
        plane_slice(model, torch.stack([a[0], a[1], b[0]]), steps=1)


@pytest.fixture(scope="module")
def small():
    return _model(), *_prompts(n=2, seq=4)


def test_write_site_after_read_site_is_refused(small) -> None:
    model, a, b = small
    with pytest.raises(ConfigError, match="runs after the read site"):
        interpolate(
            model, a, b, write_hook="blocks.1.hook_resid_post", read_hook="blocks.0.hook_resid_post"
        )


def test_unknown_hook_is_named_with_suggestions(small) -> None:
    model, a, b = small
    with pytest.raises(UnknownNameError, match="did you mean"):
        interpolate(model, a, b, write_hook="blocks.0.hook_resid_pst")


def test_prompts_of_different_shapes_are_refused(small) -> None:
    model, a, b = small
    with pytest.raises(ConfigError, match="same shape"):
        interpolate(model, a, b[:, :3])


def test_fewer_than_two_steps_are_refused(small) -> None:
    model, a, b = small
    with pytest.raises(ConfigError, match="steps must be"):
        interpolate(model, a, b, steps=1)


def test_neither_or_both_ends_are_refused(small) -> None:
    model, a, b = small
    with pytest.raises(ConfigError, match="exactly one of"):
        interpolate(model, a)
    with pytest.raises(ConfigError, match="exactly one of"):
        interpolate(model, a, b, targets=torch.zeros(2, 24, dtype=torch.float64))


def test_unknown_mode_is_refused(small) -> None:
    model, a, b = small
    with pytest.raises(UnknownNameError, match="valid choices: linear, arc, slerp"):
        interpolate(model, a, b, mode="spline")


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize(
    ("write", "read", "position"),
    [
        ("blocks.0.hook_resid_post", None, 0),  # no earlier positions to attend to
        ("blocks.0.hook_resid_post", None, 3),  # later positions exist but cannot be read
        ("blocks.0.hook_resid_pre", None, -2),  # the embedding itself
        ("blocks.1.hook_resid_post", None, -1),  # after the last block: only the final norm left
        ("blocks.1.hook_resid_post", "blocks.1.hook_resid_post", 4),  # read where written
        ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", 5),
    ],
)
def test_fast_path_equals_the_reference_at_every_site_and_position(
    shape, write, read, position, monkeypatch
) -> None:
    model = _model(**SHAPES[shape])
    a, b = _prompts(seed=2)
    kw = {"write_hook": write, "read_hook": read, "position": position, "steps": 5, "mode": "arc"}
    ref = interpolate(model, a, b, method="reference", **kw)
    # the fast path must not fall back to the batched hooked pass for residual sites
    monkeypatch.setattr(runners, "run_batched", _no_fallback)
    _assert_same(interpolate(model, a, b, **kw), ref)
    with torch.no_grad():
        _, cache = model.run_with_cache(a)
    targets = cache[write][:, position].flip(0)  # another prompt's activation as the end point
    ref = interpolate(model, a, targets=targets, method="reference", **kw)
    _assert_same(interpolate(model, a, targets=targets, **kw), ref)


def _no_fallback(*args: object) -> None:
    raise AssertionError("the fast path fell back to the batched hooked pass")


def test_fast_path_probes_each_model_once(monkeypatch) -> None:
    model = _model()
    a, b = _prompts(n=2, seq=4)
    interpolate(model, a, b, steps=3)  # probed here (or by an earlier test)
    calls: list[WeightForward] = []

    def probe(self: WeightForward) -> None:
        calls.append(self)

    monkeypatch.setattr(WeightForward, "_check_equals_model", probe)
    interpolate(model, a, b, steps=3)
    assert calls == []
    interpolate(_model(), a, b, steps=3)  # a new model is probed
    assert len(calls) == 1
