"""The inversion study: its pairs and features on the tasks, its claims on hand-made results, and
a tiny end-to-end run."""

from __future__ import annotations

import copy
import math

import torch

from tinylens.analysis import InversionSamples
from tinylens.store import Run
from tinylens.studies import inversion
from tinylens.studies import inversion_analyses as an
from tinylens.studies.inversion import InversionResult, check_claims, study_config
from tinylens.tasks import AdditionTask, CountingTask

ADDITION = AdditionTask(n_digits=3, min_operand=100)
COUNTING = CountingTask()


# -- pairs: what each corruption changes and each control keeps -------------------------------------


def test_counting_pairs_change_only_the_query_count_and_controls_keep_it() -> None:
    pairs = an.counting_pairs(COUNTING, 200, torch.Generator().manual_seed(0))
    clean, corrupt, control = (COUNTING.labels(t) for t in (pairs.clean, pairs.corrupt, pairs.control))
    assert bool((clean.query_count != corrupt.query_count).all())
    assert torch.equal(clean.letters, corrupt.letters) and torch.equal(clean.query, corrupt.query)
    others = torch.ones_like(clean.counts, dtype=torch.bool)
    others[torch.arange(200), clean.query] = False
    assert torch.equal(clean.counts[others], corrupt.counts[others])
    assert torch.equal(clean.counts, control.counts) and torch.equal(clean.letters, control.letters)
    assert not torch.equal(pairs.clean, pairs.control)  # reshuffled
    # the last three positions (query letter, ':', count) line up in every pair
    assert torch.equal(pairs.clean[:, -3:-1], pairs.corrupt[:, -3:-1])


def test_addition_pairs_change_the_first_answer_digit_through_the_named_cause() -> None:
    g = torch.Generator().manual_seed(1)
    first = 2 * 3 + 2  # the first answer digit's position in '615+861=1476'
    hundreds = an.addition_hundreds_pairs(ADDITION, 300, g)
    a, b = ADDITION.operands(hundreds.clean)
    a2, b2 = ADDITION.operands(hundreds.corrupt)
    assert bool((hundreds.clean[:, first] != hundreds.corrupt[:, first]).all())
    assert torch.equal(a[:, :2], a2[:, :2]) and torch.equal(b[:, :2], b2[:, :2])
    assert torch.equal(hundreds.clean[:, first], hundreds.control[:, first])
    carry = an.addition_carry_pairs(ADDITION, 300, g)
    a, b = ADDITION.operands(carry.clean)
    a2, b2 = ADDITION.operands(carry.corrupt)
    assert bool((a[:, 2] + b[:, 2] == 9).all()) and torch.equal(a[:, 2], a2[:, 2])
    carries = lambda x, y: (10 * x[:, 1] + x[:, 0] + 10 * y[:, 1] + y[:, 0]) >= 100  # noqa: E731
    assert bool((carries(a, b) != carries(a2, b2)).all())
    assert bool((carry.clean[:, first] != carry.corrupt[:, first]).all())
    a3, b3 = ADDITION.operands(carry.control)
    assert torch.equal(carries(a, b), carries(a3, b3))
    for tokens in (hundreds.corrupt, carry.corrupt, carry.control):
        assert bool((ADDITION.operands(tokens)[0].flip(1)[:, 0] > 0).all())  # still 100–999


def test_features_read_the_right_facts_and_tolerate_any_tokens() -> None:
    tokens = torch.stack([ADDITION.encode("615+861=1476"), ADDITION.encode("415+561=0976")])
    f = an.addition_features(ADDITION)
    assert f["hundreds digits"](tokens).tolist() == [[6, 8], [4, 5]]
    assert f["carry into the hundreds"](tokens).tolist() == [0, 0]
    assert f["first answer digit"](tokens).tolist() == [1, 0]
    carry = ADDITION.encode("455+561=1016")[None]
    assert f["carry into the hundreds"](carry).tolist() == [1]
    junk = tokens.clone()
    junk[:, 1] = 10  # '+' in an operand slot: a value no well-formed query has
    assert f["first answer digit"](junk).tolist() == [-1, -1]
    c = an.counting_features(COUNTING)
    text = COUNTING.encode("vvzccvczvvvzvcvc|v:8")[None]
    assert c["query letter's count"](text).tolist() == [8]
    broken = text.clone()
    broken[0, COUNTING.query_position] = COUNTING.vocab.index("P")  # no letter in the query slot
    assert c["query letter's count"](broken).tolist() == [-1]
    broken = text.clone()
    broken[0, COUNTING.query_position + 1] = COUNTING.vocab.index("3")  # no ':' after it
    assert c["query letter's count"](broken).tolist() == [-1]
    assert c["query letter"](text).tolist() == [COUNTING.vocab.index("v")]


