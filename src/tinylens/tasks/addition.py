"""n-digit integer addition in the format of Quirke & Barez (2023), with per-digit carry labels.

Background:
    A question is ``AAAAA+BBBBB=`` and its answer the ``n + 1`` digits of the sum, most significant
    first: ``12345+67890=080235`` (one token per character; operands zero-padded). Each answer digit
    A_c (c = 0 is the units column) is the result of sub-tasks that the paper names:

        BA   base add          (a_c + b_c) % 10
        MC1  make carry 1      a_c + b_c >= 10
        MS9  make sum 9        a_c + b_c == 9
        UC1  use carry 1       column c-1 made a carry (MC1 at c-1)
        US9  use sum 9         the carry into c passed through a sum-9 column (a cascade)

    Each answer digit is tagged with the hardest sub-task it needs (BA < UC1 < US9), and each question
    with a cascade class: S0 no carry at all, S1 carries that pass through no sum-9 column, S2 a carry
    then one sum-9 column, S3 / S4 / S5 cascades through 2 / 3 / ≥ 4 sum-9 columns.

Usage:
    task = AdditionTask(n_digits=5)
    tokens = task.sample(64, torch.Generator().manual_seed(0), train=True)
    labels = task.labels(tokens)          # AdditionLabels, per column
    task.decode(tokens[0])                # '12345+67890=080235'

References:
    Quirke & Barez, "Understanding Addition in Transformers", 2023 (arXiv:2310.13121);
    github.com/PhilipQuirke/verified_transformers (the enrichment and the S0–S5 taxonomy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Int

from tinylens.errors import ConfigError, TokenError, quote
from tinylens.tasks.base import Task, Tokens

DIGITS = tuple(str(d) for d in range(10))
PLUS, EQUALS = "+", "="
SUBTASKS = ("BA", "UC1", "US9")
"""Per-digit tags, in order of difficulty; ``AdditionLabels.subtask`` indexes into this."""
CASES = ("S0", "S1", "S2", "S3", "S4", "S5")
"""Per-question cascade classes; ``AdditionLabels.case`` indexes into this."""
MAX_DIGITS = 20


@dataclass(frozen=True)
class AdditionLabels:
    """Per-example labels. Column tensors are ``[batch, column]``, column 0 = units, n = final carry."""

    base: Int[torch.Tensor, "batch column"]
    """BA: (a_c + b_c) % 10; 0 in the final-carry column."""
    make_carry: Bool[torch.Tensor, "batch column"]
    """MC1: a_c + b_c >= 10."""
    make_sum9: Bool[torch.Tensor, "batch column"]
    """MS9: a_c + b_c == 9."""
    carry_in: Bool[torch.Tensor, "batch column"]
    """A carry enters column c (from any source)."""
    use_carry: Bool[torch.Tensor, "batch column"]
    """UC1: column c-1 made a carry."""
    use_sum9: Bool[torch.Tensor, "batch column"]
    """US9: the carry into c passed through column c-1 summing to 9."""
    cascade_depth: Int[torch.Tensor, "batch column"]
    """How many sum-9 columns the carry into c passed through (0 if none or no carry)."""
    subtask: Int[torch.Tensor, "batch column"]
    """Index into :data:`SUBTASKS` of the hardest sub-task the digit needs."""
    case: Int[torch.Tensor, " batch"]
    """Index into :data:`CASES` of the question's cascade class."""


