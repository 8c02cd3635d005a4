"""Every claim of every study on hand-made results: one that holds, one that does not.

The rule text and the verdict come from the same thresholds, so each test also checks that the rule
a reader sees names the threshold that decided.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from tinylens.studies import STUDIES, addition, maze, regions, seqcont
from tinylens.studies.claims import Claim, Condition
from tinylens.studies.regions import SizeRegions
from tinylens.studies.regions_analyses import Band, ModelRegions, Sharpness

# -- the claim record ------------------------------------------------------------------------------


def test_condition_verdict_and_rule_come_from_one_threshold() -> None:
    c = Condition("exact match", 0.996, ">", 0.995, "{:.1%}")
    assert c.holds and c.rule == "exact match > 99.5%"
    assert not Condition("exact match", 0.995, ">", 0.995, "{:.1%}").holds
    assert Condition("loss", 0.2, "<=", 0.5, "{:.1f}").rule == "loss ≤ 0.5"
    assert not Condition("share", math.nan, ">=", 0.0).holds  # NaN never passes
    assert not Condition("share", math.nan, "<=", 1.0).holds
    # nor any other value that is not a finite number: 0/0 taken as ∞, or −∞
    assert not Condition("ratio", math.inf, ">=", 2.0).holds
    assert not Condition("gap", -math.inf, "<=", 0.1).holds
    assert Condition("count", 3, ">=", 2).holds and Condition("share", 0.5, "<", 1.0).holds
    assert Condition.requires("in every circuit", True).holds
    assert not Condition.requires("in every circuit", False).holds
    assert Condition.requires("in every circuit", False).rule == "in every circuit"


def test_claim_holds_only_when_every_condition_does() -> None:
    yes, no = Condition("a", 1, ">=", 1), Condition("b", 0, ">=", 1)
    assert Claim.of("c", "p", "m", [yes]).holds
    assert not Claim.of("c", "p", "m", [yes, no]).holds
    assert Claim.of("c", "p", "m", [yes, no]).rule == "a ≥ 1 and b ≥ 1"
    missing = Claim.not_measured("c", "p", "one family only")
    assert not missing.holds and missing.measured == "not measured: one family only"
    claim = Claim.at_least("c", "p", 0.8, 0.9, "acc", fmt="{:.0%}", control=0.5)
    assert not claim.holds and claim.rule == "acc ≥ 90%" and claim.measured == "acc 80%"
    row = claim.to_dict()
    assert row["holds"] is False and row["control"] == 0.5
    assert row["conditions"] == [
        {"what": "acc", "value": 0.8, "op": ">=", "threshold": 0.9, "holds": False}
    ]


def test_every_study_is_registered_with_its_presets() -> None:
    assert set(STUDIES) == {"addition", "maze", "regions", "seqcont", "inversion"}
    for study in STUDIES.values():
        assert "tiny" in study.presets and study.summary and study.title
    assert [s.name for s in STUDIES.values() if s.takes_model] == ["seqcont", "regions"]
    assert [s.name for s in STUDIES.values() if s.takes_prompts] == ["regions"]


def test_each_study_cites_its_papers_authors() -> None:
    """The summary a user sees names the paper's authors as the paper does (InversionView was
    once cited as "Huang, Geiger et al."), and no file repeats the wrong citation."""
    authors = {
        "addition": "Quirke & Barez",
        "maze": "Ivanitskiy, Spies et al.",
        "seqcont": "Lan & Barez",
        "regions": "Janiak et al.",
        "inversion": "Huang, Panwar, Goyal and Hahn (NeurIPS 2024)",
    }
    for name, cited in authors.items():
        assert STUDIES[name].summary.startswith(cited), STUDIES[name].summary
    root = Path(__file__).resolve().parents[2]
    texts = [root / "README.md", *sorted((root / "src").rglob("*.py"))]
    wrong = [p.name for p in texts if "Huang, Geiger" in p.read_text(encoding="utf-8")]
    assert not wrong, f"InversionView miscited in {wrong}"


def _holds_and_fails(make: Any, good: dict[str, Any], edit: Any) -> tuple[Claim, Claim]:
    """``make(**good)`` and ``make(**bad)`` where ``bad`` is ``good`` after ``edit(bad)``."""
    bad = copy.deepcopy(good)
    edit(bad)
    return make(**good), make(**bad)


def _check(pair: tuple[Claim, Claim]) -> None:
    holds, fails = pair
    assert holds.holds, holds.to_dict()
    assert not fails.holds, fails.to_dict()
    assert holds.rule == fails.rule  # the rule does not depend on the values


# -- addition ----------------------------------------------------------------------------------------


def _curve(mid: int, drop: float) -> dict[str, Any]:
    return {"start": mid - 10, "mid": mid, "end": mid + 10, "drop": drop, "steps": [], "values": []}


def test_addition_phases_need_real_falls_at_different_times() -> None:
    digits = {f"A{i}": _curve(100 * (i + 1), 3.0) for i in range(6)}
    good = {"curves": {"digits": digits, "subtasks": {}}}

    def flat(bad: dict[str, Any]) -> None:
        # the tiny preset's shape: half-way steps spread out, but losses that barely fall
        for i, d in enumerate(bad["curves"]["digits"].values()):
            d["drop"], d["mid"] = 0.15, 50 + 10 * (i % 3)

    _check(_holds_and_fails(addition.phases_claim, good, flat))

    def together(bad: dict[str, Any]) -> None:
        for d in bad["curves"]["digits"].values():
            d["mid"] = 500

    _check(_holds_and_fails(addition.phases_claim, good, together))


def test_addition_own_position_needs_an_accurate_model() -> None:
    most = {f"A{i}": {"position": 16 - i, "expected": 16 - i} for i in range(6)}
    good = {"pos": {"most_harmful": most, "own_position_acc": 0.1, "clean": [0.99] * 6}}

    def cannot_add(bad: dict[str, Any]) -> None:
        bad["pos"]["clean"] = [0.1] * 6

    _check(_holds_and_fails(addition.own_position_claim, good, cannot_add))

    def elsewhere(bad: dict[str, Any]) -> None:
        bad["pos"]["most_harmful"]["A3"]["position"] = 2

    _check(_holds_and_fails(addition.own_position_claim, good, elsewhere))


def test_addition_heads_claim() -> None:
    good = {"heads": {"clean": {"loss": 0.1}, "heads": [{"loss": 3.6}, {"loss": 5.1}]}}

    def one_idle_head(bad: dict[str, Any]) -> None:
        bad["heads"]["heads"][0]["loss"] = 0.5

    _check(_holds_and_fails(addition.heads_claim, good, one_idle_head))

    def cannot_add(bad: dict[str, Any]) -> None:
        bad["heads"] = {"clean": {"loss": 2.3}, "heads": [{"loss": 3.6}, {"loss": 5.1}]}

    _check(_holds_and_fails(addition.heads_claim, good, cannot_add))


def test_addition_accuracy_claim() -> None:
    assert addition.accuracy_claim(0.997).holds
    assert not addition.accuracy_claim(0.995).holds


def test_addition_residue_claim() -> None:
    good = {"residue": {"wrong_digits": 20, "us9_share": 0.9}}
    _check(_holds_and_fails(addition.residue_claim, good, lambda b: b["residue"].update(us9_share=0.5)))
    none = {"residue": {"wrong_digits": 0, "us9_share": math.nan}}
    assert not addition.residue_claim(**none).holds


def test_addition_cascade_claims() -> None:
    classes = {f"S{i}": {"exact": 1.0 if i < 2 else 0.25} for i in range(6)}
    good = {"classes_1l": {"classes": classes, "cascades": 0.25}}

    def cannot_add(bad: dict[str, Any]) -> None:
        bad["classes_1l"]["classes"]["S0"]["exact"] = 0.0  # 0% on cascades, but 0% on everything

    _check(_holds_and_fails(addition.some_cascades_claim, good, cannot_add))
    assert addition.two_layer_claim({"cascades": 0.995}).holds
    assert not addition.two_layer_claim({"cascades": 0.9}).holds


# -- maze ------------------------------------------------------------------------------------------


def test_maze_solves_claim() -> None:
    acc = {"exact_path": 0.95, "valid_path": 0.97, "n": 1000}
    assert maze.solves_claim(5, acc).holds
    assert not maze.solves_claim(5, {**acc, "exact_path": 0.777}).holds


def _probes(best: float, control: float) -> dict[str, Any]:
    return {
        "sites": ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
        "probe": {
            "best_site": 1,
            "accuracy": [0.6, best],
            "f1": [0.5, 0.9],
            "worst_label_accuracy": 0.8,
            "majority": 0.6,
        },
        "random_init": {"accuracy": [0.6, control]},
        "shuffled_labels": {"accuracy": [0.6, 0.6]},
    }


def test_maze_probe_claim_beats_its_control() -> None:
    holds = maze.probe_claim(_probes(0.97, 0.7))
    assert holds.holds and holds.control == pytest.approx(0.7)
    assert not maze.probe_claim(_probes(0.97, 0.9)).holds  # a random-init model does as well
    assert not maze.probe_claim(_probes(0.765, 0.705)).holds  # the quick study's 5×5 numbers


def test_maze_probe_rises_claim() -> None:
    good = {
        "over": {"steps": [0, 1, 2, 3], "probe_accuracy": [0.6, 0.7, 0.8, 0.9],
                 "path_accuracy": [0.0, 0.3, 0.6, 0.9]}
    }  # fmt: skip
    _check(_holds_and_fails(maze.probe_rises_claim, good, lambda b: b["over"].update(
        probe_accuracy=[0.6, 0.62, 0.64, 0.66])))  # fmt: skip
    flat = {"steps": [0, 1, 2], "probe_accuracy": [0.76] * 3, "path_accuracy": [0.0] * 3}
    assert not maze.probe_rises_claim(flat).holds  # nothing learned: correlation NaN or 0


def test_maze_lattice_claim() -> None:
    good = {"geometry": {"trained": {"spearman": 0.7}, "random_init": {"spearman": 0.02}}}
    _check(
        _holds_and_fails(
            maze.lattice_claim, good, lambda b: b["geometry"]["random_init"].update(spearman=0.5)
        )
    )


def _heads(valid: float, invalid: float, top_drop: float, control_drop: float) -> dict[str, Any]:
    return {
        "order": [[1, 0], [0, 1]],
        "top_k": 2,
        "valid_per_key": [[0.0, 0.0], [valid, 0.0]],
        "invalid_per_key": [[0.0, 0.0], [invalid, 0.0]],
        "clean": {"valid_next_step": 0.9},
        "top_ablated": {"valid_next_step": 0.9 - top_drop},
        "control_ablated": {"valid_next_step": 0.9 - control_drop},
    }


def test_maze_adjacency_heads_claim() -> None:
    assert maze.adjacency_heads_claim(_heads(0.3, 0.05, 0.3, 0.02)).holds
    assert not maze.adjacency_heads_claim(_heads(0.073, 0.012, 0.03, 0.003)).holds  # quick study
    assert not maze.adjacency_heads_claim(_heads(0.0, 0.0, 0.3, 0.0)).holds  # attends to nothing


# -- seqcont -----------------------------------------------------------------------------------------


def _circuit(heads: list[str], share: float = 0.85) -> dict[str, Any]:
    return {
        "heads": heads,
        "mlps": ["M0", "M1"],
        "nodes": [*heads, "M0", "M1"],
        "node_share": share,
        "edges": [],
        "n_edges_graph": 100,
        "edge_share": share,
        "ablated_all_share": 0.1,
    }


FAMILIES = ("numerals", "number_words", "months")


def _seqcont(accuracy: float = 0.9, transfer: float = 0.9) -> dict[str, Any]:
    circuits = {f: _circuit(["A0.1", "A1.2", f"A2.{i}"]) for i, f in enumerate(FAMILIES)}
    share = [[1.0, transfer, transfer], [transfer, 1.0, transfer], [transfer, transfer, 1.0]]
    return {
        "circuits": circuits,
        "behaviour": {f: {"accuracy": accuracy, "logit_diff": 3.0} for f in FAMILIES},
        "shared": seqcont.shared_components(circuits),
        "successor": {"top": "A1.2", "top_score": 0.8, "chance": 0.1},
        "cross": {"share": share},
        "random": {"mean": 0.2, "shares": [0.2] * 4},
    }


def test_seqcont_small_circuit_needs_a_model_that_does_the_task() -> None:
    r = _seqcont()
    assert seqcont.small_circuit_claim(r["circuits"], r["behaviour"], 12).holds
    assert not seqcont.small_circuit_claim(r["circuits"], r["behaviour"], 4).holds  # 3 of 4 heads
    weak = _seqcont(accuracy=0.03)  # the tiny preset: 81% of a logit difference it barely has
    assert not seqcont.small_circuit_claim(weak["circuits"], weak["behaviour"], 12).holds


def test_seqcont_shared_heads_and_successor_claims() -> None:
    r = _seqcont()
    competent = seqcont.competent_families(r["behaviour"])
    assert competent == list(FAMILIES)
    assert seqcont.shared_heads_claim(r["circuits"], r["shared"], competent).holds
    assert not seqcont.shared_heads_claim(r["circuits"], r["shared"], competent[:1]).holds
    assert seqcont.successor_claim(r["circuits"], r["shared"], r["successor"], competent).holds
    outside = {**r["successor"], "top": "A2.0"}  # the best successor head is in one circuit only
    assert not seqcont.successor_claim(r["circuits"], r["shared"], outside, competent).holds
    one = {"numerals": r["circuits"]["numerals"]}
    assert not seqcont.shared_heads_claim(one, seqcont.shared_components(one), competent).holds


def test_seqcont_transfer_claim_beats_random_circuits() -> None:
    r = _seqcont()
    competent = list(FAMILIES)
    claim = seqcont.transfer_claim(r["circuits"], r["cross"], r["random"], competent)
    assert claim.holds and claim.control == pytest.approx(0.2)
    low = _seqcont(transfer=0.39)  # the tiny preset's 39%
    assert not seqcont.transfer_claim(low["circuits"], low["cross"], r["random"], competent).holds
    as_random = {"mean": 0.67, "shares": [0.67] * 4}
    assert not seqcont.transfer_claim(r["circuits"], r["cross"], as_random, competent).holds


# -- regions -----------------------------------------------------------------------------------------


def _regions(
    values: list[float],
    *,
    same: list[float] | None = None,
    flips: list[int] | None = None,
    accuracy: float | None = 1.0,
    kl: list[float] | None = None,
    kl_same: list[float] | None = None,
) -> ModelRegions:
    """A hand-made model's regions: ``values`` the consecutive (and different-answer) pairs' L2
    sharpness, ``same`` the same-answer pairs', ``flips`` each consecutive pair's sign flips, and
    ``kl``/``kl_same`` the same in KL (default: as in L2)."""

    def by_kind(all_: list[float], same_: list[float]) -> dict[str, Sharpness]:
        s = Sharpness(all_, 0)
        return {"all": s, "same": Sharpness(same_, 0), "different": s}

    same = values if same is None else same
    kl = values if kl is None else kl
    band = Band([0.0, 1.0], [0.0, 1.0], [0.0, 1.0])
    return ModelRegions(
        sharpness={"l2": by_kind(values, same), "kl": by_kind(kl, same if kl_same is None else kl_same)},
        baseline={"l2": Sharpness(values, 0), "kl": Sharpness(kl, 0)},
        curves={"l2": band, "kl": band},
        flips=[0] * len(values) if flips is None else flips,
        pair_sharpness=values,
        d_mlp=256,
        accuracy=accuracy,
    )


SHARP = [1.05, 1.1, 1.1, 1.15, 2.0, 3.0, 12.0, 15.0, 20.0, 25.0]
"""Four pairs in one region (< 1.2) and four across a boundary (> 10): regions exist."""
SMOOTH = [1.05, 1.1, 1.2, 1.3, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0]
"""A random-init model's near-straight curves."""


