"""The seqcont task: the paper's template, families, corrupted prompts and clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from tinylens.errors import ConfigError, TokenError, UnknownNameError
from tinylens.tasks import make_task
from tinylens.tasks.seqcont import FAMILIES, SeqcontTask, filler_words


@pytest.fixture(scope="module")
def task() -> SeqcontTask:
    return SeqcontTask()


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_papers_prompt_round_trips(task) -> None:
    text = "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in 5"
    tokens = task.encode(text)
    assert task.decode(tokens) == text
    assert len(tokens) == task.seq_len == 24
    prompt = task.parse_prompt(text.rsplit(" ", 1)[0])
    assert torch.equal(prompt, tokens[:-1])
    assert task.decode(task.solve(prompt[None])[0]) == text


def test_samples_continue_one_family_in_order(task) -> None:
    tokens = task.sample(400, rng())
    task.check_tokens(tokens)
    families = task.families_of(tokens)
    assert set(families) == set(FAMILIES)  # every family drawn
    for row, family in zip(tokens, families, strict=True):
        members = [task.vocab[int(t)] for t in row[task.member_positions]]
        start = FAMILIES[family].index(members[0])
        assert members == list(FAMILIES[family][start : start + task.n_items])
        fillers = [int(t) for t in row[::5]]
        assert len(set(fillers)) == task.n_items  # distinct fillers within a prompt
    assert torch.equal(task.solve(tokens[:, :-1]), tokens)
    assert torch.equal(task.sample(50, rng(3)), task.sample(50, rng(3)))


def test_one_family_and_the_contrast_answer(task) -> None:
    tokens = task.sample(64, rng(), family="months")
    assert set(task.families_of(tokens)) == {"months"}
    for row, contrast, answer in zip(tokens, task.contrast(tokens), task.answer(tokens), strict=True):
        assert task.successor(int(contrast)) == int(answer)
        assert int(contrast) == int(row[-6])


def test_refilled_prompts_keep_the_sequence_and_change_the_fillers(task) -> None:
    tokens = task.sample(200, rng())
    refilled = task.refill(tokens, rng(1))
    fillers = torch.arange(task.n_items) * 5
    kept = torch.ones(task.seq_len, dtype=torch.bool)
    kept[fillers] = False
    assert torch.equal(refilled[:, kept], tokens[:, kept])  # members, template, answer
    assert (refilled[:, fillers] != tokens[:, fillers]).any(1).float().mean() > 0.9
    assert torch.equal(task.solve(refilled[:, :-1]), refilled)  # still a valid sequence
    assert torch.equal(refilled, task.refill(tokens, rng(1)))  # seeded


def test_corrupted_prompts_keep_everything_but_the_shown_members(task) -> None:
    tokens = task.sample(200, rng())
    corrupt = task.corrupt(tokens, rng(1))
    shown = task.member_positions[:-1]
    others = torch.ones(task.seq_len, dtype=torch.bool)
    others[shown] = False
    assert torch.equal(corrupt[:, others], tokens[:, others])
    assert task.families_of(corrupt) == task.families_of(tokens)
    changed = (corrupt[:, shown] != tokens[:, shown]).any(1).float().mean()
    assert changed > 0.9
    # members drawn at random: the shown run is rarely still consecutive
    in_order = []
    for row, family in zip(corrupt, task.families_of(corrupt), strict=True):
        index = [FAMILIES[family].index(task.vocab[int(t)]) for t in row[shown]]
        in_order.append(all(b == a + 1 for a, b in itertools.pairwise(index)))
    assert sum(in_order) < 0.05 * len(in_order)


def test_filler_words_are_shipped_and_distinct_from_members() -> None:
    words = filler_words()
    assert len(words) >= 50 and len(set(words)) == len(words)
    members = {m for f in FAMILIES.values() for m in f}
    assert not members & set(words)
    task = SeqcontTask()
    assert len(set(task.vocab)) == len(task.vocab)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "Van done in 1. Hat done at 2. Ring done in 3. Desk done in 4. Sun done in 5",
            "'at' at position 7",
        ),
        (
            "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in Foo",
            "'Foo' at position 23",
        ),
        ("Qqq done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in 5", "filler word"),
        ("Van done in 1. Hat done in 2", "has 9 words"),
    ],
)
def test_malformed_text_names_the_token_and_position(task, text, message) -> None:
    with pytest.raises(TokenError, match=message):
        task.encode(text)


def test_bad_options_and_names_are_clear() -> None:
    with pytest.raises(UnknownNameError, match="seqcont family 'weeks'"):
        SeqcontTask(families=["weeks"])
    with pytest.raises(UnknownNameError, match="seqcont family"):
        SeqcontTask().sample(2, rng(), family="planets")
    with pytest.raises(ConfigError, match="fewer than n_items=8"):
        SeqcontTask(n_items=8)  # the week has 7 days
    with pytest.raises(ConfigError, match="at least one family"):
        SeqcontTask(families=[])
    task = SeqcontTask()
    with pytest.raises(TokenError, match="no successor"):
        task.successor(task.vocab.index("December"))
    with pytest.raises(TokenError, match="not a member"):
        task.successor(task.vocab.index("Van"))
    assert make_task("seqcont", {"n_items": 3}).seq_len == 14


PROMPT = "Van done in {}. Hat done in {}. Ring done in {}. Desk done in {}. Sun done in"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (("12", "19", "14", "15"), "do not continue one family in order; after '12' a numerals"),
        (("12", "March", "14", "15"), "12, March, 14, 15, do not continue one family"),
        (("March", "April", "June", "July"), "shows March, April, May, June"),
        (("17", "18", "19", "20"), "'20' is the last of the numerals family"),
    ],
)
def test_a_prompt_must_continue_one_family_in_order(task, members, message) -> None:
    with pytest.raises(TokenError, match=message):
        task.parse_prompt(PROMPT.format(*members))


def test_consistent_prompts_of_every_family_parse(task) -> None:
    for family, order in FAMILIES.items():
        prompt = task.parse_prompt(PROMPT.format(*order[2:6]))
        assert task.vocab[int(task.solve(prompt[None])[0, -1])] == order[6], family


def test_errors_quote_long_input_cut() -> None:
    task = SeqcontTask()
    long_word = "x" * 10_000
    for call in (task.encode, task.parse_prompt):
        with pytest.raises(TokenError) as caught:
            call(f"Van done in {long_word}")
        assert len(str(caught.value)) < 300 and "(10012 characters)" in str(caught.value)
    with pytest.raises(TokenError) as caught:
        task.parse_prompt(PROMPT.format("1", "2", "3", long_word))
    assert len(str(caught.value)) < 300 and "(10000 characters)" in str(caught.value)
