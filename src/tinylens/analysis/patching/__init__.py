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
    head × position sweep then costs a handful of forward passes. Where it applies, the fast path
    (:mod:`~tinylens.analysis.patching.engine`) recomputes only what each patch can reach.

Modules:
    :mod:`~tinylens.analysis.patching.sweep` (the entry point), :mod:`~.sites` (sites and
    options), :mod:`~.hooked` (the hook path), :mod:`~.fast` and :mod:`~.engine` (the fast path).

Usage:
    result = patch_sweep(model, clean, corrupt, logit_diff(answer, contrast), site="head")
    result.normalised  # [layer, pos, head], 1 = clean behaviour kept, 0 = corrupted

References:
    Meng et al. 2022 (causal tracing); Wang et al. 2022 (IOI); Zhang & Nanda 2024, "Towards best
    practices of activation patching"; ``transformer_lens.patching`` (the one-patch-per-forward
    reference our tests compare against).
"""

from __future__ import annotations

from tinylens.analysis.metrics import (
    FinalTokenMetric,
    Metric,
    answer_probability,
    kl_divergence,
    logit_diff,
)
from tinylens.analysis.patching.engine import LastPositionEngine
from tinylens.analysis.patching.joint import patch_heads
from tinylens.analysis.patching.sites import (
    FAST_SITES,
    HEAD_SITES,
    SITE_HOOKS,
    Direction,
    Method,
    Site,
    Source,
)
from tinylens.analysis.patching.sweep import PatchingResult, patch_sweep

__all__ = [
    # the sweep
    "patch_sweep",
    "patch_heads",
    "PatchingResult",
    # its options
    "Site",
    "Direction",
    "Source",
    "Method",
    "SITE_HOOKS",
    "HEAD_SITES",
    "FAST_SITES",
    # the fast path's engine
    "LastPositionEngine",
    # metrics (defined in tinylens.analysis.metrics)
    "Metric",
    "FinalTokenMetric",
    "logit_diff",
    "answer_probability",
    "kl_divergence",
]
