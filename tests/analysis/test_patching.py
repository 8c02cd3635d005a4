"""The batched patching engine against TransformerLens's one-patch-per-forward functions."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tl_patching

from tinylens import hooks
from tinylens.analysis.ablation import Ablation, run_ablated
from tinylens.analysis.patching import (
    FAST_SITES,
    SITE_HOOKS,
    answer_probability,
    kl_divergence,
    logit_diff,
    patch_heads,
    patch_sweep,
)
from tinylens.errors import ConfigError, TokenError, UnknownNameError
from tinylens.model import ModelConfig, build_model

SHAPES = [
    {"n_layers": 2, "n_heads": 4, "d_model": 32, "d_head": 8, "d_mlp": 64},
    {"n_layers": 3, "n_heads": 2, "d_model": 24, "d_head": 12, "d_mlp": 0},
    {"n_layers": 1, "n_heads": 3, "d_model": 16, "d_head": 4, "d_mlp": 32, "act_fn": "gelu"},
    {
        "n_layers": 4,
        "n_heads": 2,
        "d_model": 16,
        "d_head": 8,
        "d_mlp": 32,
        "positional_embedding": "rotary",
        "normalization_type": "RMS",
    },
]
D_VOCAB = 20

# (site, per_position) → TransformerLens's function for it.
TL_FUNCTIONS = {
    ("resid_pre", True): tl_patching.get_act_patch_resid_pre,
    # run without gradients, TransformerLens's patch setters edit the activation in place, so its
    # resid_mid patch reaches the residual stream, not only the MLP's input: ours (see the README)
    ("resid_mid", True): tl_patching.get_act_patch_resid_mid,
    ("attn_out", True): tl_patching.get_act_patch_attn_out,
    ("mlp_out", True): tl_patching.get_act_patch_mlp_out,
    ("head", True): tl_patching.get_act_patch_attn_head_out_by_pos,
    ("head", False): tl_patching.get_act_patch_attn_head_out_all_pos,
    ("head_q", True): tl_patching.get_act_patch_attn_head_q_by_pos,
    ("head_k", False): tl_patching.get_act_patch_attn_head_k_all_pos,
    ("head_v", True): tl_patching.get_act_patch_attn_head_v_by_pos,
}


@pytest.fixture(scope="module", params=range(len(SHAPES)), ids=lambda i: f"shape{i}")
def model(request: pytest.FixtureRequest):
    cfg = ModelConfig(**SHAPES[request.param], d_vocab=D_VOCAB, n_ctx=16)  # type: ignore[arg-type]
    model = build_model(cfg, seed=request.param).eval()
    g = torch.Generator().manual_seed(request.param)  # the same model whatever ran before
    with torch.no_grad():  # norms away from their initial 1 / 0, so that they are exercised
        for name, param in model.named_parameters():
            if "ln" in name:
                param.add_(0.3 * torch.randn(param.shape, generator=g, dtype=param.dtype))
    return model


@pytest.fixture(scope="module")
def prompts() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, D_VOCAB, (6, 9), generator=g)
    return {
        "clean": clean,
        "corrupt": torch.randint(0, D_VOCAB, (6, 9), generator=g),
        "answer": torch.randint(0, D_VOCAB, (6,), generator=g),
        "contrast": torch.randint(0, D_VOCAB, (6,), generator=g),
    }


@pytest.mark.parametrize(("site", "per_position"), list(TL_FUNCTIONS), ids=str)
@pytest.mark.parametrize("direction", ["noise", "denoise"])
@pytest.mark.parametrize("method", ["fast", "hooks"])
def test_sweep_equals_transformer_lens(model, prompts, site, per_position, direction, method) -> None:
    if method == "fast" and site not in FAST_SITES:
        pytest.skip("the fast path patches the residual stream's writers only")
    if site in ("mlp_out", "resid_mid") and model.cfg.attn_only:
        with pytest.raises(UnknownNameError, match="no hook named"):
            patch_sweep(model, prompts["clean"], prompts["corrupt"], lambda x: x.sum(), site=site)
        return
    metric = logit_diff(prompts["answer"], prompts["contrast"])
    clean, corrupt = prompts["clean"], prompts["corrupt"]
    ours = patch_sweep(
        model,
        clean,
        corrupt,
        metric,
        site=site,
        per_position=per_position,
        direction=direction,
        method=method,
    )
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    with torch.no_grad():
        _, source_cache = model.run_with_cache(source)
    with torch.no_grad():  # TransformerLens clones (not edits) activations that require grad
        reference = TL_FUNCTIONS[(site, per_position)](model, base, source_cache, metric)
    assert ours.raw.shape == reference.shape
    torch.testing.assert_close(ours.raw, reference.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("source", ["mean", "zero"])
@pytest.mark.parametrize("site", ["resid_pre", "head", "mlp_out"])
def test_mean_and_zero_sources_equal_one_patch_per_forward(model, prompts, site, source) -> None:
    if site == "mlp_out" and model.cfg.attn_only:
        pytest.skip("attention-only model")
    metric = answer_probability(prompts["answer"])
    clean, corrupt = prompts["clean"], prompts["corrupt"]
    ours = patch_sweep(model, clean, corrupt, metric, site=site, source=source)
    hooked = patch_sweep(model, clean, corrupt, metric, site=site, source=source, method="hooks")
    torch.testing.assert_close(ours.raw, hooked.raw, atol=1e-5, rtol=0)
    n_pos = clean.shape[1]
    heads = range(model.cfg.n_heads) if site == "head" else [None]
    for layer in range(model.cfg.n_layers):
        for pos in range(n_pos):
            for head in heads:
                ablation = Ablation(SITE_HOOKS[site](layer), head=head, positions=(pos,), kind=source)
                logits = run_ablated(model, clean, [ablation], reference=corrupt)
                got = ours.raw[layer, pos] if head is None else ours.raw[layer, pos, head]
                assert float(got) == pytest.approx(float(metric(logits)), abs=1e-5)


def test_denoising_the_whole_first_residual_restores_the_clean_run(model, prompts) -> None:
    clean, corrupt = prompts["clean"], prompts["corrupt"]
    with torch.no_grad():
        clean_logits = model(clean)
    for metric in (
        logit_diff(prompts["answer"], prompts["contrast"]),
        kl_divergence(clean_logits),
    ):
        result = patch_sweep(
            model, clean, corrupt, metric, site="resid_pre", per_position=False, direction="denoise"
        )
        assert float(result.normalised[0]) == pytest.approx(1.0, abs=1e-4)
        # noising it instead gives the corrupted run: normalised 0
        noised = patch_sweep(model, clean, corrupt, metric, site="resid_pre", per_position=False)
        assert float(noised.normalised[0]) == pytest.approx(0.0, abs=1e-4)


def test_a_patch_after_the_last_position_read_changes_nothing(model, prompts) -> None:
    """Causal attention: patching the residual at a position other than the last, in the last
    layer's output, cannot reach the final position's logits."""
    metric = logit_diff(prompts["answer"], prompts["contrast"])
    result = patch_sweep(
        model, prompts["clean"], prompts["corrupt"], metric, site="attn_out", layers=[0]
    )
    last = model.cfg.n_layers - 1
    if last > 0:
        assert torch.isnan(result.raw[last]).all()  # not swept
    if model.cfg.n_layers == 1:
        earlier = result.raw[0, :-1]
        torch.testing.assert_close(earlier, torch.full_like(earlier, result.clean), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["fast", "hooks"])
def test_resid_mid_patches_the_residual_stream_itself(model, prompts, method) -> None:
    """Patching the residual between attention and MLP changes what the MLP reads and what passes
    on (HookedTransformer's meaning, and TransformerLens's in-place ``get_act_patch_resid_mid``; a
    hook that returns a new tensor on the bridge would change the MLP's input only)."""
    if model.cfg.attn_only:
        pytest.skip("attention-only model")
    metric = logit_diff(prompts["answer"], prompts["contrast"])
    clean, corrupt = prompts["clean"], prompts["corrupt"]
    ours = patch_sweep(model, clean, corrupt, metric, site="resid_mid", method=method)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupt)
    for layer in range(model.cfg.n_layers):
        shift = corrupt_cache[hooks.resid_mid(layer)] - clean_cache[hooks.resid_mid(layer)]
        for pos in range(clean.shape[1]):

            def patch(attn_out, *, hook, pos=pos, shift=shift):
                attn_out = attn_out.clone()
                attn_out[:, pos] += shift[:, pos]
                return attn_out

            with torch.no_grad():
                logits = model.run_with_hooks(clean, fwd_hooks=[(hooks.attn_out(layer), patch)])
            assert float(ours.raw[layer, pos]) == pytest.approx(float(metric(logits)), abs=1e-5)


