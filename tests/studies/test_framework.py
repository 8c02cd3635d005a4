"""The study runner on a toy study: what every study gets from it, and how it fails."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from tinylens.errors import ConfigError, Interrupted, UnknownNameError
from tinylens.store import Workspace
from tinylens.studies import STUDIES, Claim, Study, StudyContext, register, run_study
from tinylens.studies.report import Section


@dataclass(frozen=True)
class ToyConfig:
    preset: str

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset}


@dataclass(frozen=True)
class ToyResult:
    value: float

    def to_json(self) -> dict[str, Any]:
        return {"toy": {"value": self.value}}

    def meta(self) -> list[str]:
        return ["a toy model", "no inputs"]


BEHAVIOUR = {"fail": ""}
"""What the next toy measurement does: "" succeeds, "error" raises, "ctrl-c" is interrupted."""


class _Unsavable(Figure):
    """A figure whose drawing fails, as a broken plotting call would."""

    def savefig(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot draw")


def _measure(ctx: StudyContext, cfg: ToyConfig) -> ToyResult:
    if BEHAVIOUR["fail"] == "draw":
        return ToyResult(-1.0)
    if BEHAVIOUR["fail"] == "error":
        raise RuntimeError("measurement broke")
    if BEHAVIOUR["fail"] == "ctrl-c":
        raise Interrupted("training of the toy stopped at step 3")
    return ToyResult(0.75)


TOY = Study(
    name="toy",
    title="Toy study",
    summary="a study that measures one number",
    presets=("tiny",),
    configure=lambda preset, _inputs: ToyConfig(preset),
    measure=_measure,
    claims=lambda r: [Claim.at_least("toy claim", "≥ 0.5", r.value, 0.5, "value")],
    sections=lambda r: [
        Section("Toy", f"value {r.value}", figures=[(_Unsavable(), "x")] if r.value < 0 else [])
    ],
)


@pytest.fixture
def toy() -> Iterator[Study]:
    register(TOY)
    BEHAVIOUR["fail"] = ""
    yield TOY
    del STUDIES["toy"]


def test_the_runner_writes_results_claims_provenance_and_report(toy: Study, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    run = run_study("toy", ws, progress=False)  # the first preset by default
    assert ws.info(run.name).status == "done"
    assert run.read_result("toy") == {"value": 0.75}
    (claim,) = run.read_result("claims")
    assert claim["holds"] is True and claim["rule"] == "value ≥ 0.5"
    provenance = run.read_result("provenance")
    assert provenance["study"] == "toy" and set(provenance["versions"]) == {
        "tinylens",
        "torch",
        "transformer-lens",
    }
    html = run.report_path.read_text()
    assert "Toy study" in html and "transformer-lens" in html and "a toy model" in html


def test_a_failed_or_interrupted_study_says_so_and_reruns(toy: Study, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    BEHAVIOUR["fail"] = "error"
    with pytest.raises(RuntimeError):
        run_study("toy", ws, "tiny", progress=False)
    (info,) = ws.runs()
    assert info.status == "failed"
    run = ws.run(info.name)
    assert run.read_result("failure") == {"error": "RuntimeError", "message": "measurement broke"}
    assert not run.has_result("claims")  # nothing half-written

    BEHAVIOUR["fail"] = ""
    run_study("toy", ws, "tiny", progress=False)
    before = {name: run.read_result(name) for name in ("toy", "claims")}
    report = run.report_path.read_text()
    BEHAVIOUR["fail"] = "draw"  # fails while rendering: after measuring, before any write
    with pytest.raises(RuntimeError, match="cannot draw"):
        run_study("toy", ws, "tiny", progress=False)
    assert ws.info(info.name).status == "failed"
    assert {name: run.read_result(name) for name in ("toy", "claims")} == before
    assert run.report_path.read_text() == report

    BEHAVIOUR["fail"] = "ctrl-c"
    with pytest.raises(Interrupted):
        run_study("toy", ws, "tiny", progress=False)
    assert ws.info(info.name).status == "interrupted"

    BEHAVIOUR["fail"] = ""
    run_study("toy", ws, "tiny", progress=False)
    assert ws.info(info.name).status == "done" and not run.has_result("failure")


def test_registry_refuses_duplicates_and_unknown_names(toy: Study, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(TOY)
    with pytest.raises(
        UnknownNameError, match="valid choices: addition, maze, seqcont, regions, inversion, toy"
    ):
        run_study("nope", Workspace(tmp_path))
    with pytest.raises(ConfigError, match="--model applies to the seqcont and regions studies only"):
        run_study("toy", Workspace(tmp_path), model=tmp_path)
