"""The command line: the happy path, and bad input answered in one line with exit code 2."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tinylens.cli import main
from tinylens.store import Workspace


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(root: Path) -> dict[str, object]:
    """Every file's bytes (the index as its rows): to prove a failed command wrote nothing."""
    files: dict[str, object] = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("tinylens.db")
    }
    ws = Workspace(root)
    files["index"] = [(r.name, r.status, r.step, r.updated) for r in ws.runs()]
    files["metrics"] = {r.name: len(ws.metrics(r.name)) for r in ws.runs()}
    ws.close()
    return files


def test_train_eval_predict_runs(
    capsys: pytest.CaptureFixture[str], trained_workspace: tuple[Path, str]
) -> None:
    root, name = trained_workspace
    code, out, _ = run_cli(capsys, "runs", "-w", str(root), "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == [name]
    code, out, _ = run_cli(capsys, "eval", name, "-w", str(root), "--n", "300", "--json")
    report = json.loads(out)
    assert code == 0 and report["n"] == 300
    assert set(report["positions"]) == {"A5", "A4", "A3", "A2", "A1", "A0"}
    assert set(report["question_groups"]) == {"S0", "S1", "S2", "S3", "S4", "S5"}
    assert 0.0 <= report["exact"] <= 1.0
    code, out, _ = run_cli(capsys, "eval", name, "-w", str(root), "--n", "300")
    assert code == 0 and "exact match" in out and "S5" in out
    code, out, _ = run_cli(capsys, "predict", name, "12345+67890=", "-w", str(root))
    assert code == 0
    model_line, true_line = out.strip().splitlines()
    assert model_line.startswith("12345+67890=") and model_line.endswith("model")
    assert true_line.startswith("12345+67890=080235")


def test_train_prints_the_run_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(
        capsys,
        "train",
        "addition",
        "--preset",
        "tiny",
        "--steps",
        "5",
        "-w",
        str(tmp_path),
        "--no-progress",
        "--name",
        "mine",
    )
    assert code == 0 and out.strip() == "mine"
    assert (tmp_path / "mine" / "checkpoints" / "step-5.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["predict", "{run}", "12a45+1="], "'a' at position 2"),
        (["predict", "{run}", "1234567+1="], "at most 5 digits"),
        (["predict", "missing-run", "1+1="], "no run named 'missing-run'"),
        (["eval", "missing-run"], "no run named"),
        (["eval", "{run}", "--checkpoint", "9999"], "no checkpoint at step 9999"),
        (["train", "subtraction"], "unknown task 'subtraction'; valid choices: addition"),
        (["train", "addition", "--preset", "huge"], "valid choices: cpu, quirke, tiny"),
        (["train", "addition", "--steps", "0"], "steps must be a positive integer"),
        (["train", "addition", "--name", "../escape"], "not allowed"),
        (["train", "addition", "--config", "/nonexistent.toml"], "cannot read config file"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    capsys: pytest.CaptureFixture[str],
    trained_workspace: tuple[Path, str],
    args: list[str],
    fragment: str,
) -> None:
    root, name = trained_workspace
    before = snapshot(root)
    argv = [a.format(run=name) for a in args] + ["-w", str(root)]
    if args[0] == "train":
        argv.append("--no-progress")
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and fragment in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("c.toml", 'lr = "fast"', "unknown section"),
        ("c.toml", '[train]\nlr = "1e-3"', "train lr must be a number"),
        ("c.json", "[1, 2]", "must hold a table"),
        ("c.toml", "[train\n", "does not parse"),
    ],
)
def test_bad_config_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    code, _, err = run_cli(capsys, "train", "addition", "--config", str(cfg), "-w", str(tmp_path / "w"))
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_bad_config_file_fields(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nn_layer = 2\n")
    ws = tmp_path / "ws"
    code, _, err = run_cli(capsys, "train", "addition", "--config", str(cfg), "-w", str(ws))
    assert code == 2 and "unknown model fields ['n_layer']" in err and "n_layers" in err
    assert not ws.exists(), "a rejected config must not create the workspace"


def test_truncated_checkpoint(
    capsys: pytest.CaptureFixture[str], trained_workspace: tuple[Path, str], tmp_path: Path
) -> None:
    root, name = trained_workspace
    copy = tmp_path / "ws"
    shutil.copytree(root, copy)
    last = sorted((copy / name / "checkpoints").glob("step-*.safetensors"))
    latest = max(last, key=lambda p: int(p.stem.split("-")[1]))
    latest.write_bytes(latest.read_bytes()[:100])
    before = snapshot(copy)
    code, _, err = run_cli(capsys, "predict", name, "1+1=", "-w", str(copy))
    assert code == 2 and "truncated or corrupt" in err and len(err.strip().splitlines()) == 1
    assert snapshot(copy) == before


def test_real_entry_point_exit_code(trained_workspace: tuple[Path, str]) -> None:
    root, name = trained_workspace
    proc = subprocess.run(
        [sys.executable, "-m", "tinylens", "predict", name, "12a45+1=", "-w", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
