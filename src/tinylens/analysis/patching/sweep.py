"""The patch sweep: patch every layer (× position) (× head) of one site, batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args, no_type_check

import torch
from jaxtyping import Float, Int

from tinylens import hooks
from tinylens.analysis.metrics import Metric
from tinylens.analysis.patching.fast import fast_engine, fast_layer
from tinylens.analysis.patching.hooked import run_layer, slots
from tinylens.analysis.patching.sites import (
    HEAD_SITES,
    SITE_HOOKS,
    Direction,
    Method,
    Site,
    Source,
)
from tinylens.analysis.protocol import HookedModel, check_token_ids
from tinylens.errors import ConfigError, TokenError
from tinylens.hooks import check_hook_names


@dataclass(frozen=True)
class PatchingResult:
    """Metric of every patch of a sweep, raw and normalised.

    Layout follows TransformerLens's patching functions: ``[layer]`` or ``[layer, pos]`` for
    residual, attention and MLP sites; ``[layer, head]`` or ``[layer, pos, head]`` for heads.
    """

    raw: Float[torch.Tensor, "layer ..."]
    """The metric with each patch applied (NaN in layers not swept), in the model's dtype."""
    clean: float
    """The metric of the unpatched clean run."""
    corrupt: float
    """The metric of the unpatched corrupted run."""
    site: str
    """The patched site (see :data:`~tinylens.analysis.patching.sites.Site`)."""
    direction: str
    """``noise`` or ``denoise``."""
    source: str
    """``corrupt``, ``mean`` or ``zero``."""

    @property
    def normalised(self) -> Float[torch.Tensor, "layer ..."]:
        """``(raw − corrupt) / (clean − corrupt)``: 1 = the clean behaviour, 0 = the corrupted one."""
        return (self.raw - self.corrupt) / (self.clean - self.corrupt)


