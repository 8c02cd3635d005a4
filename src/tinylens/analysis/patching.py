"""Activation patching: swap one activation between two runs and measure what the output keeps.

Background:
    Two prompts that differ in one fact (the clean one, whose answer we explain, and a corrupted
    one) give two runs. *Noising* runs the clean prompt and overwrites one activation (a layer's
    residual stream, an attention or MLP output, a head, at one position or all) with its value from
    a source: the corrupted run, the mean over the corrupted prompts, or zeros. A component whose
    patch destroys the answer is necessary. *Denoising* runs the corrupted prompt and writes in the
    clean activation; a component that restores the answer is sufficient. Effects are reported raw
    and normalised so that 1 is the clean run's metric and 0 the corrupted run's.

Speed:
    TransformerLens's ``patching`` module runs one forward pass per patch. Here every patch of a
    sweep is a slice of one big batch (``variants × prompts`` rows, chunked to bound memory), and a
    patch at layer l starts from the cached residual stream of layer l (``start_at_layer``) instead
    of recomputing the layers below it, which no patch at layer l can change. A full
    head × position sweep then costs a handful of forward passes.

Usage:
    result = patch_sweep(model, clean, corrupt, logit_diff(answer, contrast), site="head")
    result.normalised  # [layer, pos, head], 1 = clean behaviour kept, 0 = corrupted

References:
    Meng et al. 2022 (causal tracing); Wang et al. 2022 (IOI); Zhang & Nanda 2024, "Towards best
    practices of activation patching"; ``transformer_lens.patching`` (the one-patch-per-forward
    reference our tests compare against).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args, no_type_check

import torch
from jaxtyping import Bool, Float, Int

from tinylens import hooks
from tinylens.analysis.protocol import HookedModel
from tinylens.errors import ConfigError, TokenError
from tinylens.hooks import check_hook_names

Site = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head", "head_q", "head_k", "head_v"
]
Direction = Literal["noise", "denoise"]
Source = Literal["corrupt", "mean", "zero"]
Metric = Callable[[Float[torch.Tensor, "batch pos d_vocab"]], torch.Tensor]
"""Logits of a batch of prompts → one number (a 0-d tensor or a float), e.g. the mean logit diff."""

SITE_HOOKS: dict[str, Callable[[int], str]] = {
    "resid_pre": hooks.resid_pre,
    "resid_mid": hooks.resid_mid,
    "resid_post": hooks.resid_post,
    "attn_out": hooks.attn_out,
    "mlp_out": hooks.mlp_out,
    "head": hooks.attn_z,
    "head_q": hooks.attn_q,
    "head_k": hooks.attn_k,
    "head_v": hooks.attn_v,
}
HEAD_SITES = ("head", "head_q", "head_k", "head_v")

# Rows × positions × width of the biggest activation a chunk may hold (~256 MB of fp32): bounds the
# memory of a batched sweep whatever the model and vocabulary.
MAX_CHUNK_ELEMENTS = 64 * 2**20


@dataclass(frozen=True)
class PatchingResult:
    """Metric of every patch of a sweep, raw and normalised.

    Layout follows TransformerLens's patching functions: ``[layer]`` or ``[layer, pos]`` for
    residual, attention and MLP sites; ``[layer, head]`` or ``[layer, pos, head]`` for heads.
    """

    raw: torch.Tensor
    """The metric with each patch applied."""
    clean: float
    """The metric of the unpatched clean run."""
    corrupt: float
    """The metric of the unpatched corrupted run."""
    site: str
    direction: str
    source: str

    @property
    def normalised(self) -> torch.Tensor:
        """``(raw − corrupt) / (clean − corrupt)``: 1 = the clean behaviour, 0 = the corrupted one."""
        return (self.raw - self.corrupt) / (self.clean - self.corrupt)


def logit_diff(
    answer: Int[torch.Tensor, " batch"], contrast: Int[torch.Tensor, " batch"], position: int = -1
) -> Metric:
    """Mean over prompts of logit(answer) − logit(contrast) at ``position``."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        final = logits[:, position]
        rows = torch.arange(final.shape[0])
        return (final[rows, answer] - final[rows, contrast]).mean()

    return metric


