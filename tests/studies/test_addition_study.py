"""The addition study end to end on tiny models: every result, figure and claim is produced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinylens.cli import main


def test_study_writes_results_figures_and_report(study_run) -> None:
    path: Path = study_run.path
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
        assert (path / "results" / f"{name}.json").is_file(), name
    figures = sorted(p.name for p in (path / "figures").glob("*.png"))
    assert len(figures) >= 7
    html = (path / "report.html").read_text()
    assert html.index("Claims") < html.index("Loss per answer digit")
    assert html.count("data:image/png;base64,") == len(figures)


def test_claims_are_measured_not_hard_coded(study_run) -> None:
    claims = json.loads((study_run.path / "results" / "claims.json").read_text())
    assert len(claims) == 7
    for claim in claims:
        assert set(claim) == {"claim", "expected", "measured", "holds", "rule"}
        assert isinstance(claim["holds"], bool)
    accuracy = next(c for c in claims if "accurate" in c["claim"])
    # a 150-step tiny model cannot add: an honest table says so
    assert accuracy["holds"] is False


def test_position_ablation_hits_the_position_before_each_digit(study_run) -> None:
    both = json.loads((study_run.path / "results" / "position_ablation.json").read_text())
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
