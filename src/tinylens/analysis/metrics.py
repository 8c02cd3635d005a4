"""Metrics: a batch of logits → one number, the quantity that patching and circuits explain.

Background:
    Every intervention here (a patch, an ablated edge, a pruned component) is scored by how much of
    one number it keeps. The logit difference between the right answer and a contrast (Wang et al.
    2022) is linear in the final residual stream, so effects add up across components; the answer's
    probability and the KL divergence from the clean run are the usual alternatives (Zhang & Nanda
    2024 compare them). Any callable from logits to a 0-d tensor is a :data:`Metric`; the
    :class:`FinalTokenMetric` made here also scores prompt by prompt, which the fast patching path
    needs to score thousands of patched rows at once.

Usage:
    metric = logit_diff(answer, contrast)         # answer, contrast: [batch] token ids
    float(metric(model(tokens)))                  # mean over prompts at the last position

References:
    Wang et al. 2022 (IOI, logit difference); Zhang & Nanda 2024, "Towards best practices of
    activation patching"; ``transformer_lens.patching`` (metrics of the same call shape).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int

Metric = Callable[[Float[torch.Tensor, "batch pos d_vocab"]], torch.Tensor]
"""Logits of a batch of prompts → one number (a 0-d tensor or a float), e.g. the mean logit diff.
Our own metrics (:class:`FinalTokenMetric`) also score prompt by prompt, which the fast path needs."""


class FinalTokenMetric:
    """A metric of the logits at one position, computable prompt by prompt.

    Called on logits ``[batch, pos, d_vocab]`` it returns the mean over prompts (what
    TransformerLens's patching functions expect); :meth:`per_prompt` scores rows of logits at that
    position, so that a sweep can score thousands of patched rows at once.
    """

    position: int = -1
    """The position whose logits are scored."""

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


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits upcast for a stable softmax; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _AnswerProbability(FinalTokenMetric):
    def __init__(self, answer: torch.Tensor, position: int) -> None:
        self.answer, self.position = answer, position

    def per_prompt(self, final: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        probs = _at_least_float32(final).softmax(-1)
        return probs[torch.arange(final.shape[0]), self.answer[prompt]]


class _KLDivergence(FinalTokenMetric):
    def __init__(self, reference: torch.Tensor, position: int) -> None:
        self.log_ref, self.position = _at_least_float32(reference[:, position]).log_softmax(-1), position

    def per_prompt(self, final: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        ref = self.log_ref[prompt]
        return (ref.exp() * (ref - _at_least_float32(final).log_softmax(-1))).sum(-1)


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
