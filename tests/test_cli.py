"""The command line: the happy path, and bad input answered in one line with exit code 2."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinylens import cli
from tinylens import runs as runs_api
from tinylens.cli import main
from tinylens.config import derive_seed
from tinylens.evaluation import EVAL_BATCH, evaluate
from tinylens.store import Workspace
from tinylens.train import TrainResult


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

    def reject(constant: str) -> None:
        raise AssertionError(f"--json printed {constant}, which strict JSON readers refuse")

    report = json.loads(out, parse_constant=reject)
    assert code == 0 and report["n"] == 300
    assert report["question_groups"]["S5"]["acc"] is None  # none of 300 questions is an S5 one
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
        (["train", "addition", "--preset", "huge"], "valid choices: cpu, inversion, quirke, tiny"),
        (["train", "addition", "--steps", "0"], "steps must be an integer in [1, 1_000_000_000]"),
        (["train", "addition", "--steps", str(10**20)], "got 100000000000000000000"),
        (["train", "addition", "--seed", str(2**64)], "seed must be an integer in [0,"),
        (["eval", "{run}", "--n", str(10**13)], "--n must be between 1 and 10_000_000"),
        (["eval", "{run}", "--n", "0"], "--n must be between 1"),
        (["predict", "{run}", "1" * 10_000 + "+1="], "(10000 characters) has 10000 digits"),
        (["predict", "{run}", "x" * 10_000], "(10000 characters) is not a question"),
        # usage errors: Typer's own, one line too
        (["train", "addition", "--steps", "abc"], "Invalid value for '--steps'"),
        (["train", "addition", "--seed", "1.5"], "Invalid value for '--seed'"),
        (["eval", "{run}", "--n", "ten"], "Invalid value for '--n'"),
        (["eval", "{run}", "--checkpoint", "last"], "Invalid value for '--checkpoint'"),
        (["train"], "Missing argument 'task'"),
        (["predict", "{run}"], "Missing argument 'text'"),
        (["runs", "--bogus"], "No such option: --bogus (see `tinylens runs --help`)"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (
            ["predict", "{run}", "-1+2="],
            "put it after `--`, e.g. `tinylens predict RUN -- -1+2=`",
        ),
        (["predict", "{run}", "--", "-1+2="], "'-' at position 0"),
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
    argv = ["-w", str(root)] if len(args) > 1 or args[0] == "frobnicate" else []
    argv = [args[0], *argv, *(a.format(run=name) for a in args[1:])]
    if args[0] == "train" and len(args) > 1:
        argv.insert(1, "--no-progress")
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and fragment in err
    assert len(err.strip().splitlines()) == 1, err
    assert len(err) < 400, "quoted input is cut"
    assert "Traceback" not in err + out
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("c.toml", 'lr = "fast"', "unknown section"),
        ("c.toml", '[train]\nlr = "1e-3"', "train lr must be a number"),
        ("c.json", "[1, 2]", "must hold a table"),
        ("c.toml", "[train\n", "does not parse"),
        ("c.toml", "[train]\nlr = inf", "train lr must be a number in (0, 10], got inf"),
        ("c.toml", "[train]\nlr = nan", "train lr must be a number in (0, 10], got nan"),
        ("c.toml", "[train]\nlr = 1e30\nsteps = 5", "train lr must be a number in (0, 10]"),
        ("c.toml", "[train]\nweight_decay = nan", "train weight_decay must be a number in [0, 10]"),
        ("c.toml", "[train]\nsteps = true", "train steps must be an integer in [1,"),
        ("c.toml", "[train]\nsteps = 1e20", "train steps must be an integer in [1,"),
        ("c.toml", "[task]\nn_digits = true", "addition n_digits must be an integer like 5"),
        ("c.toml", "[model]\nn_layers = true", "model n_layers must be an integer in [1, 256]"),
        ("c.toml", "[model]\nd_model = 100000000", "model d_model must be an integer in [1,"),
        ("c.toml", '[train]\nprecision = "fp16"', "train precision 'fp16' is not one of"),
        ("c.json", '{"train": {"lr": NaN}}', "train lr must be a number"),
        ("c.json", "[" * 100_000, "does not parse"),
        ("c.toml", '[train]\nschedule = "' + "z" * 5000 + '"', "(5002 characters) is not one of"),
    ],
)
def test_bad_config_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    ws = tmp_path / "w"
    code, _, err = run_cli(capsys, "train", "addition", "--config", str(cfg), "-w", str(ws))
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert len(err) < 400 and not ws.exists()


def test_a_config_file_that_is_not_utf8(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"[train]\nlr = 0.1 # caf\xe9\n")
    ws = tmp_path / "w"
    code, _, err = run_cli(capsys, "train", "addition", "--config", str(cfg), "-w", str(ws))
    assert code == 2 and "is not UTF-8 text (byte 22)" in err and len(err.strip().splitlines()) == 1
    assert not ws.exists()


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


def test_no_arguments_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys)
    assert code == 0 and "train" in out and "reindex" in out and "Traceback" not in err


def test_ctrl_c_in_a_command_exits_130(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    trained_workspace: tuple[Path, str],
) -> None:
    root, name = trained_workspace

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_api, "load_trained", interrupted)  # Typer turns it into Exit(130)
    code, _, err = run_cli(capsys, "eval", name, "-w", str(root))
    assert (code, err.strip()) == (130, "interrupted")


def test_a_training_stopped_by_ctrl_c_exits_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stopped = TrainResult("addition-tiny-x", 7, "interrupted", None, 1.0)
    monkeypatch.setattr(runs_api, "train", lambda *args, **kwargs: stopped)
    code, out, err = run_cli(capsys, "train", "addition", "--preset", "tiny", "-w", str(tmp_path))
    assert code == 130 and out == ""
    assert err.strip() == "interrupted at step 7; continue with `tinylens resume addition-tiny-x`"


def test_ctrl_c_after_the_command_returned_is_ignored() -> None:
    """The real process's handler: a Ctrl-C that lands between the command's return and the exit
    (where a handler swap would still raise) does nothing."""
    handler = cli._CtrlC()
    with pytest.raises(KeyboardInterrupt):
        handler.handle(signal.SIGINT, None)
    handler.accepted = False
    handler.handle(signal.SIGINT, None)


def test_two_ctrl_c_in_a_row_never_exit_0(tmp_path: Path) -> None:
    """The real process: Ctrl-C during training, and a second one 10 ms later."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "tinylens", "train", "addition", "--preset", "tiny"]
    argv += ["--steps", "100000", "--no-progress", "--name", "r", "-w", str(tmp_path)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "r" / "checkpoints").glob("step-*.safetensors")):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # 130, or killed by the second SIGINT itself (-2): never 0, never a traceback
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
    assert "Traceback" not in err


