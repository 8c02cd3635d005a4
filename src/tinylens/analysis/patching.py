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
from tinylens.analysis.fast_patching import BaseRun, LastPositionEngine
from tinylens.analysis.protocol import HookedModel, check_token_ids
from tinylens.errors import ConfigError, TokenError
from tinylens.hooks import check_hook_names

Site = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head", "head_q", "head_k", "head_v"
]
Direction = Literal["noise", "denoise"]
Source = Literal["corrupt", "mean", "zero"]
Method = Literal["auto", "fast", "hooks"]
Metric = Callable[[Float[torch.Tensor, "batch pos d_vocab"]], torch.Tensor]
"""Logits of a batch of prompts → one number (a 0-d tensor or a float), e.g. the mean logit diff.
Our own metrics (:class:`FinalTokenMetric`) also score prompt by prompt, which the fast path needs."""

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
FAST_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head")
"""Sites the fast path handles: those that change the residual stream at the patched positions."""

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


class FinalTokenMetric:
    """A metric of the logits at one position, computable prompt by prompt.

    Called on logits ``[batch, pos, d_vocab]`` it returns the mean over prompts (what
    TransformerLens's patching functions expect); :meth:`per_prompt` scores rows of logits at that
    position, so that a sweep can score thousands of patched rows at once.
    """

    position: int = -1

    def per_prompt(
        self, final: Float[torch.Tensor, "rows d_vocab"], prompt: Int[torch.Tensor, " rows"]
    ) -> Float[torch.Tensor, " rows"]:
        """The metric of each row; ``prompt[r]`` is the prompt row r was run on."""
        raise NotImplementedError

    def __call__(self, logits: Float[torch.Tensor, "batch pos d_vocab"]) -> torch.Tensor:
        final = logits[:, self.position]
        return self.per_prompt(final, torch.arange(final.shape[0])).mean()