def _size(trained: ModelRegions, init: ModelRegions, n_params: int = 10_000, training=()) -> SizeRegions:
    return SizeRegions("d_model 64", 64, n_params, trained, init, tuple(training), None, "run")


def test_regions_exist_claim_needs_both_kinds_of_pairs_and_a_competent_model() -> None:
    good = _size(_regions(SHARP), _regions(SMOOTH))
    claim = regions.regions_exist_claim(good, own=True)
    assert claim.holds and claim.control == 0.0
    all_linear = _size(_regions(SMOOTH), _regions(SMOOTH))
    assert not regions.regions_exist_claim(all_linear, own=True).holds
    assert regions.regions_exist_claim(all_linear, own=True).rule == claim.rule
    weak = _size(_regions(SHARP, accuracy=0.5), _regions(SMOOTH))
    assert not regions.regions_exist_claim(weak, own=True).holds
    # a checkpoint has no ground truth: the accuracy condition is not part of its rule
    text = _size(_regions(SHARP, accuracy=None), _regions(SMOOTH, accuracy=None))
    assert regions.regions_exist_claim(text, own=False).holds


def test_regions_sharpening_claim_reads_init_training_and_size() -> None:
    smooth = {"l2": Sharpness(SMOOTH, 0), "kl": Sharpness(SMOOTH, 0)}
    sharp = {"l2": Sharpness(SHARP, 0), "kl": Sharpness(SHARP, 0)}
    training = [
        regions.Checkpoint(s, x) for s, x in ((0, smooth), (10, smooth), (100, sharp), (1000, sharp))
    ]
    small = _size(_regions(SMOOTH[:5] + SHARP[5:]), _regions(SMOOTH), 1_000, training)
    large = _size(_regions(SHARP), _regions(SMOOTH), 10_000, training)
    mid = _size(_regions([1.3] * 5 + SHARP[5:]), _regions(SMOOTH), 5_000, training)
    claim = regions.sharpening_claim((small, mid, large), own=True)
    assert claim.holds, claim.to_dict()
    assert claim.control == Sharpness(SMOOTH, 0).median
    # random init with boundaries of its own: the control fails
    noisy_init = _size(_regions(SHARP), _regions(SHARP), 10_000, training)
    failed = regions.sharpening_claim((small, mid, noisy_init), own=True)
    assert not failed.holds and failed.rule == claim.rule
    # sharpness falling with size
    swapped = (
        _size(small.trained, small.init, 10_000, training),
        mid,
        _size(large.trained, large.init, 1_000, training),
    )
    shrinking = regions.sharpening_claim(swapped, own=True)
    assert not shrinking.holds
    # falling over training
    backwards = [
        regions.Checkpoint(c.step, x.sharpness)
        for c, x in zip(training, reversed(training), strict=True)
    ]
    late = _size(_regions(SHARP), _regions(SMOOTH), 10_000, backwards)
    assert not regions.sharpening_claim((small, mid, late), own=True).holds
    # one checkpoint: only init against trained is measured, and the note says so
    one = regions.sharpening_claim((_size(_regions(SHARP, accuracy=None), _regions(SMOOTH)),), own=False)
    assert one.holds and "not measurable" in one.rule


