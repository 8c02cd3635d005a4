"""Scoring a model on a task: per-token answer loss, exact match, per-position and per-group metrics.

Scoring is teacher-forced: the logits at ``p - 1`` predict the answer token at ``p``. A question counts
as exactly right when every answer token is the argmax; that is the same as greedy decoding getting the
whole answer right (a wrong token is the first place greedy decoding could diverge). Per-digit accuracy
is the teacher-forced one, the paper's per-digit measure. :func:`greedy_answer` decodes for real.

:func:`evaluate` scores tokens already in memory; :func:`evaluate_batches` scores a stream of batches
(e.g. sampled one at a time) in memory that does not grow with the number of questions, and gives the
same result as :func:`evaluate` on all of them at once (counts and accuracies equal, losses to
rounding).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

from tinylens.config import derive_seed
from tinylens.tasks.base import Task, Tokens

EVAL_BATCH = 512
"""Questions scored per forward pass by :func:`evaluate_batches` and the CLI's ``eval``."""


@dataclass(frozen=True)
class GroupScore:
    """Loss and accuracy over one subset of answer tokens or questions."""

    loss: float
    """Mean cross-entropy (nats) over the group's answer tokens; NaN if the group is empty."""
    acc: float
    """Token accuracy (token groups) or exact-match rate (question groups); NaN if empty."""
    count: int
    """How many tokens (token groups) or questions (question groups) the group holds."""


@dataclass(frozen=True)
class EvalResult:
    """A model's scores on a set of questions."""

    n: int
    """Questions scored."""
    loss: float
    """Mean cross-entropy over all answer tokens, nats."""
    exact: float
    """Fraction of questions with every answer token right."""
    positions: dict[str, GroupScore] = field(default_factory=dict)
    """Per answer position, keyed by the task's ``answer_names``."""
    token_groups: dict[str, GroupScore] = field(default_factory=dict)
    """Per task token group (e.g. the BA / UC1 / US9 sub-task of each digit)."""
    question_groups: dict[str, GroupScore] = field(default_factory=dict)
    """Per task question group (e.g. cascade class S0…S5); ``acc`` is exact match."""

    def as_metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat ``{"eval/loss": …, "eval/acc/A3": …}`` dict; empty groups are left out."""
        out = {f"{prefix}/loss": self.loss, f"{prefix}/acc": self.exact}
        for groups in (self.positions, self.token_groups, self.question_groups):
            for name, score in groups.items():
                if score.count:
                    out[f"{prefix}/loss/{name}"] = score.loss
                    out[f"{prefix}/acc/{name}"] = score.acc
        return out

    def to_dict(self) -> dict[str, object]:
        def table(groups: dict[str, GroupScore]) -> dict[str, dict[str, float]]:
            return {k: {"loss": v.loss, "acc": v.acc, "count": v.count} for k, v in groups.items()}

        return {
            "n": self.n,
            "loss": self.loss,
            "exact": self.exact,
            "positions": table(self.positions),
            "token_groups": table(self.token_groups),
            "question_groups": table(self.question_groups),
        }


def masked_mean(values: Float[torch.Tensor, ...], valid: Bool[torch.Tensor, ...]) -> torch.Tensor:
    """Mean of ``values`` where ``valid``; exactly ``values.mean()`` when everything is valid, so
    fixed-length tasks keep the same arithmetic (and bits) as an unmasked mean."""
    return values.mean() if bool(valid.all()) else values[valid].mean()


def answer_logits(
    logits: Float[torch.Tensor, "batch pos d_vocab"], task: Task
) -> Float[torch.Tensor, "batch answer d_vocab"]:
    """The logits that predict the answer tokens (one position before each)."""
    return logits[:, task.answer_positions - 1]


def answer_loss(
    logits: Float[torch.Tensor, "batch pos d_vocab"], tokens: Tokens, task: Task
) -> Float[torch.Tensor, "batch answer"]:
    """Per-token cross-entropy (nats) of the answer tokens."""
    pred = answer_logits(logits, task)  # [batch, answer, d_vocab]
    target = tokens[:, task.answer_positions]  # [batch, answer]
    return F.cross_entropy(pred.transpose(1, 2), target, reduction="none")


@torch.no_grad()
def score_answers(
    model: torch.nn.Module, task: Task, tokens: Tokens, batch_size: int = 1024
) -> tuple[Float[torch.Tensor, "batch answer"], Bool[torch.Tensor, "batch answer"]]:
    """Teacher-forced per-answer-token loss and correctness, in batches, run on the model's device
    and returned on the CPU."""
    device = next(model.parameters(), torch.empty(0)).device
    losses, correct = [], []
    for cpu_chunk in tokens.split(batch_size):
        chunk = cpu_chunk.to(device)
        logits = model(chunk)
        losses.append(answer_loss(logits, chunk, task).cpu())
        pred = answer_logits(logits, task).argmax(-1)
        correct.append((pred == chunk[:, task.answer_positions]).cpu())
    return torch.cat(losses), torch.cat(correct)


def _score(loss: torch.Tensor, hit: torch.Tensor, count: int) -> GroupScore:
    if count == 0:
        return GroupScore(float("nan"), float("nan"), 0)
    return GroupScore(float(loss.mean()), float(hit.float().mean()), count)


def evaluate(model: torch.nn.Module, task: Task, tokens: Tokens) -> EvalResult:
    """Score ``model`` on ``tokens`` (full sequences of ``task``), overall and by position and group.

    Answer slots an example does not use (``task.answer_valid``) count neither for loss nor accuracy;
    a question is exactly right when every slot it uses is.
    """
    task.check_tokens(tokens)
    return summarize(task, tokens, *score_answers(model, task, tokens))


def evaluate_logits(
    task: Task, tokens: Tokens, logits: Float[torch.Tensor, "batch pos d_vocab"]
) -> EvalResult:
    """The same scores from logits already computed (e.g. by an ablated or patched run)."""
    task.check_tokens(tokens)
    loss = answer_loss(logits, tokens, task)
    correct = answer_logits(logits, task).argmax(-1) == tokens[:, task.answer_positions]
    return summarize(task, tokens, loss, correct)


def summarize(
    task: Task,
    tokens: Tokens,
    loss: Float[torch.Tensor, "batch answer"],
    correct: Bool[torch.Tensor, "batch answer"],
) -> EvalResult:
    """Aggregate per-token loss and correctness by position and by the task's groups (valid slots)."""
    valid = task.answer_valid(tokens)  # [batch, answer]
    exact = (correct | ~valid).all(dim=1)  # [batch]
    positions = {}
    for i, name in enumerate(task.answer_names):
        used = valid[:, i]
        if bool(used.all()):  # the plain column: same arithmetic as for fixed-length answers
            positions[name] = _score(loss[:, i], correct[:, i], len(used))
        else:
            positions[name] = _score(loss[used, i], correct[used, i], int(used.sum()))
    token_groups = {}
    for name, group in task.token_groups(tokens).items():
        mask = group & valid
        token_groups[name] = _score(loss[mask], correct[mask], int(mask.sum()))
    question_groups = {
        name: _score(loss[mask], exact[mask], int(mask.sum()))
        for name, mask in task.question_groups(tokens).items()
    }
    return EvalResult(
        n=tokens.shape[0],
        loss=float(masked_mean(loss, valid)),
        exact=float(exact.float().mean()),
        positions=positions,
        token_groups=token_groups,
        question_groups=question_groups,
    )


