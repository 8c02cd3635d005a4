"""The counting task: the paper's strings, its labels, the held-out split and clear errors."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from tinylens.config import make_run_config
from tinylens.errors import ConfigError, TokenError
from tinylens.tasks import TASKS, make_task
from tinylens.tasks.counting import LETTERS, CountingTask


@pytest.fixture(scope="module")
def task() -> CountingTask:
    return CountingTask()


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_papers_string_round_trips(task) -> None:
    text = "vvzccvczvvvzvcvc|v:8"
    tokens = task.encode(text)
    assert task.decode(tokens) == text
    assert len(tokens) == task.seq_len == 32
    assert task.vocab[int(tokens[task.query_position])] == "v"
    assert task.vocab[int(tokens[task.query_position + 1])] == ":"
    assert torch.equal(task.parse_prompt("vvzccvczvvvzvcvc|v:"), tokens[:-1])
    assert torch.equal(task.parse_prompt("vvzccvczvvvzvcvc|v"), tokens[:-1])
    assert torch.equal(task.solve(tokens[None, :-1])[0], tokens)  # v occurs 8 times


def test_samples_are_well_formed_and_labelled(task) -> None:
    tokens = task.sample(500, rng(), train=True)
    assert tokens.shape == (500, task.seq_len) and tokens.dtype == torch.int64
    assert torch.equal(task.solve(tokens[:, :-1]), tokens)  # the answer is the true count
    labels = task.labels(tokens)
    for row, text in enumerate(task.decode(t) for t in tokens):
        letters, rest = text.split("|")
        query, answer = rest.split(":")
        counts = Counter(letters)
        assert len(counts) == 3 and all(1 <= c <= 9 for c in counts.values())
        assert counts[query] == int(answer) == int(labels.query_count[row])
        expected = sorted(counts)
        assert [LETTERS[int(i)] for i in labels.letters[row]] == expected
        assert [int(c) for c in labels.counts[row]] == [counts[c] for c in expected]
        assert expected[int(labels.query[row])] == query == LETTERS[int(labels.query_letter[row])]
        assert torch.equal(task.encode(text), tokens[row])
    # letters are shuffled, not grouped: most strings change letter more than twice
    changes = [sum(a != b for a, b in itertools.pairwise(t)) for t in map(task.decode, tokens)]
    assert sum(c > 2 for c in changes) > 0.9 * len(changes)
    assert torch.equal(tokens, task.sample(500, rng(), train=True))  # seeded


def test_training_never_sees_a_held_out_combination(task) -> None:
    train = task.sample(4000, rng(1), train=True)
    test = task.sample(4000, rng(2))
    assert not task.held_out(train).any() and task.held_out(test).all()

    def combinations(tokens: torch.Tensor) -> set[tuple]:
        lab = task.labels(tokens)
        return set(
            zip(
                map(tuple, lab.letters.tolist()),
                map(tuple, lab.counts.tolist()),
                lab.query.tolist(),
                strict=True,
            )
        )

    assert not combinations(train) & combinations(test)
    # about a quarter of all combinations are held out, whatever order their letters come in
    g = rng(4)
    letters = torch.rand(20_000, 26, generator=g).argsort(1)[:, :3]
    counts = torch.randint(1, 10, (20_000, 3), generator=g)
    query = torch.randint(0, 3, (20_000,), generator=g)
    held = task._held_out(letters, counts, query)
    assert 0.23 < float(held.float().mean()) < 0.27
    flipped = task._held_out(letters.flip(1), counts.flip(1), 2 - query)
    assert torch.equal(held, flipped)


def test_every_count_is_drawn(task) -> None:
    groups = task.question_groups(task.sample(2000, rng(5)))
    assert list(groups) == [f"count={c}" for c in range(1, 10)]
    assert all(int(mask.sum()) > 100 for mask in groups.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("aabbcc|a", "':' before its count"),
        ("aabbcc|a:", "count 1–9"),
        ("aabbcc|a:x", "count 1–9"),
        ("aabbcc-a:2", "not a counting question"),
        ("aabbcc|ab:2", "not a counting question"),
        ("aabbcC|a:2", "not lowercase letters"),
        ("aabbccdd|a:2", "has 4 distinct letters"),
        ("aaaaaaaaaabbcc|a:9", "'a' 10 times"),
        ("aabbcc|d:2", "asks for 'd'"),
    ],
)
def test_malformed_strings_are_refused_with_the_reason(task, text, message) -> None:
    with pytest.raises(TokenError, match=message):
        task.encode(text)


def test_options_are_checked_and_registered() -> None:
    assert TASKS["counting"] is CountingTask
    small = make_task("counting", {"n_letters": 2, "max_count": 4})
    assert small.seq_len == 2 * 4 + 5 and small.options() == {"n_letters": 2, "max_count": 4}
    tokens = small.sample(50, rng(), train=True)
    assert int(small.labels(tokens).query_count.max()) <= 4
    for bad in ({"n_letters": 0}, {"max_count": 10}, {"n_letters": True}):
        with pytest.raises(ConfigError, match="counting"):
            make_task("counting", bad)
    cfg = make_run_config("counting", "tiny")
    assert cfg.model.d_vocab == 39 and cfg.model.n_ctx == 32