def answer_probability(answer: Int[torch.Tensor, " batch"], position: int = -1) -> Metric:
    """Mean over prompts of the probability of ``answer`` at ``position``."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        probs = logits[:, position].float().softmax(-1)
        return probs[torch.arange(probs.shape[0]), answer].mean()

    return metric


def kl_divergence(reference: Float[torch.Tensor, "batch pos d_vocab"], position: int = -1) -> Metric:
    """Mean over prompts of KL(reference ‖ patched) at ``position``, in nats (0 = the reference).

    With the clean run's logits as ``reference``, normalising puts the clean run at 1 (KL 0) and the
    corrupted run at 0, like the other metrics.
    """
    ref = reference[:, position].float().log_softmax(-1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        log_p = logits[:, position].float().log_softmax(-1)
        return (ref.exp() * (ref - log_p)).sum(-1).mean()

    return metric


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
) -> PatchingResult:
    """Patch every layer (× position) (× head) of one site, one patch at a time, batched.

    Args:
        model: any TransformerLens model.
        clean: prompts whose behaviour is explained.
        corrupt: prompts of the same shape that differ in the fact under study.
        metric: logits of a batch → a number (see :func:`logit_diff`).
        site: which activation to patch; the ``head*`` sites patch one head's output (``hook_z``),
            query, key or value.
        per_position: patch each position separately, or all positions at once.
        direction: ``noise`` (clean run, patched from ``source``) or ``denoise`` (corrupted run,
            patched with the clean activation).
        source: what noising writes in: the corrupted run's activation, its mean over the corrupted
            prompts (per position), or zeros. Denoising always writes the clean activation.
        layers: the layers to sweep (default all); the result still has a row per model layer,
            NaN where not swept.
    """
    _check_args(model, clean, corrupt, site, direction, source)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    layers = list(range(n_layers)) if layers is None else sorted(set(layers))
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"layer {layer} is out of range: the model has {n_layers} layers")
    hook_of = SITE_HOOKS[site]
    names = {hook_of(layer) for layer in layers} | {hooks.resid_pre(layer) for layer in layers}
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
    raw = torch.full(shape, float("nan"))
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
        slots = _slots(n_pos, n_heads if heads else None, per_position)
        raw[layer] = _run_layer(
            model, base_cache[hooks.resid_pre(layer)], layer, hook, values, slots, metric
        ).view(shape[1:])
    return PatchingResult(
        raw=raw, clean=m_clean, corrupt=m_corrupt, site=site, direction=direction, source=source
    )


def _slots(
    n_pos: int, n_heads: int | None, per_position: bool
) -> Bool[torch.Tensor, "variant pos head"]:
    """One boolean mask over (position, head) per patch variant, in the result's row-major order."""
    n_h = n_heads or 1
    if per_position:
        eye = torch.eye(n_pos * n_h, dtype=torch.bool)
        return eye.view(n_pos * n_h, n_pos, n_h)
    masks = torch.zeros(n_h, n_pos, n_h, dtype=torch.bool)
    masks[torch.arange(n_h), :, torch.arange(n_h)] = True
    return masks


def _run_layer(
    model: HookedModel,
    resid: Float[torch.Tensor, "batch pos d_model"],
    layer: int,
    hook: str,
    values: torch.Tensor,
    slots: torch.Tensor,
    metric: Metric,
) -> Float[torch.Tensor, " variant"]:
    """Metric of every variant of patches at ``layer``, in chunks of one forward pass each."""
    batch, n_pos, d_model = resid.shape
    width = max(d_model, int(model.cfg.d_vocab), int(getattr(model.cfg, "d_mlp", 0) or 0))
    chunk = max(1, MAX_CHUNK_ELEMENTS // (batch * n_pos * width))
    has_head = values.ndim == 4
    out = []
    for start in range(0, len(slots), chunk):
        masks = slots[start : start + chunk]  # [v, pos, head]
        n_var = len(masks)
        # [v, 1, pos, head, 1] for head sites, [v, 1, pos, 1] otherwise: broadcasts over batch, width.
        where = masks[:, None, :, :, None] if has_head else masks[:, None, :, 0, None]

        def patch(act: torch.Tensor, *, hook: object, where=where, n_var=n_var) -> torch.Tensor:
            act = act.view(n_var, batch, *act.shape[1:])
            return torch.where(where, values.unsqueeze(0), act).flatten(0, 1)

        rows = resid.repeat(n_var, 1, 1)
        with torch.inference_mode():
            logits = model.run_with_hooks(rows, start_at_layer=layer, fwd_hooks=[(hook, patch)])
        logits = logits.view(n_var, batch, *logits.shape[1:])
        out.extend(float(metric(logits[v])) for v in range(n_var))
    return torch.tensor(out)


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
    d_vocab = int(model.cfg.d_vocab)
    for name, tokens in (("clean", clean), ("corrupt", corrupt)):
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
            raise TokenError(f"{name} tokens must be a 2-d integer tensor [batch, pos]")
        if tokens.numel() and not (int(tokens.min()) >= 0 and int(tokens.max()) < d_vocab):
            raise TokenError(
                f"{name} tokens hold ids outside the vocabulary 0–{d_vocab - 1} "
                f"(min {int(tokens.min())}, max {int(tokens.max())})"
            )
    if clean.shape != corrupt.shape:
        raise TokenError(
            f"clean tokens {list(clean.shape)} and corrupted tokens {list(corrupt.shape)} must "
            "have the same shape: patching swaps activations position by position"
        )
