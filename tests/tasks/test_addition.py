"""The addition task: format, generator, enrichment, and labels against a brute-force definition."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylens.errors import ConfigError, TokenError
from tinylens.tasks import CASES, SUBTASKS, AdditionTask, make_task


def digit(x: int, c: int) -> int:
    return (x // 10**c) % 10


def brute_force_labels(a: int, b: int, n: int) -> dict[str, list]:
    """Labels from their definitions on Python integers, column by column (units = column 0)."""
    cols = range(n + 1)

    def pair(c: int) -> int:
        return digit(a, c) + digit(b, c) if c < n else 0

    def carry_in(c: int) -> bool:  # does column c receive a carry? Straight from the integers.
        return (a % 10**c) + (b % 10**c) >= 10**c

    def depth(c: int) -> int:  # sum-9 columns the carry into c crossed on its way up
        if not carry_in(c):
            return 0
        k = 0
        while pair(c - 1 - k) == 9:
            k += 1
        return k

    us9 = [c > 0 and carry_in(c) and pair(c - 1) == 9 for c in cols]
    uc1 = [c > 0 and pair(c - 1) >= 10 for c in cols]
    any_carry = any(pair(c) >= 10 for c in range(n))
    max_depth = max(depth(c) for c in cols)
    return {
        "base": [pair(c) % 10 for c in cols],
        "make_carry": [pair(c) >= 10 for c in cols],
        "make_sum9": [pair(c) == 9 for c in cols],
        "carry_in": [carry_in(c) for c in cols],
        "use_carry": uc1,
        "use_sum9": us9,
        "cascade_depth": [depth(c) for c in cols],
        "subtask": [2 if us9[c] else 1 if uc1[c] else 0 for c in cols],
        "case": 0 if not any_carry else 1 + min(max_depth, 4),
    }


def question(a: int, b: int, n: int) -> str:
    return f"{a:0{n}d}+{b:0{n}d}={a + b:0{n + 1}d}"


@st.composite
def operands(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(1, 20))
    # bias toward digits 0, 9 and 5 so that carries and long cascades are common
    digits = st.lists(st.sampled_from([0, 1, 4, 5, 8, 9, 9, 9]), min_size=n, max_size=n)
    a = int("".join(map(str, draw(digits))))
    b = int("".join(map(str, draw(digits))))
    return a, b, n


@settings(max_examples=300, deadline=None)
@given(operands())
def test_labels_match_brute_force(case: tuple[int, int, int]) -> None:
    a, b, n = case
    task = AdditionTask(n_digits=n)
    labels = task.labels(task.encode(question(a, b, n))[None])
    expected = brute_force_labels(a, b, n)
    for field, want in expected.items():
        got = getattr(labels, field)[0].tolist()
        assert got == want, f"{field} for {a}+{b}: {got} != {want}"


@settings(max_examples=200, deadline=None)
@given(operands())
def test_encode_decode_round_trip(case: tuple[int, int, int]) -> None:
    a, b, n = case
    task = AdditionTask(n_digits=n)
    text = question(a, b, n)
    tokens = task.encode(text)
    assert task.decode(tokens) == text
    assert torch.equal(task.encode(task.decode(tokens)), tokens)
    assert tokens.shape == (task.seq_len,)


@pytest.mark.parametrize(
    ("text", "case"),
    [
        ("00000+00000=000000", "S0"),
        ("00005+00005=000010", "S1"),
        ("50505+50505=101010", "S1"),
        ("00015+00085=000100", "S2"),
        ("00555+00445=001000", "S3"),
        ("09995+00005=010000", "S4"),
        ("99999+00001=100000", "S5"),
        ("00900+00100=001000", "S1"),  # a sum-9 column with no carry into it is no cascade
    ],
)
def test_known_cascade_classes(text: str, case: str) -> None:
    task = AdditionTask()
    assert CASES[int(task.labels(task.encode(text)[None]).case[0])] == case


def test_samples_are_correct_sums_and_seeded() -> None:
    task = AdditionTask(n_digits=7)
    tokens = task.sample(500, torch.Generator().manual_seed(1), train=True)
    again = task.sample(500, torch.Generator().manual_seed(1), train=True)
    other = task.sample(500, torch.Generator().manual_seed(2), train=True)
    assert torch.equal(tokens, again)
    assert not torch.equal(tokens, other)
    for row in tokens[:100]:
        text = task.decode(row)
        a, rest = text.split("+")
        b, total = rest.split("=")
        assert int(a) + int(b) == int(total)


def test_enrichment_adds_sum9_columns_only_in_training() -> None:
    task = AdditionTask(sum9_example_frac=0.5, sum9_digit_frac=0.5)
    rng = torch.Generator().manual_seed(0)
    plain = task.labels(task.sample(20_000, rng)).make_sum9[:, :5].float().mean()
    enriched = task.labels(task.sample(20_000, rng, train=True)).make_sum9[:, :5].float().mean()
    # uniform digits sum to 9 one time in 10; enrichment forces 0.5 × 0.5 of the rest
    assert abs(float(plain) - 0.10) < 0.01
    assert abs(float(enriched) - (0.10 + 0.25 * 0.9)) < 0.01


def test_groups_partition_the_answers() -> None:
    task = AdditionTask()
    tokens = task.sample(1000, torch.Generator().manual_seed(0), train=True)
    token_groups = task.token_groups(tokens)
    assert list(token_groups) == list(SUBTASKS)
    total = sum(m.long() for m in token_groups.values())
    assert bool((total == 1).all())
    question_groups = task.question_groups(tokens)
    assert list(question_groups) == list(CASES)
    assert bool((sum(m.long() for m in question_groups.values()) == 1).all())


def test_groups_are_in_answer_order() -> None:
    task = AdditionTask()
    tokens = task.encode("00015+00085=000100")[None]  # A0: BA, A1: UC1 (5+5 carries), A2: US9
    groups = task.token_groups(tokens)
    names = task.answer_names  # A5 … A0
    assert [names[i] for i in groups["US9"][0].nonzero().flatten().tolist()] == ["A2"]
    assert [names[i] for i in groups["UC1"][0].nonzero().flatten().tolist()] == ["A1"]


def test_parse_prompt_pads_and_solve_answers() -> None:
    task = AdditionTask()
    prompt = task.parse_prompt(" 123+45= ")
    assert task.decode(prompt) == "00123+00045="
    assert task.decode(task.solve(prompt[None])[0]) == "00123+00045=000168"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("12a45+1=", "'a' at position 2"),
        ("123456+1=", "6 digits"),
        ("12345+67890", "must end with '='"),
        ("1+2+3=", "two numbers"),
        ("+1=", "two numbers"),
    ],
)
def test_parse_prompt_rejects_malformed_questions(text: str, fragment: str) -> None:
    with pytest.raises(TokenError, match=fragment):
        AdditionTask().parse_prompt(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("12345+67890=08023", "has 17 characters"),
        ("12345-67890=080235", "position 5"),
        ("12345+67890=08023x", "position 17"),
    ],
)
def test_encode_rejects_malformed_sequences(text: str, fragment: str) -> None:
    with pytest.raises(TokenError, match=fragment):
        AdditionTask().encode(text)


def test_check_tokens_names_the_bad_token() -> None:
    task = AdditionTask()
    tokens = task.sample(3, torch.Generator().manual_seed(0))
    with pytest.raises(TokenError, match="int64"):
        task.labels(tokens.int())
    tokens[1, 4] = 12
    with pytest.raises(TokenError, match="row 1, position 4"):
        task.labels(tokens)
    with pytest.raises(TokenError, match="shape"):
        task.labels(tokens[:, :5])


@pytest.mark.parametrize(
    "options",
    [{"n_digits": 0}, {"n_digits": 21}, {"sum9_digit_frac": 2}, {"sum9_example_frac": "abc"}],
)
def test_bad_options_are_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError):
        make_task("addition", options)


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad options"):
        make_task("addition", {"digits": 5})


@pytest.mark.parametrize("case", range(6))
def test_sample_case_gives_only_that_class(case: int) -> None:
    task = AdditionTask()
    tokens = task.sample_case(case, 200, torch.Generator().manual_seed(case))
    assert tokens.shape == (200, 18)
    assert bool((task.labels(tokens).case == case).all())
    assert len({task.decode(t) for t in tokens}) > 150, "curated questions must vary"


def test_sample_case_rejects_impossible_classes() -> None:
    with pytest.raises(ConfigError, match="valid: 0–2"):
        AdditionTask(n_digits=2).sample_case(4, 10, torch.Generator())


def _values(digits: torch.Tensor) -> torch.Tensor:
    return (digits * 10 ** torch.arange(digits.shape[1])).sum(1)


def test_min_operand_gives_inversionviews_three_digit_addition() -> None:
    task = AdditionTask(n_digits=3, min_operand=100)
    g = torch.Generator().manual_seed(0)
    for train in (True, False):  # enrichment too keeps both operands in 100–999
        a, b = task.operands(task.sample(5000, g, train=train))
        assert int(_values(a).min()) >= 100 and int(_values(b).min()) >= 100
        assert int(_values(a).max()) <= 999 and int(_values(b).max()) <= 999
    cascades = task.sample_case(3, 20, g)
    assert all(int(_values(x).min()) >= 100 for x in task.operands(cascades))
    assert task.decode(task.solve(task.parse_prompt("615+861=")[None])[0]) == "615+861=1476"
    with pytest.raises(TokenError, match="below 100"):
        task.parse_prompt("615+86=")
    assert task.options()["min_operand"] == 100
    assert "min_operand" not in AdditionTask().options()  # earlier runs keep their identity
    for bad in (-1, 1000, True, 1.5):
        with pytest.raises(ConfigError, match="min_operand"):
            make_task("addition", {"n_digits": 3, "min_operand": bad})
    with pytest.raises(ConfigError, match="min_operand"):
        make_task("addition", {"n_digits": 19, "min_operand": 1})