def test_transformer_lens_resid_mid_patch_reaches_the_residual_only_in_place(prompts) -> None:
    """What the README states: ``get_act_patch_resid_mid`` of TransformerLens 4.3 equals ours when
    run without gradients (its setter edits the activation in place, which the bridge's residual
    stream shares); with gradients on it patches a clone, which reaches only the MLP's input, as any
    hook returning a new ``hook_resid_mid`` tensor does."""
    cfg = ModelConfig(**SHAPES[0], d_vocab=D_VOCAB, n_ctx=16)  # type: ignore[arg-type]
    model = build_model(cfg, seed=0).eval()
    metric = logit_diff(prompts["answer"], prompts["contrast"])
    clean, corrupt = prompts["clean"], prompts["corrupt"]
    ours = patch_sweep(model, clean, corrupt, metric, site="resid_mid", method="hooks").raw
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupt)
        in_place = tl_patching.get_act_patch_resid_mid(model, clean, cache, metric)
    torch.testing.assert_close(ours, in_place.float(), atol=1e-5, rtol=0)
    cloned = tl_patching.get_act_patch_resid_mid(model, clean, cache, metric)
    mlp_input_only = torch.zeros_like(ours)
    for layer in range(model.cfg.n_layers):
        for pos in range(clean.shape[1]):

            def new_tensor(act, *, hook, layer=layer, pos=pos):
                act = act.clone()
                act[:, pos] = cache[hooks.resid_mid(layer)][:, pos]
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(clean, fwd_hooks=[(hooks.resid_mid(layer), new_tensor)])
            mlp_input_only[layer, pos] = metric(logits)
    torch.testing.assert_close(cloned.float(), mlp_input_only, atol=1e-5, rtol=0)
    assert not torch.allclose(ours, mlp_input_only, atol=1e-3)


