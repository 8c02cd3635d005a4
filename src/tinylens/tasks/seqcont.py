"""Sequence continuation in the prompt template of Lan & Barez (2023), word-level.

Background:
    A prompt lists the first members of an ordered family, each attached to a filler word, and
    asks for the next one::

        Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in  →  5

    Families: numerals (1 … 20), number words (one … twelve), months, days of the week, capital
    letters. The *contrast* answer is the last member shown (4 above): the logit difference
    answer − contrast is the paper's metric. A *corrupted* prompt keeps the fillers and draws the
    shown members at random from the same family, so that it holds no sequence to continue.

    One token per word and one per period, so ``n_items`` items make ``5 · n_items − 1`` tokens
    (the last item has no period); the answer is the final token.

Usage:
    task = SeqcontTask()
    tokens = task.sample(64, torch.Generator().manual_seed(0), family="months")
    corrupt = task.corrupt(tokens, torch.Generator().manual_seed(1))
    task.decode(tokens[0])   # 'Van done in March. Hat done in April. … Sun done in July'

References:
    Lan & Barez, "Interpreting Shared Circuits for Ordered Sequence Prediction in a Large Language
    Model", 2023 (arXiv:2311.04131).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, ClassVar

import torch
from jaxtyping import Int

from tinylens.errors import ConfigError, TokenError, quote, unknown_name
from tinylens.tasks.base import Task, Tokens

FAMILIES: dict[str, tuple[str, ...]] = {
    "numerals": tuple(str(i) for i in range(1, 21)),
    "number_words": (
        "one", "two", "three", "four", "five", "six",
        "seven", "eight", "nine", "ten", "eleven", "twelve",
    ),
    "months": (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
    "days": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "letters": tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
}  # fmt: skip
"""Each family's members in order."""
PAPER_FAMILIES = ("numerals", "number_words", "months")
"""The three families the paper compares."""
TEMPLATE = ("done", "in")
"""The words between a filler and its member."""
PERIOD = "."
ITEM_LEN = 5
"""Tokens per item: filler, ``done``, ``in``, member, period."""


@cache
def filler_words() -> tuple[str, ...]:
    """The names and objects shipped in ``tasks/data/seqcont_words.txt``."""
    text = resources.files("tinylens.tasks").joinpath("data/seqcont_words.txt").read_text()
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