def test_enumerated_space_index_round_trips_and_refuses_other_inputs() -> None:
    g = torch.Generator().manual_seed(3)
    tokens = ADDITION.sample(50, g)
    index = an._space_index(ADDITION, tokens)
    a, b = ADDITION.operands(tokens)
    powers = 10 ** torch.arange(3)
    expected = ((a * powers).sum(1) - 100) * 900 + (b * powers).sum(1) - 100
    assert torch.equal(index, expected)
    wrong = tokens.clone()
    wrong[:, -1] = (wrong[:, -1] + 1) % 10  # a wrong answer is not a question of the space
    assert bool((an._space_index(ADDITION, wrong) == -1).all())


def test_merged_samples_sum_counts_and_keep_each_inputs_distance() -> None:
    one = InversionSamples(torch.tensor([[1, 2], [3, 4]]), torch.tensor([0.05, 0.3]),
                           torch.tensor([2, 1]), 0.1)  # fmt: skip
    two = InversionSamples(torch.tensor([[3, 4], [5, 6]]), torch.tensor([0.3, 0.01]),
                           torch.tensor([4, 1]), 0.1)  # fmt: skip
    merged = an.merge_samples([one, two])
    assert merged.tokens.tolist() == [[5, 6], [1, 2], [3, 4]]
    assert merged.counts.tolist() == [1, 2, 5]
    torch.testing.assert_close(merged.distances, torch.tensor([0.01, 0.05, 0.3]))
    assert math.isclose(merged.share_inside, 3 / 8)


# -- claims on hand-made results ------------------------------------------------------------------


def _reading(site: str, position: str, share: float, hyp: dict[str, tuple[float, float]]) -> dict:
    return {"site": site, "position": position, "share_inside": share, "base_rate": 0.01,
            "n_queries": 4, "hypotheses": hyp, "by_setting": {"T=1, noise=0": share}}  # fmt: skip


def _check(what: str, heads: list[list[int]], position: str, share: float) -> dict:
    clean, corrupt = 10.0, -10.0
    patched = clean - share * (clean - corrupt)
    return {
        "what": what,
        "heads": heads,
        "position": position,
        "clean": clean,
        "corrupt": corrupt,
        "patched": patched,
        "control_patched": 9.5,
        "share": share,
        "control_share": 0.025,
    }


def _result(good: bool) -> InversionResult:
    share, carried, agree = (0.7, 0.95, 0.97) if good else (0.4, 0.5, 0.6)
    counting = {
        "readings": [
            _reading("L0.head0", "query letter", share, {"query letter's count": (agree, 0.11)}),
            _reading("L1.resid_post", ":", share, {"query letter's count": (agree, 0.11)}),
        ],
        "patching": {"checks": [
            _check("layer-0 head at the query letter", [[0, 0]], "query letter", carried),
            _check("layer-1 head at the :", [[1, 0]], ":", carried),
        ]},
    }  # fmt: skip
    addition = {
        "readings": [_reading("L0.head3", "=", share, {"carry into the hundreds": (agree, 0.5)})],
        "patching": {"checks": [
            _check("layer-0 heads at = for the hundreds digits", [[0, 1], [0, 2]], "=", carried),
            _check("the best single head at = for the carry", [[0, 3]], "=", carried),
        ]},
    }  # fmt: skip
    return InversionResult(study_config("tiny"), counting, addition)