@pytest.mark.parametrize("method", ["fast", "hooks"])
def test_resid_post_of_a_layer_is_resid_pre_of_the_next(model, prompts, method) -> None:
    metric = kl_divergence(model(prompts["clean"]).detach())
    clean, corrupt = prompts["clean"], prompts["corrupt"]
    post = patch_sweep(model, clean, corrupt, metric, site="resid_post", method=method)
    pre = patch_sweep(model, clean, corrupt, metric, site="resid_pre", method=method)
    torch.testing.assert_close(post.raw[:-1], pre.raw[1:], atol=1e-5, rtol=0)
    # the last layer's output feeds the unembedding only: just the final position matters
    assert torch.all(post.raw[-1, :-1].abs() < 1e-5)
    assert float(post.raw[-1, -1]) == pytest.approx(float(post.corrupt), abs=1e-4)


def test_any_callable_metric_takes_the_hook_path(model, prompts) -> None:
    """A metric of our own kind and the same metric as a plain function give the same sweep."""
    ours = logit_diff(prompts["answer"], prompts["contrast"])
    rows = torch.arange(len(prompts["answer"]))

    def plain(logits: torch.Tensor) -> torch.Tensor:
        final = logits[:, -1]
        return (final[rows, prompts["answer"]] - final[rows, prompts["contrast"]]).mean()

    clean, corrupt = prompts["clean"], prompts["corrupt"]
    fast = patch_sweep(model, clean, corrupt, ours, site="head", method="fast")
    hooked = patch_sweep(model, clean, corrupt, plain, site="head")
    torch.testing.assert_close(fast.raw, hooked.raw, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="fast patching path does not apply"):
        patch_sweep(model, clean, corrupt, plain, site="head", method="fast")
    with pytest.raises(ConfigError, match="fast patching path does not apply"):
        patch_sweep(model, clean, corrupt, ours, site="head_q", method="fast")