def test_regions_answers_claim_compares_different_to_same_answer_pairs() -> None:
    good = _size(_regions(SHARP, same=SMOOTH), _regions(SMOOTH))
    claim = regions.answers_claim(good, own=True)
    assert claim.holds and claim.control == 0.0
    alike = regions.answers_claim(_size(_regions(SHARP, same=SHARP), _regions(SMOOTH)), own=True)
    assert not alike.holds and alike.rule == claim.rule
    empty = regions.answers_claim(_size(_regions(SHARP, same=[]), _regions(SMOOTH)), own=True)
    assert not empty.holds and "not measured" in empty.measured
    # no pair crossing on either side (0% vs 0%): the ratio is a finite 0, not 0/0 taken as ∞
    neither = regions.answers_claim(_size(_regions(SMOOTH, same=SMOOTH), _regions(SMOOTH)), own=True)
    ratio = neither.conditions[-1]
    assert not neither.holds and not ratio.holds and ratio.value == 0.0
    # every same-answer pair smooth, every different-answer one sharp: a finite ratio that holds
    assert math.isfinite(claim.conditions[-1].value) and claim.conditions[-1].holds


def test_regions_polytopes_claim_counts_flips_inside_one_region() -> None:
    many = [40, 30, 25, 50, 60, 60, 90, 80, 70, 99]  # pairs below 1.2 still flip 25–50 units
    values = [1.05, 1.1, 1.1, 1.15, 1.18, 3.0, 12.0, 15.0, 20.0, 25.0]
    good = _size(_regions(values, flips=many), _regions(SMOOTH))
    claim = regions.polytopes_claim(good, own=True)
    assert claim.holds and claim.control == 80.0
    few = [0, 1, 2, 0, 3, 60, 60, 90, 80, 70]  # one region ≈ one polytope
    bad = regions.polytopes_claim(_size(_regions(values, flips=few), _regions(SMOOTH)), own=True)
    assert not bad.holds and bad.rule == claim.rule
    no_region = regions.polytopes_claim(
        _size(_regions(SHARP[4:] * 2, flips=[50] * 12), _regions(SMOOTH)), own=True
    )
    assert not no_region.holds  # fewer than 5 pairs in one region: nothing to count


def test_regions_output_claim_reads_kl_against_random_init_and_same_answers() -> None:
    good = _size(_regions(SMOOTH, kl=SHARP, kl_same=SMOOTH), _regions(SMOOTH))
    claim = regions.output_regions_claim(good, own=True)
    assert claim.holds and claim.control == 0.0 and "KL" in claim.rule
    # the L2 claims do not read KL: the same model has no L2 regions
    assert not regions.regions_exist_claim(good, own=True).holds
    noisy_init = _size(_regions(SMOOTH, kl=SHARP, kl_same=SMOOTH), _regions(SMOOTH, kl=SHARP))
    assert not regions.output_regions_claim(noisy_init, own=True).holds
    alike = _size(_regions(SMOOTH, kl=SHARP, kl_same=SHARP), _regions(SMOOTH))
    failed = regions.output_regions_claim(alike, own=True)
    assert not failed.holds and failed.rule == claim.rule


def test_regions_crossing_rate_counts_dropped_pairs_as_crossing_nothing() -> None:
    s = Sharpness([1.0, 12.0, 15.0, 2.0], dropped=4)
    assert s.share_boundary == 0.5 and s.crossing_rate == 0.25
    assert math.isnan(Sharpness([], 0).crossing_rate)