class SeqcontTask(Task):
    """Continue an ordered sequence shown in ``n_items − 1`` templated items."""

    name: ClassVar[str] = "seqcont"

    def __init__(self, n_items: int = 5, families: tuple[str, ...] | list[str] | None = None):
        families = tuple(FAMILIES) if families is None else tuple(families)
        if not families:
            raise ConfigError("seqcont needs at least one family; choose from " + ", ".join(FAMILIES))
        for family in families:
            if family not in FAMILIES:
                raise unknown_name("seqcont family", family, FAMILIES)
        if not isinstance(n_items, int) or n_items < 2:
            raise ConfigError(f"seqcont n_items must be an integer ≥ 2, got {n_items!r}")
        too_short = [f for f in families if len(FAMILIES[f]) < n_items]
        if too_short:
            raise ConfigError(
                f"families {too_short} have fewer than n_items={n_items} members; lower n_items"
            )
        self.n_items = n_items
        self.families = families
        members = [m for f in FAMILIES for m in FAMILIES[f]]
        self._vocab = (*TEMPLATE, PERIOD, *filler_words(), *dict.fromkeys(members))
        self._index = {word: i for i, word in enumerate(self._vocab)}
        self._fillers = torch.tensor([self._index[w] for w in filler_words()])
        self._members = {f: torch.tensor([self._index[m] for m in FAMILIES[f]]) for f in FAMILIES}

    # --- the Task contract ---------------------------------------------------------------------

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab

    @property
    def seq_len(self) -> int:
        return ITEM_LEN * self.n_items - 1

    @property
    def answer_positions(self) -> Int[torch.Tensor, " answer"]:
        return torch.tensor([self.seq_len - 1])

    @property
    def answer_names(self) -> tuple[str, ...]:
        return ("next",)

    @property
    def member_positions(self) -> Int[torch.Tensor, " item"]:
        """Where each item's member sits; the last one is the answer."""
        return torch.arange(self.n_items) * ITEM_LEN + 3

    def options(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "families": list(self.families)}

    def sample(
        self, n: int, generator: torch.Generator, *, train: bool = False, family: str | None = None
    ) -> Tokens:
        """``n`` prompts with their answers; each of a random family (or of ``family``)."""
        del train  # no enrichment: every family and start is equally likely
        if family is not None and family not in self.families:
            raise unknown_name("seqcont family", family, self.families)
        choices = self.families if family is None else (family,)
        pick = torch.randint(0, len(choices), (n,), generator=generator)
        tokens = torch.empty(n, self.seq_len, dtype=torch.int64)
        for i, f in enumerate(choices):
            rows = (pick == i).nonzero().flatten()
            members = self._members[f]
            start = torch.randint(0, len(members) - self.n_items + 1, (len(rows),), generator=generator)
            runs = members[start[:, None] + torch.arange(self.n_items)]  # [rows, item]
            tokens[rows] = self._layout(runs, len(rows), generator)
        return tokens

    def encode(self, text: str) -> Int[torch.Tensor, " pos"]:
        words = _words(text)
        if len(words) != self.seq_len:
            raise TokenError(
                f"{quote(text)} has {len(words)} words and periods; a seqcont sequence of "
                f"{self.n_items} items has {self.seq_len} (e.g. {self._example()!r})"
            )
        return self._check_layout(words)

    def decode(self, tokens: Int[torch.Tensor, " pos"]) -> str:
        ids = [int(t) for t in tokens]
        bad = [i for i in ids if not 0 <= i < len(self._vocab)]
        if bad:
            raise TokenError(
                f"token id {bad[0]} is outside the seqcont vocabulary (0–{len(self._vocab) - 1})"
            )
        return " ".join(self._vocab[i] for i in ids).replace(" .", ".")

    def parse_prompt(self, text: str) -> Int[torch.Tensor, " prompt"]:
        """``'Van done in 1. … Sun done in'`` → the prompt's tokens (everything but the answer)."""
        words = _words(text)
        if len(words) != self.seq_len - 1:
            raise TokenError(
                f"{quote(text)} has {len(words)} words and periods; a prompt of {self.n_items} items "
                f"has {self.seq_len - 1}, ending in 'done in' (e.g. "
                f"{self._example().rsplit(' ', 1)[0]!r})"
            )
        prompt = self._check_layout(words)
        self._check_sequence(words[3::ITEM_LEN])
        return prompt

    def solve(self, prompt: Int[torch.Tensor, "batch prompt"]) -> Tokens:
        last = prompt[:, self.member_positions[-2]]
        answer = torch.tensor([self.successor(int(t)) for t in last])
        return torch.cat([prompt, answer[:, None]], dim=1)

    # --- seqcont-specific ------------------------------------------------------------------------

    def successor(self, token: int) -> int:
        """The member after ``token`` in its family."""
        family = self.family_of_token(token)
        members = FAMILIES[family]
        word = self._vocab[token]
        i = members.index(word)
        if i + 1 == len(members):
            raise TokenError(f"{word!r} is the last of the {family} family; it has no successor")
        return self._index[members[i + 1]]

    def family_of_token(self, token: int) -> str:
        word = self._vocab[token] if 0 <= token < len(self._vocab) else None
        for family in self.families:
            if word in FAMILIES[family]:
                return family
        raise TokenError(f"token {token} ({word!r}) is not a member of {', '.join(self.families)}")

    def families_of(self, tokens: Tokens) -> list[str]:
        """The family of each row (read from its first member)."""
        return [self.family_of_token(int(t)) for t in tokens[:, int(self.member_positions[0])]]

    def contrast(self, tokens: Tokens) -> Int[torch.Tensor, " batch"]:
        """The last member shown in each prompt: the paper's contrast answer."""
        return tokens[:, int(self.member_positions[-2])]

    def answer(self, tokens: Tokens) -> Int[torch.Tensor, " batch"]:
        return tokens[:, -1]

    def corrupt(self, tokens: Tokens, generator: torch.Generator) -> Tokens:
        """The same prompts with every shown member redrawn at random from its row's family
        (the answer slot keeps the clean answer, so the two share positions and length)."""
        self.check_tokens(tokens)
        out = tokens.clone()
        shown = self.member_positions[:-1]
        for row, family in enumerate(self.families_of(tokens)):
            members = self._members[family]
            out[row, shown] = members[torch.randint(0, len(members), (len(shown),), generator=generator)]
        return out

    def refill(self, tokens: Tokens, generator: torch.Generator) -> Tokens:
        """The same sequences (members and answer kept) with every filler word redrawn: prompts
        that differ in their words but not in their answer."""
        self.check_tokens(tokens)
        return self._layout(tokens[:, self.member_positions], len(tokens), generator)

    def words(self, tokens: Tokens) -> list[list[str]]:
        """Each row as its list of words (to re-tokenize with another model's tokenizer)."""
        return [[self._vocab[int(t)] for t in row] for row in tokens]

    # --- helpers ---------------------------------------------------------------------------------

    def _layout(self, members: torch.Tensor, n: int, generator: torch.Generator) -> Tokens:
        """Rows of ``filler done in member .`` items around the given members ``[n, item]``."""
        fillers = torch.stack(
            [self._fillers[torch.randperm(len(self._fillers), generator=generator)[: self.n_items]]
             for _ in range(n)]
        ) if n else torch.empty(0, self.n_items, dtype=torch.int64)  # fmt: skip
        item = torch.empty(n, self.n_items, ITEM_LEN, dtype=torch.int64)
        item[:, :, 0] = fillers
        item[:, :, 1] = self._index[TEMPLATE[0]]
        item[:, :, 2] = self._index[TEMPLATE[1]]
        item[:, :, 3] = members
        item[:, :, 4] = self._index[PERIOD]
        return item.flatten(1)[:, : self.seq_len]

    def _check_layout(self, words: list[str]) -> Int[torch.Tensor, " pos"]:
        fillers = set(filler_words())
        for pos, word in enumerate(words):
            slot = pos % ITEM_LEN
            if slot == 0:
                ok, wanted = word in fillers, "a filler word (see tasks/data/seqcont_words.txt)"
            elif slot in (1, 2):
                ok, wanted = word == TEMPLATE[slot - 1], repr(TEMPLATE[slot - 1])
            elif slot == 3:
                ok = any(word in FAMILIES[f] for f in self.families)
                wanted = f"a member of {', '.join(self.families)}"
            else:
                ok, wanted = word == PERIOD, "'.'"
            if not ok:
                raise TokenError(f"{quote(word)} at position {pos} should be {wanted}")
        return torch.tensor([self._index[w] for w in words], dtype=torch.int64)

    def _check_sequence(self, members: list[str]) -> None:
        """Shown members must be consecutive members of one family, the last with a successor:
        otherwise the prompt has no true answer to compare the model's with."""
        family = next(f for f in self.families if members[0] in FAMILIES[f])
        order = FAMILIES[family]
        start = order.index(members[0])
        expected = list(order[start : start + len(members)])
        if members != expected:
            raise TokenError(
                f"the members shown, {', '.join(members)}, do not continue one family in order; "
                f"after {members[0]!r} a {family} prompt shows {', '.join(expected)} "
                f"(e.g. {self._example().rsplit(' ', 1)[0]!r})"
            )
        if start + len(members) == len(order):
            raise TokenError(
                f"{members[-1]!r} is the last of the {family} family, so the prompt has no next "
                f"member; start the sequence earlier"
            )

    def _example(self) -> str:
        members = FAMILIES[self.families[0]][: self.n_items]
        fillers = filler_words()[: self.n_items]
        return ". ".join(f"{f} done in {m}" for f, m in zip(fillers, members, strict=True))


def _words(text: str) -> list[str]:
    return text.replace(".", " . ").split()
