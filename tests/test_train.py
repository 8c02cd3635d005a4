"""The trainer: it learns, it is deterministic, and a killed run resumes bit-identically."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tinylens.config import TrainConfig, make_run_config
from tinylens.errors import ConfigError
from tinylens.runs import resume, train
from tinylens.store import Workspace
from tinylens.train import Trainer, checkpoint_steps, lr_at

from .helpers import run_cfg

# A run long enough (~5 s) to be killed in the middle. save_every is not a multiple of log_every,
# so most saved states hold a partly summed training-loss interval that resume must restore.
LONG = {"steps": 800, "eval_every": 100, "eval_size": 128, "save_every": 25, "log_every": 10}


def weights(workspace: Path, run: str) -> dict[str, torch.Tensor]:
    path = Workspace(workspace).run(run).checkpoint_file()
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def all_metrics(workspace: Path, run: str) -> dict[str, tuple[list, list]]:
    series = Workspace(workspace).run(run).metrics()
    return {k: (v.steps.tolist(), v.values.tolist()) for k, v in series.items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"{key} differs"


def test_loss_falls_and_everything_is_logged(tmp_path: Path) -> None:
    result = train(Workspace(tmp_path), run_cfg(steps=100), progress=False)
    run = Workspace(tmp_path).run(result.run)
    m = run.metrics()
    assert m["eval/loss"].values[-1] < 0.8 * m["eval/loss"].values[0]
    assert m["train/loss"].values[-1] < m["train/loss"].values[0]
    for name in ["A5", "A0", "BA", "UC1", "S1"]:
        assert f"eval/loss/{name}" in m
    assert "train/loss/A3" in m
    assert run.checkpoint_steps() == sorted(checkpoint_steps(run_cfg(steps=100).train))
    assert Workspace(tmp_path).info(result.run).status == "done"
    assert run.read_result("train_summary")["step"] == 100


def test_same_config_and_seed_give_identical_metrics(tmp_path: Path) -> None:
    cfg = run_cfg(steps=60)
    a = train(Workspace(tmp_path / "a"), cfg, progress=False)
    b = train(Workspace(tmp_path / "b"), cfg, progress=False)
    assert all_metrics(tmp_path / "a", a.run) == all_metrics(tmp_path / "b", b.run)
    assert_same_weights(weights(tmp_path / "a", a.run), weights(tmp_path / "b", b.run))
    c = train(Workspace(tmp_path / "c"), run_cfg(steps=60, seed=1), progress=False)
    assert all_metrics(tmp_path / "a", a.run) != all_metrics(tmp_path / "c", c.run)


def test_training_a_finished_config_again_reuses_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = run_cfg(steps=20)
    first = train(Workspace(tmp_path), cfg, progress=False)
    before = weights(tmp_path, first.run)

    def no_training(self: Trainer) -> None:
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(Trainer, "train_step", no_training)
    second = train(Workspace(tmp_path), cfg, progress=False)
    assert second.run == first.run and second.step == 20
    assert_same_weights(before, weights(tmp_path, second.run))


def _start_cli_run(workspace: Path, overrides: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tinylens", "train", "addition", "--preset", "tiny"]
    cmd += ["--config", str(overrides), "-w", str(workspace), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _saved_step(workspace: Path, run: str) -> int:
    path = workspace / run / "checkpoints" / "latest.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(f.metadata()["step"])
    except Exception:  # not written yet (or being renamed into place)
        return -1


def _interrupt_mid_run(
    tmp_path: Path, sig: signal.Signals, train_overrides: dict | None = None
) -> tuple[Path, str, Path]:
    overrides = tmp_path / "long.json"
    overrides.write_text(json.dumps({"train": train_overrides or LONG}))
    cfg = make_run_config("addition", "tiny", overrides={"train": train_overrides or LONG})
    workspace, run = tmp_path / "killed", cfg.default_name()
    proc = _start_cli_run(workspace, overrides)
    deadline = time.monotonic() + 120
    while _saved_step(workspace, run) < 100:
        assert proc.poll() is None, f"run ended before it could be stopped: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run never saved a state"
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    stopped_at = _saved_step(workspace, run)
    assert 100 <= stopped_at < LONG["steps"], "the run must be stopped part-way"
    return workspace, run, overrides


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sigkilled_run_resumes_bit_identical(tmp_path: Path, precision: str) -> None:
    overrides = {**LONG, "precision": precision}
    workspace, run, _ = _interrupt_mid_run(tmp_path, signal.SIGKILL, overrides)
    assert Workspace(workspace).info(run).status == "interrupted"  # its process is gone
    resumed = resume(Workspace(workspace), run, progress=False)
    assert resumed.status == "done" and resumed.step == LONG["steps"]

    cfg = make_run_config("addition", "tiny", overrides={"train": overrides})
    straight = train(Workspace(tmp_path / "straight"), cfg, progress=False)
    assert_same_weights(weights(workspace, run), weights(tmp_path / "straight", straight.run))
    assert all_metrics(workspace, run) == all_metrics(tmp_path / "straight", straight.run)


@pytest.mark.slow
def test_ctrl_c_saves_and_resumes_bit_identical(tmp_path: Path) -> None:
    workspace, run, overrides = _interrupt_mid_run(tmp_path, signal.SIGINT)
    assert Workspace(workspace).info(run).status == "interrupted"
    proc = _start_cli_run(workspace, overrides)  # the same command again picks the run up
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and stdout.strip().splitlines()[-1] == run

    cfg = make_run_config("addition", "tiny", overrides={"train": LONG})
    straight = train(Workspace(tmp_path / "straight"), cfg, progress=False)
    assert_same_weights(weights(workspace, run), weights(tmp_path / "straight", straight.run))
    assert all_metrics(workspace, run) == all_metrics(tmp_path / "straight", straight.run)


def test_bf16_training_learns_and_differs_from_fp32(tmp_path: Path) -> None:
    fp32 = train(Workspace(tmp_path / "a"), run_cfg(steps=60), progress=False)
    bf16 = train(Workspace(tmp_path / "b"), run_cfg(steps=60, precision="bf16"), progress=False)
    losses = Workspace(tmp_path / "b").run(bf16.run).metrics()["train/loss"].values
    assert losses[-1] < 0.8 * losses[0]
    a, b = weights(tmp_path / "a", fp32.run), weights(tmp_path / "b", bf16.run)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # autocast really ran
    assert all(v.dtype == torch.float32 for v in b.values())  # master weights stay fp32


def test_unknown_precision_is_rejected() -> None:
    with pytest.raises(ConfigError, match="precision 'fp16' is not one of"):
        TrainConfig(precision="fp16")


def test_lr_schedule() -> None:
    cos = TrainConfig(steps=1000, lr=1.0, warmup_steps=100, schedule="cosine")
    assert lr_at(1, cos) == pytest.approx(0.01)
    assert lr_at(100, cos) == pytest.approx(1.0)
    assert lr_at(550, cos) == pytest.approx(0.5)
    assert lr_at(1000, cos) == pytest.approx(0.0, abs=1e-12)
    const = TrainConfig(steps=1000, lr=1.0, warmup_steps=10, schedule="constant")
    assert [lr_at(s, const) for s in (5, 10, 999)] == pytest.approx([0.5, 1.0, 1.0])
    steps = [lr_at(s, cos) for s in range(100, 1001)]
    assert np.all(np.diff(steps) <= 1e-12), "cosine decay never increases"


def test_checkpoints_are_log_spaced() -> None:
    steps = sorted(checkpoint_steps(TrainConfig(steps=10_000, n_checkpoints=9)))
    assert steps[0] == 0 and steps[-1] == 10_000
    ratios = np.diff(np.log10(steps[1:]))
    assert np.allclose(ratios, 0.5, atol=0.05)
