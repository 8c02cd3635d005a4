"""Scoring in batches: the same result as one batch, with running totals that do not grow."""

from __future__ import annotations

import math

import pytest
import torch

from tinylens.evaluation import EvalResult, EvalTally, evaluate, evaluate_batches
from tinylens.model import ModelConfig, build_model
from tinylens.tasks import AdditionTask, CountingTask, MazeTask, SeqcontTask, Task


def tiny_model(task: Task) -> torch.nn.Module:
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32)
    return build_model(cfg.sized(d_vocab=task.d_vocab, n_ctx=task.seq_len), seed=0).eval()


def assert_same(batched: EvalResult, whole: EvalResult) -> None:
    """Counts and accuracies identical, losses equal up to summation order."""
    assert (batched.n, batched.exact) == (whole.n, whole.exact)
    assert math.isclose(batched.loss, whole.loss, rel_tol=1e-5)
    for name in ("positions", "token_groups", "question_groups"):
        got, want = getattr(batched, name), getattr(whole, name)
        assert list(got) == list(want), name
        for key in want:
            assert (got[key].acc, got[key].count) == pytest.approx(
                (want[key].acc, want[key].count), nan_ok=True, rel=0, abs=0
            ), (name, key)
            if want[key].count:
                assert math.isclose(got[key].loss, want[key].loss, rel_tol=1e-5), (name, key)
            else:
                assert math.isnan(got[key].loss)


@pytest.mark.parametrize(
    "task",
    [AdditionTask(), CountingTask(), MazeTask(grid=3), SeqcontTask()],
    ids=["addition", "counting", "maze", "seqcont"],
)
@pytest.mark.parametrize("batch", [7, 100])
def test_batched_evaluation_equals_one_batch(task: Task, batch: int) -> None:
    model = tiny_model(task)
    tokens = task.sample(200, torch.Generator().manual_seed(0))
    whole = evaluate(model, task, tokens)
    assert_same(evaluate_batches(model, task, tokens.split(batch)), whole)


def test_a_slot_no_question_uses_is_empty_in_batches_too() -> None:
    task = MazeTask(grid=3)  # short paths leave the last answer slots unused
    model = tiny_model(task)
    tokens = task.sample(40, torch.Generator().manual_seed(1))
    whole = evaluate(model, task, tokens)
    assert any(score.count < 40 for score in whole.positions.values())
    assert_same(evaluate_batches(model, task, tokens.split(3)), whole)


def test_the_tally_keeps_only_numbers_and_reads_batches_lazily() -> None:
    task = AdditionTask()
    model = tiny_model(task)
    seen: list[int] = []

    def batches():
        rng = torch.Generator().manual_seed(0)
        for i in range(20):
            seen.append(i)
            yield task.sample(16, rng)

    tally = EvalTally(task)
    for i, tokens in enumerate(batches()):
        assert seen[-1] == i  # one batch at a time, never the whole stream
        tally.score(model, tokens)
    result = tally.result()
    assert result.n == 320
    # running totals only: nothing held grows with the number of batches
    for total in (tally.overall, *tally.positions.values(), *tally.question_groups.values()):
        assert all(isinstance(v, int | float) for v in vars(total).values())
    assert not any(isinstance(v, torch.Tensor) for v in vars(tally).values())