class _LogitDiff(FinalTokenMetric):
    def __init__(self, answer: torch.Tensor, contrast: torch.Tensor, position: int) -> None:
        self.answer, self.contrast, self.position = answer, contrast, position

    def per_prompt(self, final: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(final.shape[0])
        return final[rows, self.answer[prompt]] - final[rows, self.contrast[prompt]]


class _AnswerProbability(FinalTokenMetric):
    def __init__(self, answer: torch.Tensor, position: int) -> None:
        self.answer, self.position = answer, position

    def per_prompt(self, final: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        probs = final.float().softmax(-1)
        return probs[torch.arange(final.shape[0]), self.answer[prompt]]


class _KLDivergence(FinalTokenMetric):
    def __init__(self, reference: torch.Tensor, position: int) -> None:
        self.log_ref, self.position = reference[:, position].float().log_softmax(-1), position

    def per_prompt(self, final: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        ref = self.log_ref[prompt]
        return (ref.exp() * (ref - final.float().log_softmax(-1))).sum(-1)


def logit_diff(
    answer: Int[torch.Tensor, " batch"], contrast: Int[torch.Tensor, " batch"], position: int = -1
) -> FinalTokenMetric:
    """Mean over prompts of logit(answer) − logit(contrast) at ``position``."""
    return _LogitDiff(answer, contrast, position)


def answer_probability(answer: Int[torch.Tensor, " batch"], position: int = -1) -> FinalTokenMetric:
    """Mean over prompts of the probability of ``answer`` at ``position``."""
    return _AnswerProbability(answer, position)


def kl_divergence(
    reference: Float[torch.Tensor, "batch pos d_vocab"], position: int = -1
) -> FinalTokenMetric:
    """Mean over prompts of KL(reference ‖ patched) at ``position``, in nats (0 = the reference).

    With the clean run's logits as ``reference``, normalising puts the clean run at 1 (KL 0) and the
    corrupted run at 0, like the other metrics.
    """
    return _KLDivergence(reference, position)


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
        method: ``fast`` recomputes only what each patch reaches (needs one of our metrics of the
            last position, a residual/attention/MLP/head-output site and a GPT-2-style model, see
            :mod:`~tinylens.analysis.fast_patching`); ``hooks`` runs the model with hooks, batched;
            ``auto`` takes ``fast`` where it applies.
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
    raw = torch.full(shape, float("nan"))
    engine = _fast_engine(model, metric, site, n_pos, method)
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
            # TransformerLens 4's bridge feeds a patched hook_resid_mid to the MLP only, while the
            # residual stream passes on unpatched; HookedTransformer patches both. We keep the
            # latter meaning: the attention output is shifted so the residual takes the new value.
            hook = hooks.attn_out(layer)
            values = base_cache[hook] + values - base_cache[hooks.resid_mid(layer)]
        if engine is not None:
            with torch.inference_mode():
                result = _fast_layer(
                    engine, base, site, layer, base_cache[hook], values, per_position, metric
                )
            raw[layer] = result.view(shape[1:])
            continue
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
    for name, tokens in (("clean", clean), ("corrupt", corrupt)):
        check_token_ids(tokens, int(model.cfg.d_vocab), f"{name} tokens")
    if clean.shape != corrupt.shape:
        raise TokenError(
            f"clean tokens {list(clean.shape)} and corrupted tokens {list(corrupt.shape)} must "
            "have the same shape: patching swaps activations position by position"
        )


def _fast_engine(
    model: HookedModel, metric: Metric, site: str, n_pos: int, method: str
) -> LastPositionEngine | None:
    """The fast engine when it applies (and ``method`` allows it), else None."""
    if method not in get_args(Method):
        raise ConfigError(f"method {method!r} is not one of {get_args(Method)}")
    why = None
    if not isinstance(metric, FinalTokenMetric) or metric.position not in (-1, n_pos - 1):
        why = "the metric must be logit_diff, answer_probability or kl_divergence of the last position"
    elif site not in FAST_SITES:
        why = f"site {site!r} is not one of {FAST_SITES}"
    if why is None and method != "hooks":
        try:
            return LastPositionEngine(model)
        except ConfigError as err:
            why = str(err)
    if method == "fast":
        raise ConfigError(f"the fast patching path does not apply: {why}; use method='hooks'")
    return None


def _fast_layer(
    engine: LastPositionEngine,
    base: BaseRun,
    site: str,
    layer: int,
    base_values: torch.Tensor,
    values: torch.Tensor,
    per_position: bool,
    metric: FinalTokenMetric,
) -> Float[torch.Tensor, " variant"]:
    """Every variant of one layer through the fast engine: the residual each patch produces at its
    entry point, then only the computation it reaches. Variants in the result's row-major order."""
    batch, n_pos = values.shape[:2]
    model = engine.model
    # where the patch enters, and the residual there before patching
    if site == "resid_pre":
        stage, at, resid = "pre", layer, base.pre[layer]
    elif site in ("resid_mid", "attn_out", "head"):
        stage, at, resid = "mid", layer, base.mid[layer]
    else:  # mlp_out, resid_post: the input of the next layer
        stage, at, resid = "pre", layer + 1, base.pre[layer + 1]
    replaces = site.startswith("resid")
    n_heads = values.shape[2] if site == "head" else 1
    if site == "head":  # a head's change of the residual: its z difference through its W_O
        change = torch.einsum("bphk,hkd->bphd", values - base_values, model.W_O[layer])
    else:
        change = (values if replaces else values - base_values).unsqueeze(2)  # [batch, pos, 1, d]

    if not per_position:  # every position at once: one dense pass per head (or one)
        out = []
        for h in range(n_heads):
            full = change[:, :, h] if replaces else resid + change[:, :, h]
            logits = engine.propagate_dense(at, stage, full)
            out.append(metric.per_prompt(logits, torch.arange(batch)).mean())
        return torch.stack(out)

    n_var = n_pos * n_heads
    pos = torch.arange(n_pos).repeat_interleave(n_heads)  # variant → position
    head = torch.arange(n_heads).repeat(n_pos)  # variant → head
    delta = change[:, pos, head]  # [batch, variant, d]
    x = delta if replaces else resid[:, pos] + delta
    rows_pos = pos.repeat_interleave(batch)  # rows variant-major: row = variant · batch + prompt
    rows_prompt = torch.arange(batch).repeat(n_var)
    x = x.transpose(0, 1).flatten(0, 1)
    per_row = []
    chunk = _rows_per_chunk(engine, n_pos)
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        if at == engine.n_layers:  # after the last layer: only the last position reaches the logits
            logits = torch.where(
                (rows_pos[part] == n_pos - 1)[:, None],
                engine._logits(x[part]),
                base.final_logits[rows_prompt[part]],
            )
        else:
            logits = engine.propagate(base, at, stage, x[part], rows_pos[part], rows_prompt[part])
        per_row.append(metric.per_prompt(logits, rows_prompt[part]))
    return torch.cat(per_row).view(n_var, batch).mean(1)


def _rows_per_chunk(engine: LastPositionEngine, n_pos: int) -> int:
    """Rows per engine call, so that the keys and values it copies stay near MAX_CHUNK_ELEMENTS."""
    cfg = engine.model.cfg
    width = max(2 * int(cfg.n_heads) * int(cfg.d_head) * n_pos, int(cfg.d_vocab))
    return max(1, MAX_CHUNK_ELEMENTS // width)