class AdditionTask(Task):
    """n-digit addition (n = 1…20) with the paper's sum-to-9 enrichment for training batches."""

    name: ClassVar[str] = "addition"

    def __init__(
        self,
        n_digits: int = 5,
        sum9_example_frac: float = 0.2,
        sum9_digit_frac: float = 0.2,
        min_operand: int = 0,
    ) -> None:
        """
        Args:
            n_digits: operand length; operands are zero-padded to it, the answer has n_digits + 1.
            min_operand: the smallest operand drawn (e.g. 100 for InversionView's 3-digit addition,
                whose operands run 100–999); 0 draws every digit uniformly.
            sum9_example_frac: fraction of training questions that get enriched with sum-9 columns.
            sum9_digit_frac: in an enriched question, the chance each column is forced to sum to 9.
                The paper enriches 20% of batches at 20% of columns; enriching 20% of questions gives
                the same rate of cascades with less batch-to-batch variance.
        """
        if (
            isinstance(n_digits, bool)
            or not isinstance(n_digits, int)
            or not 1 <= n_digits <= MAX_DIGITS
        ):
            raise ConfigError(f"addition n_digits must be an integer 1–{MAX_DIGITS}, got {n_digits!r}")
        for field, value in (
            ("sum9_example_frac", sum9_example_frac),
            ("sum9_digit_frac", sum9_digit_frac),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"addition {field} must be in [0, 1], got {value!r}")
        top = 10**n_digits - 1
        if (
            isinstance(min_operand, bool)
            or not isinstance(min_operand, int)
            or not 0 <= min_operand <= top
            or (min_operand and n_digits > 18)  # operands as int64 below
        ):
            raise ConfigError(
                f"addition min_operand must be an integer 0–{top} (and 0 beyond 18 digits), "
                f"got {min_operand!r}"
            )
        self.n_digits = n_digits
        self.min_operand = min_operand
        self.sum9_example_frac = float(sum9_example_frac)
        self.sum9_digit_frac = float(sum9_digit_frac)
        self._vocab = (*DIGITS, PLUS, EQUALS)
        n = n_digits
        self._answer_positions = torch.arange(2 * n + 2, 3 * n + 3)

    # -- Task contract ----------------------------------------------------------------------------

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab

    @property
    def seq_len(self) -> int:
        return 3 * self.n_digits + 3

    @property
    def answer_positions(self) -> Int[torch.Tensor, " answer"]:
        return self._answer_positions

    @property
    def answer_names(self) -> tuple[str, ...]:
        return tuple(f"A{c}" for c in range(self.n_digits, -1, -1))

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "n_digits": self.n_digits,
            "sum9_example_frac": self.sum9_example_frac,
            "sum9_digit_frac": self.sum9_digit_frac,
        }
        if self.min_operand:  # only when set: the runs trained before it keep their identity
            options["min_operand"] = self.min_operand
        return options

    def sample(self, n: int, generator: torch.Generator, *, train: bool = False) -> Tokens:
        """Uniform random operands (every digit uniform, or every number from ``min_operand``);
        ``train=True`` adds sum-9 enrichment (where it keeps the operand in range)."""
        nd = self.n_digits
        if self.min_operand:
            a = self._digits(torch.randint(self.min_operand, 10**nd, (n,), generator=generator))
            b = self._digits(torch.randint(self.min_operand, 10**nd, (n,), generator=generator))
        else:
            a = torch.randint(0, 10, (n, nd), generator=generator)  # [batch, column], units first
            b = torch.randint(0, 10, (n, nd), generator=generator)
        if train and self.sum9_example_frac > 0 and self.sum9_digit_frac > 0:
            enriched = torch.rand(n, 1, generator=generator) < self.sum9_example_frac
            forced = torch.rand(n, nd, generator=generator) < self.sum9_digit_frac
            changed = torch.where(enriched & forced, 9 - a, b)
            b = torch.where(self._in_range(changed)[:, None], changed, b)
        return self.assemble(a, b)

    def _digits(self, numbers: Int[torch.Tensor, " batch"]) -> Int[torch.Tensor, "batch column"]:
        """Numbers → their ``n_digits`` digits, column 0 = units."""
        powers = 10 ** torch.arange(self.n_digits)
        return (numbers[:, None] // powers) % 10

    def _in_range(self, digits: Int[torch.Tensor, "batch column"]) -> torch.Tensor:
        """Bool ``[batch]``: whether the operand is at least ``min_operand``."""
        if not self.min_operand:
            return torch.ones(len(digits), dtype=torch.bool)
        return (digits * 10 ** torch.arange(self.n_digits)).sum(1) >= self.min_operand

    def encode(self, text: str) -> Int[torch.Tensor, " pos"]:
        nd = self.n_digits
        expected = f"{'D' * nd}+{'D' * nd}={'D' * (nd + 1)}"
        if len(text) != self.seq_len:
            raise TokenError(
                f"{quote(text)} has {len(text)} characters; a {nd}-digit addition sequence has "
                f"{self.seq_len} ({expected}, D a digit)"
            )
        ids = []
        for pos, char in enumerate(text):
            want_plus, want_eq = pos == nd, pos == 2 * nd + 1
            ok = (char == PLUS) if want_plus else (char == EQUALS) if want_eq else char in DIGITS
            if not ok:
                wanted = "'+'" if want_plus else "'='" if want_eq else "a digit"
                raise TokenError(
                    f"{char!r} at position {pos} of {quote(text)} should be {wanted}; "
                    f"the format is {expected}"
                )
            ids.append(self._vocab.index(char))
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, tokens: Int[torch.Tensor, " pos"]) -> str:
        ids = [int(t) for t in tokens]
        if any(not 0 <= i < len(self._vocab) for i in ids):
            raise TokenError(f"token ids {ids} are outside the addition vocabulary (0–11)")
        return "".join(self._vocab[i] for i in ids)

    def parse_prompt(self, text: str) -> Int[torch.Tensor, " prompt"]:
        """``'123+45='`` → tokens of ``00123+00045=``; operands of 1…n_digits digits are accepted."""
        nd = self.n_digits
        example = f"{'1234567890' * 2:.{nd}}+{'9876543210' * 2:.{nd}}="
        question = text.strip()
        if not question.endswith(EQUALS):
            raise TokenError(f"{quote(text)} is not a question: it must end with '=' (e.g. {example})")
        body = question[:-1]
        for pos, char in enumerate(body):
            if char not in DIGITS and char != PLUS:
                raise TokenError(
                    f"{char!r} at position {pos} of {quote(text)} is not a digit or '+'; "
                    f"a question looks like {example}"
                )
        operands = body.split(PLUS)
        if len(operands) != 2 or not all(operands):
            raise TokenError(f"{quote(text)} must be two numbers joined by one '+', e.g. {example}")
        for operand in operands:
            if len(operand) > nd:
                raise TokenError(
                    f"operand {quote(operand)} has {len(operand)} digits; this task adds numbers of "
                    f"at most {nd} digits"
                )
            if int(operand) < self.min_operand:
                raise TokenError(
                    f"operand {quote(operand)} is below {self.min_operand}, the smallest operand "
                    "this task was set to"
                )
        padded = f"{operands[0].zfill(nd)}+{operands[1].zfill(nd)}="
        return torch.tensor([self._vocab.index(c) for c in padded], dtype=torch.int64)

    def solve(self, prompt: Int[torch.Tensor, "batch prompt"]) -> Tokens:
        nd = self.n_digits
        a = prompt[:, :nd].flip(1)
        b = prompt[:, nd + 1 : 2 * nd + 1].flip(1)
        return self.assemble(a, b)

    def token_groups(self, tokens: Tokens) -> dict[str, Bool[torch.Tensor, "batch answer"]]:
        """One mask per sub-task tag (BA, UC1, US9), over answer tokens in answer order."""
        subtask = self.labels(tokens).subtask.flip(1)  # column order → answer order (MS first)
        return {name: subtask == i for i, name in enumerate(SUBTASKS)}

    def question_groups(self, tokens: Tokens) -> dict[str, Bool[torch.Tensor, " batch"]]:
        """One mask per cascade class S0…S5."""
        case = self.labels(tokens).case
        return {name: case == i for i, name in enumerate(CASES)}

    def sample_case(self, case: int, n: int, generator: torch.Generator) -> Tokens:
        """``n`` questions of one cascade class (index into :data:`CASES`): a curated test set.

        Proposals plant a carry followed by the class's run of sum-9 columns at a random column in
        otherwise random digits; rejection keeps those whose class is exactly ``case``. Within a
        class the questions are varied but not uniformly distributed.
        """
        nd = self.n_digits
        depth = case - 1  # sum-9 columns after the carry; S5 means at least 4
        if not 0 <= case < len(CASES) or depth > nd - 1:
            raise ConfigError(
                f"class {case} does not exist for {nd}-digit addition; valid: 0–{min(5, nd)}"
            )
        kept: list[torch.Tensor] = []
        while sum(len(k) for k in kept) < n:
            a = torch.randint(0, 10, (4 * n, nd), generator=generator)
            b = torch.randint(0, 10, (4 * n, nd), generator=generator)
            if case == 0:  # no column may carry: draw b_c ≤ 9 - a_c
                b = (torch.rand(4 * n, nd, generator=generator) * (10 - a)).long()
            elif depth >= 0:
                start = torch.randint(0, nd - depth, (4 * n,), generator=generator)
                for row, c0 in enumerate(start.tolist()):
                    a[row, c0] = int(torch.randint(1, 10, (1,), generator=generator))
                    b[row, c0] = int(torch.randint(10 - int(a[row, c0]), 10, (1,), generator=generator))
                    cols = range(c0 + 1, c0 + 1 + depth)
                    b[row, list(cols)] = 9 - a[row, list(cols)]
            tokens = self.assemble(a, b)
            in_range = self._in_range(a) & self._in_range(b)
            kept.append(tokens[(self.labels(tokens).case == case) & in_range])
        return torch.cat(kept)[:n]

    # -- labels -----------------------------------------------------------------------------------

    def operands(self, tokens: Tokens) -> tuple[Int[torch.Tensor, "batch column"], ...]:
        """The two operands' digits, ``[batch, n_digits]`` each, column 0 = units."""
        nd = self.n_digits
        return tokens[:, :nd].flip(1), tokens[:, nd + 1 : 2 * nd + 1].flip(1)

    def labels(self, tokens: Tokens) -> AdditionLabels:
        """Every per-digit and per-question label of :class:`AdditionLabels`, computed from operands."""
        self.check_tokens(tokens)
        a, b = self.operands(tokens)
        batch, nd = a.shape
        pair_sum = torch.cat([a + b, torch.zeros(batch, 1, dtype=a.dtype)], dim=1)  # [batch, nd+1]
        make_carry = pair_sum >= 10
        make_sum9 = pair_sum == 9
        carry_in = torch.zeros_like(make_carry)
        use_carry = torch.zeros_like(make_carry)
        use_sum9 = torch.zeros_like(make_carry)
        depth = torch.zeros_like(pair_sum)
        for c in range(1, nd + 1):
            use_carry[:, c] = make_carry[:, c - 1]
            use_sum9[:, c] = make_sum9[:, c - 1] & carry_in[:, c - 1]
            carry_in[:, c] = use_carry[:, c] | use_sum9[:, c]
            depth[:, c] = torch.where(use_sum9[:, c], depth[:, c - 1] + 1, 0)
        subtask = torch.where(use_sum9, 2, torch.where(use_carry, 1, 0))
        max_depth = depth.max(dim=1).values
        case = torch.where(make_carry.any(dim=1), 1 + max_depth.clamp(max=4), 0)
        return AdditionLabels(
            base=pair_sum % 10,
            make_carry=make_carry,
            make_sum9=make_sum9,
            carry_in=carry_in,
            use_carry=use_carry,
            use_sum9=use_sum9,
            cascade_depth=depth,
            subtask=subtask,
            case=case,
        )

    # -- helpers ----------------------------------------------------------------------------------

    def assemble(
        self, a: Int[torch.Tensor, "batch column"], b: Int[torch.Tensor, "batch column"]
    ) -> Tokens:
        """Operand digits (units first) → full token sequences with the correct answer."""
        batch, nd = a.shape
        total = torch.empty(batch, nd + 1, dtype=torch.int64)  # [batch, column]
        carry = torch.zeros(batch, dtype=torch.int64)
        for c in range(nd):
            s = a[:, c] + b[:, c] + carry
            total[:, c] = s % 10
            carry = s // 10
        total[:, nd] = carry
        plus = torch.full((batch, 1), self._vocab.index(PLUS), dtype=torch.int64)
        equals = torch.full((batch, 1), self._vocab.index(EQUALS), dtype=torch.int64)
        # written most significant digit first, as the paper does
        return torch.cat([a.flip(1), plus, b.flip(1), equals, total.flip(1)], dim=1).long()