def test_corrupt_config_json_is_one_line(
    capsys: pytest.CaptureFixture[str], trained_workspace: tuple[Path, str], tmp_path: Path
) -> None:
    root, name = trained_workspace
    copy = tmp_path / "ws"
    shutil.copytree(root, copy)
    config = copy / name / "config.json"
    good = json.loads(config.read_text())
    for broken in ([], None, {**good, "seed": "abc"}, {**good, "seed": True}, {**good, "train": []}):
        config.write_text(json.dumps(broken))
        for command in (["eval", name, "--n", "10"], ["predict", name, "1+1="]):
            code, _, err = run_cli(capsys, *command, "-w", str(copy))
            assert code == 2 and err.startswith("error: "), (broken, command, err)
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_eval_in_batches_equals_scoring_all_at_once(
    capsys: pytest.CaptureFixture[str], trained_workspace: tuple[Path, str]
) -> None:
    root, name = trained_workspace
    n = EVAL_BATCH + 37  # two batches, the second a partial one
    code, out, _ = run_cli(capsys, "eval", name, "-w", str(root), "--n", str(n), "--json", "--seed", "3")
    assert code == 0
    report = json.loads(out)
    trained = runs_api.load_trained(Workspace(root), name)
    rng = torch.Generator().manual_seed(derive_seed(3, "cli-eval"))
    tokens = torch.cat([trained.task.sample(EVAL_BATCH, rng), trained.task.sample(37, rng)])
    whole = evaluate(trained.model, trained.task, tokens).to_dict()
    assert (report["n"], report["exact"]) == (n, whole["exact"])
    assert report["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    for kind in ("positions", "question_groups"):
        for key, score in whole[kind].items():
            got = report[kind][key]
            # a class no question falls in: NaN in memory, null in --json
            expected = None if math.isnan(score["acc"]) else score["acc"]
            assert [got["acc"], got["count"]] == [expected, score["count"]]


def test_reindex_finds_the_runs_of_a_lost_index(
    capsys: pytest.CaptureFixture[str], trained_workspace: tuple[Path, str], tmp_path: Path
) -> None:
    root, name = trained_workspace
    copy = tmp_path / "ws"
    shutil.copytree(root, copy)
    for db in copy.glob("tinylens.db*"):
        db.unlink()
    code, out, _ = run_cli(capsys, "reindex", "-w", str(copy))
    assert code == 0 and out.strip() == f"indexed 1 run in {copy}"
    code, out, _ = run_cli(capsys, "runs", "-w", str(copy), "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == [name]
    code, _, err = run_cli(capsys, "reindex", "-w", str(tmp_path / "nowhere"))
    assert code == 2 and "no workspace folder" in err and not (tmp_path / "nowhere").exists()


def test_study_list_comes_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "study", "--list")
    assert code == 0
    for name in ("addition", "maze", "seqcont"):
        assert name in out
    assert "Quirke & Barez" in out
    code, _, err = run_cli(capsys, "study")
    assert code == 2 and "tinylens study --list" in err and len(err.strip().splitlines()) == 1


def test_resume_of_a_run_that_lost_its_checkpoints_is_refused_until_restart(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    w = ["-w", str(tmp_path), "--no-progress"]
    code, out, _ = run_cli(capsys, "train", "addition", "--preset", "tiny", "--steps", "20", *w)
    name = out.strip().splitlines()[-1]
    ws = Workspace(tmp_path)
    rows = ws.run(name).metric_rows()
    shutil.rmtree(ws.run(name).path / "checkpoints")
    code, _, err = run_cli(capsys, "resume", name, *w)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "lost its training state" in err and f"tinylens resume {name} --restart" in err
    assert ws.run(name).metric_rows() == rows
    code, out, _ = run_cli(capsys, "resume", name, "--restart", *w)
    assert code == 0 and out.strip() == name
    assert sorted(ws.run(name).metric_rows()) == sorted(rows), "every metric once again"
    assert ws.info(name).status == "done" and ws.run(name).state_file() is not None