# Checks its own inputs with our errors (shapes, vocabulary, site names); the test suite's runtime
# type-checker would pre-empt those with its own, so it skips this function.
@no_type_check
def patch_sweep(
    model: HookedModel,
    clean: Int[torch.Tensor, "batch pos"],
    corrupt: Int[torch.Tensor, "batch pos"],
    metric: Metric,
    *,
    site: Site = "resid_pre",
    per_position: bool = True,
    direction: Direction = "noise",
    source: Source = "corrupt",
    layers: list[int] | None = None,
    method: Method = "auto",
) -> PatchingResult:
    """Patch every layer (× position) (× head) of one site, one patch at a time, batched.

    Args:
        model: any TransformerLens model.
        clean: prompts whose behaviour is explained.
        corrupt: prompts of the same shape that differ in the fact under study.
        metric: logits of a batch → a number (see :func:`~tinylens.analysis.metrics.logit_diff`).
        site: which activation to patch; the ``head*`` sites patch one head's output (``hook_z``),
            query, key or value.
        per_position: patch each position separately, or all positions at once.
        direction: ``noise`` (clean run, patched from ``source``) or ``denoise`` (corrupted run,
            patched with the clean activation).
        source: what noising writes in: the corrupted run's activation, its mean over the corrupted
            prompts (per position), or zeros. Denoising always writes the clean activation.
        layers: the layers to sweep (default all); the result still has a row per model layer,
            NaN where not swept.
        method: ``fast`` recomputes only what each patch reaches (needs one of our metrics of the
            last position, a residual/attention/MLP/head-output site and a GPT-2-style model, see
            :mod:`~tinylens.analysis.patching.engine`); ``hooks`` runs the model with hooks,
            batched; ``auto`` takes ``fast`` where it applies.

    Returns:
        The metric of every patch, beside the clean and corrupted runs' metrics.

    Raises:
        ConfigError: an unknown site, direction, source, method or layer; clean and corrupted
            prompts with the same metric; ``method='fast'`` where the fast path does not apply.
        TokenError: prompts that are not token ids of the model, or differ in shape.
        UnknownNameError: the model has no hook for the site (e.g. ``mlp_out`` of an
            attention-only model).
    """
    _check_args(model, clean, corrupt, site, direction, source)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    layers = list(range(n_layers)) if layers is None else sorted(set(layers))
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"layer {layer} is out of range: the model has {n_layers} layers")
    hook_of = SITE_HOOKS[site]
    names = {hook_of(layer) for layer in layers} | {hooks.resid_pre(layer) for layer in layers}
    if site == "resid_mid":  # written through the attention output, see below
        names |= {hooks.attn_out(layer) for layer in layers}
    check_hook_names(model, sorted(names))
    with torch.inference_mode():
        clean_logits, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n in names)
        corrupt_logits, corrupt_cache = model.run_with_cache(corrupt, names_filter=lambda n: n in names)
    m_clean, m_corrupt = float(metric(clean_logits)), float(metric(corrupt_logits))
    if m_clean == m_corrupt:
        raise ConfigError(
            f"the clean and corrupted prompts give the same metric ({m_clean:.4g}), so no effect "
            "can be normalised; choose corrupted prompts that change the answer"
        )
    base_cache = corrupt_cache if direction == "denoise" else clean_cache
    n_pos = clean.shape[1]
    heads = site in HEAD_SITES
    shape = [n_layers] + ([n_pos] if per_position else []) + ([n_heads] if heads else [])
    raw = torch.full(shape, float("nan"), dtype=clean_logits.dtype)
    engine = fast_engine(model, metric, site, n_pos, method)
    if engine is not None:
        with torch.inference_mode():
            base = engine.forward(corrupt if direction == "denoise" else clean)
    for layer in layers:
        hook = hook_of(layer)
        if direction == "denoise":
            values = clean_cache[hook]
        elif source == "corrupt":
            values = corrupt_cache[hook]
        elif source == "mean":
            values = corrupt_cache[hook].mean(0, keepdim=True).expand_as(clean_cache[hook])
        else:
            values = torch.zeros_like(clean_cache[hook])
        if site == "resid_mid" and engine is None:
            # A hook that returns a new hook_resid_mid tensor on a TransformerLens 4 bridge reaches
            # only the MLP's input; the residual stream passes on unpatched. Patching means the
            # residual itself (as HookedTransformer, and TransformerLens's in-place patch setters,
            # do), so the attention output is shifted for the residual to take the new value.
            hook = hooks.attn_out(layer)
            values = base_cache[hook] + values - base_cache[hooks.resid_mid(layer)]
        if engine is not None:
            with torch.inference_mode():
                result = fast_layer(
                    engine, base, site, layer, base_cache[hook], values, per_position, metric
                )
            raw[layer] = result.view(shape[1:])
            continue
        masks = slots(n_pos, n_heads if heads else None, per_position)
        raw[layer] = run_layer(
            model, base_cache[hooks.resid_pre(layer)], layer, hook, values, masks, metric
        ).view(shape[1:])
    return PatchingResult(
        raw=raw, clean=m_clean, corrupt=m_corrupt, site=site, direction=direction, source=source
    )


def _check_args(
    model: HookedModel,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    site: str,
    direction: str,
    source: str,
) -> None:
    if site not in SITE_HOOKS:
        raise ConfigError(f"unknown patching site {site!r}; valid sites: {', '.join(SITE_HOOKS)}")
    if direction not in get_args(Direction):
        raise ConfigError(f"direction {direction!r} is not one of {get_args(Direction)}")
    if source not in get_args(Source):
        raise ConfigError(f"source {source!r} is not one of {get_args(Source)}")
    if direction == "denoise" and source != "corrupt":
        raise ConfigError(
            "denoising writes the clean activation into the corrupted run; source "
            f"{source!r} applies to noising only (pass direction='noise')"
        )
    for name, tokens in (("clean", clean), ("corrupt", corrupt)):
        check_token_ids(tokens, int(model.cfg.d_vocab), f"{name} tokens")
    if clean.shape != corrupt.shape:
        raise TokenError(
            f"clean tokens {list(clean.shape)} and corrupted tokens {list(corrupt.shape)} must "
            "have the same shape: patching swaps activations position by position"
        )