@dataclass
class _Sum:
    """Running totals of one group: loss summed in float64, hits and counts as exact integers."""

    loss: float = 0.0
    loss_terms: int = 0
    hits: int = 0
    count: int = 0

    def add(self, loss: torch.Tensor, hit: torch.Tensor) -> None:
        self.loss += float(loss.double().sum())
        self.loss_terms += loss.numel()
        self.hits += int(hit.sum())
        self.count += hit.numel()

    def score(self) -> GroupScore:
        if self.count == 0:
            return GroupScore(float("nan"), float("nan"), 0)
        return GroupScore(self.loss / self.loss_terms, _rate(self.hits, self.count), self.count)


def _rate(hits: int, count: int) -> float:
    # float32 division, as in `hit.float().mean()`: the same value whether or not in batches
    return float(torch.tensor(hits, dtype=torch.float32) / count)


class EvalTally:
    """Accumulates per-token scores batch by batch into an :class:`EvalResult`.

    Grouping is the same as :func:`summarize`'s: overall loss and per-position scores over the slots
    each question uses, token groups over used slots, question groups over whole questions.
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.n = 0
        self.n_exact = 0
        self.overall = _Sum()
        self.positions = {name: _Sum() for name in task.answer_names}
        self.token_groups: dict[str, _Sum] = {}
        self.question_groups: dict[str, _Sum] = {}

    def score(self, model: torch.nn.Module, tokens: Tokens) -> None:
        """Run ``model`` on one batch of full sequences and count its scores."""
        self.task.check_tokens(tokens)
        self.add(tokens, *score_answers(model, self.task, tokens))

    def add(
        self,
        tokens: Tokens,
        loss: Float[torch.Tensor, "batch answer"],
        correct: Bool[torch.Tensor, "batch answer"],
    ) -> None:
        """Count one batch: its tokens and their per-answer-token loss and correctness."""
        valid = self.task.answer_valid(tokens)  # [batch, answer]
        exact = (correct | ~valid).all(dim=1)  # [batch]
        self.n += tokens.shape[0]
        self.n_exact += int(exact.sum())
        self.overall.add(loss[valid], correct[valid])
        for i, name in enumerate(self.task.answer_names):
            used = valid[:, i]
            self.positions[name].add(loss[used, i], correct[used, i])
        for name, group in self.task.token_groups(tokens).items():
            mask = group & valid
            self.token_groups.setdefault(name, _Sum()).add(loss[mask], correct[mask])
        for name, mask in self.task.question_groups(tokens).items():
            # a question group's loss counts every slot of its questions, as summarize does
            self.question_groups.setdefault(name, _Sum()).add(loss[mask], exact[mask])

    def result(self) -> EvalResult:
        return EvalResult(
            n=self.n,
            loss=self.overall.score().loss,
            exact=_rate(self.n_exact, self.n) if self.n else float("nan"),
            positions={k: v.score() for k, v in self.positions.items()},
            token_groups={k: v.score() for k, v in self.token_groups.items()},
            question_groups={k: v.score() for k, v in self.question_groups.items()},
        )


def evaluate_batches(
    model: torch.nn.Module, task: Task, batches: Iterable[Int[torch.Tensor, "_batch pos"]]
) -> EvalResult:
    """Score ``model`` on every batch of ``batches`` (full sequences of ``task``), keeping only
    running totals: memory does not grow with the number of batches. The result equals
    :func:`evaluate` on the batches concatenated (counts and accuracies exactly, losses to rounding).
    Batches may differ in size (hence the unchecked ``_batch`` axis), not in length.
    """
    tally = EvalTally(task)
    for tokens in batches:
        tally.score(model, tokens)
    return tally.result()


@torch.no_grad()
def greedy_answer(
    model: torch.nn.Module, task: Task, prompt: Int[torch.Tensor, "batch prompt"]
) -> Int[torch.Tensor, "batch answer"]:
    """Decode the answer one token at a time, always taking the most likely token.

    For tasks whose answers end in a stop token (``task.answer_end``), a row that has written it is
    done: it is no longer run, and its remaining slots hold the task's padding, as in the data.
    """
    n_answer = len(task.answer_positions)
    end = task.answer_end
    answer = torch.full((prompt.shape[0], n_answer), end[1] if end else 0, dtype=prompt.dtype)
    active = torch.ones(prompt.shape[0], dtype=torch.bool)
    for i in range(n_answer):
        if not active.any():
            break
        seq = torch.cat([prompt, answer[:, :i]], dim=1)[active]
        answer[active, i] = model(seq)[:, -1].argmax(-1)
        if end is not None:
            active &= answer[:, i] != end[0]
    return answer


@dataclass(frozen=True)
class FreshEval:
    """Scores on fresh questions (what ``tinylens eval`` prints)."""

    result: EvalResult
    """Teacher-forced: exact match, loss, per answer position and per group."""
    generation: dict[str, float]
    """The task's greedy-decoding metrics (e.g. a maze's valid-path rate), means over the
    questions; empty for tasks that have none."""
    seed: int


def evaluate_fresh(model: torch.nn.Module, task: Task, n: int, seed: int) -> FreshEval:
    """Score ``model`` on ``n`` fresh questions of ``task`` drawn from ``seed``, :data:`EVAL_BATCH`
    at a time; the same ``n`` and ``seed`` give the same questions as ``tinylens eval``."""
    rng = torch.Generator().manual_seed(derive_seed(seed, "cli-eval"))
    tally = EvalTally(task)
    generated = dict.fromkeys(task.generation_metric_names, 0.0)
    for start in range(0, n, EVAL_BATCH):
        tokens = task.sample(min(EVAL_BATCH, n - start), rng)
        tally.score(model, tokens)
        if generated:  # decode for real: judge what the model writes
            prompt = tokens[:, : task.prompt_len]
            answer = greedy_answer(model, task, prompt)
            for name, value in task.generation_metrics(prompt, answer).items():
                generated[name] += value * len(tokens)  # metrics are means over questions
    return FreshEval(tally.result(), {k: total / n for k, total in generated.items()}, seed)