def test_claims_hold_on_a_good_result_and_fail_on_a_bad_one() -> None:
    good, bad = check_claims(_result(True)), check_claims(_result(False))
    assert len(good) == len(bad) == 8
    assert all(c.holds for c in good), [c.claim for c in good if not c.holds]
    assert not any(c.holds for c in bad)
    rules = [c.rule for c in good]
    assert any(f"{inversion.MIN_INSIDE:.0%}" in r for r in rules)
    assert any(f"{inversion.CARRIES:.0%}" in r for r in rules)
    assert any(f"{inversion.CONSISTENT:.0%}" in r for r in rules)
    assert all(c.control is not None for c in good)


def test_the_embedding_does_not_count_toward_the_share_inside() -> None:
    result = _result(False)
    counting = copy.deepcopy(result.counting)
    counting["readings"].append(_reading("embed", ":", 1.0, {"query letter's count": (1.0, 0.1)}))
    counting["readings"].append(_reading("embed", "query letter", 1.0, {}))
    claim = check_claims(InversionResult(result.config, counting, result.addition))[0]
    assert "counting" in claim.claim and not claim.holds


def test_claims_fail_when_their_control_does_as_well() -> None:
    result = _result(True)
    counting, addition = copy.deepcopy(result.counting), copy.deepcopy(result.addition)
    for check in counting["patching"]["checks"] + addition["patching"]["checks"]:
        check["control_share"] = 0.9  # a same-answer patch removes as much: nothing specific
    for reading in counting["readings"] + addition["readings"]:
        reading["base_rate"] = 0.65  # random inputs land inside ε as often as the samples
        reading["hypotheses"] = {f: (v[0], 0.95) for f, v in reading["hypotheses"].items()}
    claims = check_claims(InversionResult(result.config, counting, addition))
    assert not any(c.holds for c in claims), [c.claim for c in claims if c.holds]
    assert any("same-answer input ≤ 20%" in c.rule for c in claims)


def test_a_site_the_decoder_did_not_read_is_not_measured() -> None:
    result = _result(True)
    counting = copy.deepcopy(result.counting)
    counting["readings"] = [r for r in counting["readings"] if r["site"] != "L0.head0"]
    claims = check_claims(InversionResult(result.config, counting, result.addition))
    missing = [c for c in claims if c.measured.startswith("not measured")]
    assert len(missing) == 1 and not missing[0].holds


# -- the tiny study end to end ----------------------------------------------------------------------


def test_the_tiny_study_writes_readings_viewer_patching_completeness_and_claims(
    inversion_study_run: Run,
) -> None:
    run = inversion_study_run
    counting, addition = run.read_result("counting"), run.read_result("addition")
    cfg = study_config("tiny")
    for part, spec, n_positions in (
        (counting, cfg.counting_decoder, 2),
        (addition, cfg.addition_decoder, 5),
    ):
        assert len(part["readings"]) == len(spec.sites) * n_positions
        for reading in part["readings"]:
            assert 0.0 <= reading["share_inside"] <= 1.0 or math.isnan(reading["share_inside"])
        for entry in part["viewer"]:
            distances = [row[2] for row in entry["rows"]]
            assert distances == sorted(distances)
        for check in part["patching"]["checks"]:
            share = (check["clean"] - check["patched"]) / (check["clean"] - check["corrupt"])
            assert math.isclose(share, check["share"], rel_tol=1e-9)
    (point,) = addition["completeness"]
    assert point["n_samples"] >= 0 and point["preimage_size"] >= 1  # the query itself is inside
    assert 0.0 <= point["likelihood_auroc"] <= 1.0 or math.isnan(point["likelihood_auroc"])
    assert len(run.read_result("claims")) == 8
    html = run.report_path.read_text()
    for heading in ("the viewer", "causal checks", "hypothesis scores", "completeness by enumeration"):
        assert heading in html
    names = " ".join(run.figure_names())
    for figure in ("counting--the-viewer", "addition--causal-checks", "completeness-by-enumeration"):
        assert figure in names, names


def test_auroc_is_the_share_of_pairs_ranked_right() -> None:
    assert an._auroc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0])) == 1.0
    assert an._auroc(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0
    assert an._auroc(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 2.0])) == 0.625  # (0.5+0+1+1)/4
    assert math.isnan(an._auroc(torch.tensor([]), torch.tensor([1.0])))
