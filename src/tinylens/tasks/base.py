"""The contract every task implements: a vocabulary, a seeded generator, answer positions and labels.

A task knows its data and nothing about models. Sequences have a fixed length ``seq_len``; the answer
occupies the slots ``answer_positions`` and the token at position ``p`` is predicted from the logits
at ``p - 1``. A task whose answers vary in length (a maze path) marks the slots each example really
uses with :meth:`Task.answer_valid`; the others hold padding and are neither trained nor scored.
Everything a trainer or an analysis needs to score a model comes from here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Int

from tinylens.errors import ConfigError, TokenError

Tokens = Int[torch.Tensor, "batch pos"]
"""A batch of token sequences of one task, ``int64``."""


def draw_batch_seed(generator: torch.Generator) -> int:
    """A batch's seed: the one draw from ``generator`` that a task with
    :attr:`Task.seeded_batches` makes per batch."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


class Task(ABC):
    """One algorithmic task: its text format, generator and per-example labels."""

    name: ClassVar[str]
    """Registry key, e.g. ``"addition"``."""
    generation_metric_names: ClassVar[tuple[str, ...]] = ()
    """Keys that :meth:`generation_metrics` returns; empty if the task has none."""
    seeded_batches: ClassVar[bool] = False
    """True when :meth:`sample` and :meth:`sample_grouped` draw exactly one :func:`draw_batch_seed`
    from their generator and build the batch from it alone (:meth:`batch_from_seed`), so a trainer
    can build the next batches ahead of time in other processes without changing them."""

    @property
    @abstractmethod
    def vocab(self) -> tuple[str, ...]:
        """Token strings; the token id is the index."""

    @property
    @abstractmethod
    def seq_len(self) -> int:
        """Length of every full sequence (prompt + answer), in tokens."""

    @property
    @abstractmethod
    def answer_positions(self) -> Int[torch.Tensor, " answer"]:
        """Positions of the answer tokens, ascending; each is predicted from the position before it."""

    @property
    @abstractmethod
    def answer_names(self) -> tuple[str, ...]:
        """A short name per answer position, used to label metrics (e.g. ``A5 … A0``)."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The task's settings as a JSON-able dict (stored with every run)."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator, *, train: bool = False) -> Tokens:
        """Draw ``n`` full sequences. ``train=True`` applies the task's training-time enrichment."""

    @abstractmethod
    def encode(self, text: str) -> Int[torch.Tensor, " pos"]:
        """Text of one full sequence → token ids. Raises :class:`TokenError` on malformed text."""

    @abstractmethod
    def decode(self, tokens: Int[torch.Tensor, " pos"]) -> str:
        """Token ids of one sequence → text; ``encode(decode(t))`` equals ``t``."""

    @abstractmethod
    def parse_prompt(self, text: str) -> Int[torch.Tensor, " prompt"]:
        """A user's question (everything before the answer) → prompt tokens, normalised to the format."""

    @abstractmethod
    def solve(self, prompt: Int[torch.Tensor, "batch prompt"]) -> Tokens:
        """Complete prompts with the correct answer: the ground truth, computed without a model."""

    def answer_valid(self, tokens: Tokens) -> Bool[torch.Tensor, "batch answer"]:
        """Which answer slots each example uses; default all (fixed-length answers)."""
        return torch.ones(tokens.shape[0], len(self.answer_positions), dtype=torch.bool)

    @property
    def answer_end(self) -> tuple[int, int] | None:
        """For answers of varying length: (the token that ends an answer, the padding after it);
        None for fixed-length answers. Greedy decoding stops a row once it writes the end token."""
        return None

    def generation_metrics(
        self, prompt: Int[torch.Tensor, "batch prompt"], answer: Int[torch.Tensor, "batch answer"]
    ) -> dict[str, float]:
        """Scores of freely generated answers beyond exact match (e.g. a maze path's validity);
        default none. ``answer`` holds the tokens a model produced after each prompt."""
        del prompt, answer
        return {}

    def token_groups(self, tokens: Tokens) -> dict[str, Bool[torch.Tensor, "batch answer"]]:
        """Named masks over answer tokens (e.g. the sub-task each digit needs); default none."""
        del tokens
        return {}

    def question_groups(self, tokens: Tokens) -> dict[str, Bool[torch.Tensor, " batch"]]:
        """Named masks over whole questions (e.g. a carry class); default none."""
        del tokens
        return {}

    @property
    def shared_prefix_len(self) -> int | None:
        """Tokens at the start of a sequence that several questions can share (a maze's adjacency
        list, whose activations do not depend on the query after it); None if the task has no such
        prefix. Tasks that have one implement :meth:`sample_grouped`."""
        return None

    def sample_grouped(
        self, n_groups: int, k: int, generator: torch.Generator, *, train: bool = False
    ) -> Tokens:
        """``n_groups · k`` ordinary sequences, k consecutive ones sharing their first
        :attr:`shared_prefix_len` tokens, for shared-prefix training."""
        del n_groups, k, generator, train
        raise ConfigError(
            f"the {self.name} task has no prefix shared between questions; "
            "train it with train.queries_per_prompt = 1"
        )

    def batch_from_seed(self, seed: int, n: int, *, k: int = 1, train: bool = False) -> Tokens:
        """The batch that :meth:`sample` (``k == 1``) or :meth:`sample_grouped` (``n // k`` groups of
        ``k``) returns after drawing ``seed``; only tasks with :attr:`seeded_batches` have it."""
        del seed, n, k, train
        raise NotImplementedError(f"the {self.name} task does not build batches from a seed")

    @property
    def prompt_len(self) -> int:
        """Number of tokens before the first answer token."""
        return int(self.answer_positions[0])

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Raise :class:`TokenError` unless ``tokens`` is a ``[batch, seq_len]`` tensor of valid ids."""
        if tokens.ndim != 2 or tokens.shape[1] != self.seq_len:
            raise TokenError(
                f"{self.name} expects token tensors of shape [batch, {self.seq_len}], "
                f"got {list(tokens.shape)}"
            )
        if tokens.dtype != torch.int64:
            raise TokenError(
                f"{self.name} tokens must be an int64 tensor (torch.long), got {tokens.dtype}; "
                "convert with tokens.long()"
            )
        bad = (tokens < 0) | (tokens >= self.d_vocab)
        if bool(bad.any()):
            row, pos = (int(i) for i in bad.nonzero()[0])
            raise TokenError(
                f"token id {int(tokens[row, pos])} at row {row}, position {pos} is outside "
                f"the {self.name} vocabulary (ids 0–{self.d_vocab - 1})"
            )
