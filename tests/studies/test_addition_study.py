"""The addition study end to end on tiny models: every result, figure and claim is produced."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinylens.cli import main
from tinylens.studies import addition, run_study


def test_study_writes_results_figures_and_report(study_run) -> None:
    for name in [
        "claims",
        "eval",
        "digit_curves",
        "class_accuracy",
        "error_residue",
        "attention_staircase",
        "position_ablation",
        "head_ablation",
        "high_loss_cases",
    ]:
        assert study_run.read_result(name) is not None, name
    figures = study_run.figure_names()
    assert len(figures) >= 7
    html = study_run.report_path.read_text()
    assert html.index("Claims") < html.index("Loss per answer digit")
    assert html.count("data:image/png;base64,") == len(figures)


def test_claims_are_measured_not_hard_coded(study_run) -> None:
    claims = study_run.read_result("claims")
    assert len(claims) == 7
    for claim in claims:
        assert {"claim", "expected", "measured", "holds", "rule", "conditions"} <= set(claim)
        assert isinstance(claim["holds"], bool)
    accuracy = next(c for c in claims if "accurate" in c["claim"])
    # a 150-step tiny model cannot add: an honest table says so
    assert accuracy["holds"] is False


def test_position_ablation_hits_the_position_before_each_digit(study_run) -> None:
    both = study_run.read_result("position_ablation")
    for pos in both.values():
        assert pos["most_harmful"]["A0"]["expected"] == 16
        assert pos["most_harmful"]["A5"]["expected"] == 11
        assert len(pos["acc"]) == 17 and len(pos["acc"][0]) == 6
    one = both["1-layer"]
    query_rows = {row["expected"] for row in one["most_harmful"].values()}
    for p, row in enumerate(one["acc"]):
        if p not in query_rows:  # in one layer, no other position reaches the answer logits
            assert row == pytest.approx(one["clean"])


def test_study_cli_prints_report_path(
    capsys: pytest.CaptureFixture[str], study_run, tmp_path: Path
) -> None:
    workspace = study_run.workspace.root
    with pytest.raises(SystemExit) as exit_:
        main(["study", "addition", "--preset", "nope", "-w", str(workspace)])
    assert exit_.value.code == 2
    assert "valid choices: quick, paper, tiny" in capsys.readouterr().err
    main(["study", "addition", "--preset", "tiny", "-w", str(workspace), "--no-progress"])
    assert capsys.readouterr().out.strip().endswith("report.html")


def test_a_model_that_cannot_add_passes_no_claim(study_run) -> None:
    """The tiny preset's models learned nothing (0% exact): every claim must say so."""
    held = [c["claim"] for c in study_run.read_result("claims") if c["holds"]]
    assert held == []


def test_a_study_that_raises_is_marked_failed_and_completes_on_rerun(
    study_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = study_run.workspace

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(addition.an, "head_ablation", broken)
    claims_before = study_run.read_result("claims")
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_study("addition", workspace, "tiny", progress=False)
    assert workspace.info(study_run.name).status == "failed"
    assert study_run.read_result("failure")["message"] == "disk on fire"
    assert study_run.read_result("claims") == claims_before  # the last complete results stay

    monkeypatch.undo()
    again = run_study("addition", workspace, "tiny", progress=False)
    assert again.name == study_run.name
    assert workspace.info(study_run.name).status == "done"
    assert not study_run.has_result("failure")
    assert study_run.read_result("claims") == claims_before