def test_bad_input_gets_clear_errors(model, prompts) -> None:
    metric = logit_diff(prompts["answer"], prompts["contrast"])
    clean, corrupt = prompts["clean"], prompts["corrupt"]
    with pytest.raises(TokenError, match="same shape"):
        patch_sweep(model, clean, corrupt[:, :-1], metric)
    with pytest.raises(TokenError, match="outside the vocabulary"):
        patch_sweep(model, clean, corrupt + D_VOCAB, metric)
    with pytest.raises(TokenError, match="2-d integer"):
        patch_sweep(model, clean.float(), corrupt, metric)
    with pytest.raises(ConfigError, match="unknown patching site"):
        patch_sweep(model, clean, corrupt, metric, site="resid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="noising only"):
        patch_sweep(model, clean, corrupt, metric, direction="denoise", source="mean")
    with pytest.raises(ConfigError, match="same metric"):
        patch_sweep(model, clean, clean, metric)
    with pytest.raises(ConfigError, match="out of range"):
        patch_sweep(model, clean, corrupt, metric, layers=[model.cfg.n_layers])


def test_hook_names_of_every_site_exist(model) -> None:
    for site, hook_of in SITE_HOOKS.items():
        if site in ("mlp_out", "resid_mid") and model.cfg.attn_only:
            continue
        assert hook_of(0) in model.hook_dict, site
    assert hooks.resid_pre(0) in model.hook_dict


def test_patching_heads_together_equals_the_sweep_one_at_a_time_and_the_attention_output(
    model, prompts
) -> None:
    clean, corrupt = prompts["clean"], prompts["corrupt"]
    metric = logit_diff(prompts["answer"], prompts["contrast"])
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    sweep = patch_sweep(model, clean, corrupt, metric, site="head", method="hooks")
    for layer in range(n_layers):
        for head in range(n_heads):
            got = patch_heads(model, clean, corrupt, [(layer, head)], 5, metric)
            assert abs(got - float(sweep.raw[layer, 5, head])) < 1e-4
    # every head of a layer at once is its whole attention output (b_O is the same in both runs)
    whole = patch_sweep(model, clean, corrupt, metric, site="attn_out", method="hooks")
    everything = [(n_layers - 1, h) for h in range(n_heads)]
    assert (
        abs(patch_heads(model, clean, corrupt, everything, 3, metric) - float(whole.raw[-1, 3])) < 1e-4
    )
    with pytest.raises(ConfigError, match="out of range"):
        patch_heads(model, clean, corrupt, [(n_layers, 0)], 3, metric)
    with pytest.raises(ConfigError, match="at least one"):
        patch_heads(model, clean, corrupt, [], 3, metric)
    with pytest.raises(ConfigError, match="outside the prompts"):
        patch_heads(model, clean, corrupt, [(0, 0)], 9, metric)
    with pytest.raises(TokenError, match="differ in shape"):
        patch_heads(model, clean, corrupt[:, :5], [(0, 0)], 3, metric)
