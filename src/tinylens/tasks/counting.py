"""Character counting, the first probed task of InversionView (Huang, Panwar, Goyal and Hahn, 2024).

Background:
    A string shuffles a multiset of three distinct letters, each 1–9 times, then names one of
    them and asks how often it occurs::

        vvzccvczvvvzvcvc|v:8

    The model reads ``B`` (begin), the letters, ``|``, the query letter and ``:``, and predicts the
    count. Our sequences are left-padded with ``P`` to one length, so the query letter, ``:`` and
    the count sit at fixed positions (the last three); the paper pads on the right and ends with
    an ``E``, which a fixed-length answer does not need.

    The paper splits the 1,560,000 strings of its generator 75/25 into train and test. Here a
    question's *combination* (its letters, their counts and the query) is held out when a hash of
    it falls in one quarter: training batches (``train=True``) never draw a held-out combination
    and evaluation draws only those, so test accuracy is measured on combinations never trained on.

Usage:
    task = CountingTask()
    tokens = task.sample(64, torch.Generator().manual_seed(0), train=True)
    task.decode(tokens[0])          # 'vvzccvczvvvzvcvc|v:8'
    task.labels(tokens).query_count  # the answer, as an integer

References:
    Huang, Panwar, Goyal and Hahn, "InversionView: A General-Purpose Method for Reading
    Information from Neural Activations", NeurIPS 2024 (arXiv:2405.17653).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Int

from tinylens.errors import ConfigError, TokenError, quote
from tinylens.tasks.base import Task, Tokens

LETTERS = tuple(string.ascii_lowercase)
PAD, BEGIN, SEP, ASK = "P", "B", "|", ":"
HELD_OUT = 4
"""One combination in this many is held out for evaluation (the paper's 75/25 split)."""
_HASH = 2654435761
"""Knuth's multiplicative hash constant: spreads consecutive combination ids over the quarters."""


@dataclass(frozen=True)
class CountingLabels:
    """Per-example labels; the three letters in alphabetical order."""

    letters: Int[torch.Tensor, "batch letter"]
    """The distinct letters, as indices into ``a…z``, ascending."""
    counts: Int[torch.Tensor, "batch letter"]
    """How often each letter occurs."""
    query: Int[torch.Tensor, " batch"]
    """Which of the three (0, 1, 2) is asked for."""
    query_letter: Int[torch.Tensor, " batch"]
    """The query letter, as an index into ``a…z``."""
    query_count: Int[torch.Tensor, " batch"]
    """The answer."""


class CountingTask(Task):
    """Count one letter of a shuffled string of ``n_letters`` distinct letters."""

    name: ClassVar[str] = "counting"

    def __init__(self, n_letters: int = 3, max_count: int = 9):
        for what, value, low, high in (("n_letters", n_letters, 1, 26), ("max_count", max_count, 1, 9)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"counting {what} must be an integer in {low}–{high}, got {value!r}")
        self.n_letters = n_letters
        self.max_count = max_count
        self._vocab = (PAD, BEGIN, SEP, ASK, *LETTERS, *(str(c) for c in range(1, 10)))
        self._index = {t: i for i, t in enumerate(self._vocab)}
        self._letter0 = self._index["a"]
        self._digit1 = self._index["1"]

    # --- the Task contract ---------------------------------------------------------------------

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab

    @property
    def max_letters(self) -> int:
        return self.n_letters * self.max_count

    @property
    def seq_len(self) -> int:
        """Padding and ``B`` and the letters (``max_letters + 1``), then ``| q :`` and the count."""
        return self.max_letters + 5

    @property
    def answer_positions(self) -> Int[torch.Tensor, " answer"]:
        return torch.tensor([self.seq_len - 1])

    @property
    def answer_names(self) -> tuple[str, ...]:
        return ("count",)

    @property
    def query_position(self) -> int:
        """Where the query letter sits (``:`` is the next position, the count the last)."""
        return self.seq_len - 3

    def options(self) -> dict[str, Any]:
        return {"n_letters": self.n_letters, "max_count": self.max_count}

    def sample(self, n: int, generator: torch.Generator, *, train: bool = False) -> Tokens:
        """``n`` questions of combinations from the training split (``train=True``) or the
        held-out one."""
        letters = torch.empty(n, self.n_letters, dtype=torch.int64)
        counts = torch.empty(n, self.n_letters, dtype=torch.int64)
        query = torch.empty(n, dtype=torch.int64)
        todo = torch.arange(n)
        while len(todo):  # rejection: redraw the rows whose combination is in the other split
            m = len(todo)
            letters[todo] = torch.rand(m, len(LETTERS), generator=generator).argsort(1)[
                :, : self.n_letters
            ]
            counts[todo] = torch.randint(1, self.max_count + 1, (m, self.n_letters), generator=generator)
            query[todo] = torch.randint(0, self.n_letters, (m,), generator=generator)
            held = self._held_out(letters[todo], counts[todo], query[todo])
            todo = todo[held == train]
        return self.layout(letters, counts, query, generator)

    def encode(self, text: str) -> Int[torch.Tensor, " pos"]:
        body, answer = self._split_answer(text)
        prompt = self.parse_prompt(body)
        if answer not in self._index or not answer.isdigit():
            raise TokenError(f"{quote(text)} must end in a count 1–9 after ':', got {answer!r}")
        return torch.cat([prompt, torch.tensor([self._index[answer]])])

    def decode(self, tokens: Int[torch.Tensor, " pos"]) -> str:
        ids = [int(t) for t in tokens]
        bad = [i for i in ids if not 0 <= i < len(self._vocab)]
        if bad:
            raise TokenError(
                f"token id {bad[0]} is outside the counting vocabulary (0–{len(self._vocab) - 1})"
            )
        return "".join(self._vocab[i] for i in ids if self._vocab[i] not in (PAD, BEGIN))

    def parse_prompt(self, text: str) -> Int[torch.Tensor, " prompt"]:
        """``'vvzccvczvvvzvcvc|v:'`` (the trailing ``:`` may be left out) → the prompt's tokens."""
        text = text.strip()
        if text.endswith(ASK):
            text = text[:-1]
        letters, sep, query = text.partition(SEP)
        if not sep or len(query) != 1:
            raise TokenError(
                f"{quote(text)} is not a counting question: letters, '|', one query letter and ':' "
                f"(e.g. {self._example()!r})"
            )
        stray = sorted({c for c in letters + query if c not in LETTERS})
        if stray:
            raise TokenError(f"{quote(text)} has characters that are not lowercase letters: {stray}")
        distinct = sorted(set(letters))
        if len(distinct) != self.n_letters:
            raise TokenError(
                f"{quote(text)} has {len(distinct)} distinct letters; a counting question has "
                f"{self.n_letters}"
            )
        too_many = [c for c in distinct if letters.count(c) > self.max_count]
        if too_many:
            c = too_many[0]
            raise TokenError(
                f"{quote(text)} has {c!r} {letters.count(c)} times; at most {self.max_count}"
            )
        if query not in distinct:
            raise TokenError(
                f"{quote(text)} asks for {query!r}, which is not among its letters {distinct}"
            )
        ids = [self._index[c] for c in letters]
        pad = [self._index[PAD]] * (self.max_letters - len(ids))
        tail = [self._index[SEP], self._index[query], self._index[ASK]]
        return torch.tensor([*pad, self._index[BEGIN], *ids, *tail], dtype=torch.int64)

    def solve(self, prompt: Int[torch.Tensor, "batch prompt"]) -> Tokens:
        body = prompt[:, : self.max_letters + 1]
        query = prompt[:, self.query_position : self.query_position + 1]
        count = (body == query).sum(1)
        return torch.cat([prompt, (self._digit1 + count - 1)[:, None]], dim=1)

    def question_groups(self, tokens: Tokens) -> dict[str, torch.Tensor]:
        """Questions by the count asked for (``count=1`` … ``count=9``)."""
        answer = self.labels(tokens).query_count
        return {f"count={c}": answer == c for c in range(1, self.max_count + 1)}

    # --- counting-specific -----------------------------------------------------------------------

    def labels(self, tokens: Tokens) -> CountingLabels:
        """The letters, their counts and the query of each question (read from the tokens)."""
        self.check_tokens(tokens)
        body = tokens[:, : self.max_letters + 1] - self._letter0  # letter index, or negative
        present = torch.zeros(len(tokens), len(LETTERS), dtype=torch.int64)
        is_letter = (body >= 0) & (body < len(LETTERS))
        present.scatter_add_(1, body.clamp(0, len(LETTERS) - 1), is_letter.long())
        letters = (present > 0).long().argsort(dim=1, descending=True, stable=True)[:, : self.n_letters]
        letters = letters.sort(1).values
        counts = present.gather(1, letters)
        query_letter = tokens[:, self.query_position] - self._letter0
        query = (letters == query_letter[:, None]).long().argmax(1)
        return CountingLabels(
            letters, counts, query, query_letter, counts.gather(1, query[:, None])[:, 0]
        )

    def held_out(self, tokens: Tokens) -> torch.Tensor:
        """Bool ``[batch]``: whether each question's combination is in the evaluation split."""
        lab = self.labels(tokens)
        return self._held_out(lab.letters, lab.counts, lab.query)

    # --- helpers ---------------------------------------------------------------------------------

    def _held_out(
        self, letters: torch.Tensor, counts: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        """The split of each combination, from its letters, counts and query in alphabetical order
        (so that the split does not depend on the order they were drawn in)."""
        order = letters.argsort(1)
        letters, counts = letters.gather(1, order), counts.gather(1, order)
        query_letter = (order == query[:, None]).long().argmax(1)  # its alphabetical rank
        key = torch.zeros(len(letters), dtype=torch.int64)
        for i in range(self.n_letters):
            key = (key * len(LETTERS) + letters[:, i]) * (self.max_count + 1) + counts[:, i]
        key = key * self.n_letters + query_letter
        return ((key * _HASH) % 2**32) * HELD_OUT // 2**32 == 0

    def layout(
        self,
        letters: torch.Tensor,
        counts: torch.Tensor,
        query: torch.Tensor,
        generator: torch.Generator,
    ) -> Tokens:
        """Rows ``P… B <shuffled letters> | q : count`` for the drawn combinations."""
        n = len(letters)
        # slot (i, j) holds letter i if j < counts[i]; sort keys put padding first, then B, then
        # the used slots in random order
        slots = letters[:, :, None].expand(n, self.n_letters, self.max_count).reshape(n, -1)
        used = (torch.arange(self.max_count)[None, None, :] < counts[:, :, None]).reshape(n, -1)
        keys = torch.where(
            used, torch.rand(used.shape, generator=generator), torch.full(used.shape, -2.0)
        )
        keys = torch.cat([keys, torch.full((n, 1), -1.0)], dim=1)  # B's slot
        ids = torch.cat([slots + self._letter0, torch.full((n, 1), self._index[BEGIN])], dim=1)
        ids = torch.where(keys == -2.0, torch.full_like(ids, self._index[PAD]), ids)
        body = ids.gather(1, keys.argsort(1))
        query_letter = letters.gather(1, query[:, None])[:, 0]
        answer = counts.gather(1, query[:, None])[:, 0]
        tail = torch.stack(
            [
                torch.full((n,), self._index[SEP]),
                query_letter + self._letter0,
                torch.full((n,), self._index[ASK]),
                answer - 1 + self._digit1,
            ],
            dim=1,
        )
        return torch.cat([body, tail], dim=1)

    def _split_answer(self, text: str) -> tuple[str, str]:
        body, ask, answer = text.strip().rpartition(ASK)
        if not ask:
            raise TokenError(f"{quote(text)} has no ':' before its count (e.g. {self._example()!r})")
        return body + ASK, answer

    def _example(self) -> str:
        return self.decode(self.sample(1, torch.Generator().manual_seed(0), train=True)[0])
