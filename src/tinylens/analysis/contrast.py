"""Contrast prompts: clean and corrupted prompts with an answer and a contrast token each.

Background:
    Patching and circuit discovery explain one behaviour: the model prefers the right answer over
    a contrast (the answer a corrupted prompt would call for) on the clean prompts, and not on the
    corrupted ones. :class:`ContrastPrompts` holds such a set in the model's token ids, its
    :attr:`~ContrastPrompts.metric` is the logit difference at the last position, and
    :func:`behaviour` checks there is a behaviour to explain before any circuit is sought.

Usage:
    prompts = ContrastPrompts(clean, corrupt, answer, contrast)
    behaviour(model, prompts).logit_diff          # > 0: the model does the task

References:
    Wang et al. 2022 (IOI: clean and corrupted prompts, logit difference); Lan & Barez 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int

from tinylens.analysis.metrics import FinalTokenMetric, logit_diff
from tinylens.analysis.protocol import HookedModel


@dataclass(frozen=True)
class ContrastPrompts:
    """Clean and corrupted prompts, aligned position by position, with the answer and contrast
    token of each clean prompt (all in the model's token ids)."""

    clean: Int[torch.Tensor, "batch pos"]
    """Prompts whose behaviour is explained."""
    corrupt: Int[torch.Tensor, "batch pos"]
    """The same prompts with the fact under study changed."""
    answer: Int[torch.Tensor, " batch"]
    """The right next token of each clean prompt."""
    contrast: Int[torch.Tensor, " batch"]
    """The token the answer is compared with (e.g. the corrupted prompt's answer)."""

    @property
    def metric(self) -> FinalTokenMetric:
        """Mean logit(answer) − logit(contrast) at the last position."""
        return logit_diff(self.answer, self.contrast)


@dataclass(frozen=True)
class Behaviour:
    """How well a model does the task on a set of contrast prompts."""

    accuracy: float
    """Share of clean prompts whose top-1 next token is the answer."""
    logit_diff: float
    """Mean logit(answer) − logit(contrast) on the clean prompts."""
    corrupt_logit_diff: float
    """The same on the corrupted prompts."""
    n: int
    """Number of prompts."""


def behaviour(model: HookedModel, prompts: ContrastPrompts) -> Behaviour:
    """Top-1 accuracy, mean logit difference, and the same on the corrupted prompts."""
    with torch.no_grad():
        clean = model(prompts.clean)[:, -1]
        corrupt = model(prompts.corrupt)[:, -1]
    rows = torch.arange(len(clean))
    return Behaviour(
        accuracy=float((clean.argmax(-1) == prompts.answer).float().mean()),
        logit_diff=float((clean[rows, prompts.answer] - clean[rows, prompts.contrast]).mean()),
        corrupt_logit_diff=float(
            (corrupt[rows, prompts.answer] - corrupt[rows, prompts.contrast]).mean()
        ),
        n=len(clean),
    )
