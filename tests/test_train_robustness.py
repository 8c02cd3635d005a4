"""Training under stress: concurrent trainers, divergence, Ctrl-C, damaged checkpoints and edited
configs. Each case once lost data or gave a wrong result without an error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylens import store
from tinylens import train as train_module
from tinylens.errors import CheckpointError, ConfigError, TinylensError
from tinylens.runs import load_trained, resume, train
from tinylens.store import Workspace, load_tensors
from tinylens.train import DivergenceError, Trainer, checkpoint_steps

from .helpers import run_cfg, stop_every_trainer_at
from .test_train import all_metrics, assert_same_weights, weights

REPO = Path(__file__).resolve().parents[1]


def test_two_concurrent_trainings_of_one_config_lose_nothing(tmp_path: Path) -> None:
    """Two processes train the same config into a fresh workspace at the same moment.

    Each one's first ``has_run`` answers False, as when both check before either has created the
    run: the race that made the loser delete the winner's index row.
    """
    code = (
        "import sys, time\n"
        "from tests.helpers import run_cfg\n"
        "from tinylens.runs import train\n"
        "from tinylens.store import Workspace\n"
        "real, asked = Workspace.has_run, []\n"
        "Workspace.has_run = lambda self, n: real(self, n) if asked else asked.append(n)\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "print(train(Workspace(sys.argv[1]), run_cfg(steps=40), progress=False).run)\n"
    )
    start = time.time() + 10  # after both interpreters have imported torch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "ws"), str(start)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    names = {out.strip() for out, _ in outputs}
    assert len(names) == 1
    (name,) = names

    ws = Workspace(tmp_path / "ws")
    infos = ws.runs()
    assert [(i.name, i.status, i.step) for i in infos] == [(name, "done", 40)]
    # the reference trains in a process like theirs: one thread, so its float sums match bit for bit
    straight = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "straight"), "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.strip()
    assert all_metrics(tmp_path / "ws", name) == all_metrics(tmp_path / "straight", straight)
    assert_same_weights(weights(tmp_path / "ws", name), weights(tmp_path / "straight", straight))
    rows = ws.run(name).metric_rows()
    assert len(rows) == len(set((s, n) for s, n, _ in rows)), "no metric logged twice"


def _poison_loss_from(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """From update ``step`` on, the training loss is NaN (as a diverging run's would be)."""
    original = Trainer._answer_logits

    def poisoned(self: Trainer, batch: torch.Tensor) -> torch.Tensor:
        logits = original(self, batch)  # only training steps call this; evaluations do not
        return logits * float("nan") if self.step >= step else logits

    monkeypatch.setattr(Trainer, "_answer_logits", poisoned)


def test_a_diverging_run_stops_and_keeps_its_last_good_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison_loss_from(monkeypatch, 13)
    ws = Workspace(tmp_path)
    cfg = run_cfg(steps=60, save_every=5)
    with pytest.raises(DivergenceError, match=r"loss became NaN at step 13; lower the learning rate"):
        train(ws, cfg, progress=False)
    name = cfg.default_name()
    info = ws.info(name)
    assert (info.status, info.step) == ("failed", 10)
    state, meta = load_tensors(ws.run(name).state_file(), kind=train_module.STATE_KIND)
    assert meta["step"] == "10"
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    assert max(ws.run(name).checkpoint_steps()) == 12
    assert all(np.isfinite(s.values).all() for s in ws.run(name).metrics().values())


def test_non_finite_weights_are_never_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Trainer.train_step

    def step_then_break(self: Trainer) -> None:
        original(self)
        if self.step == 10:  # a save step: the state at 5 must stay the latest
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))

    monkeypatch.setattr(Trainer, "train_step", step_then_break)
    ws = Workspace(tmp_path)
    cfg = run_cfg(steps=60, save_every=5)
    with pytest.raises(DivergenceError, match="became NaN or infinite at step 10"):
        train(ws, cfg, progress=False)
    _, meta = load_tensors(ws.run(cfg.default_name()).state_file(), kind=train_module.STATE_KIND)
    assert meta["step"] == "5"
    assert ws.info(cfg.default_name()).status == "failed"


def test_ctrl_c_adds_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = run_cfg(steps=60)
    assert 8 not in checkpoint_steps(cfg.train)
    stop_every_trainer_at(monkeypatch, 8)
    ws = Workspace(tmp_path / "a")
    stopped = train(ws, cfg, progress=False)
    assert (stopped.status, stopped.step) == ("interrupted", 8)
    assert 8 not in ws.run(stopped.run).checkpoint_steps()
    monkeypatch.undo()
    resume(ws, stopped.run, progress=False)

    straight = train(Workspace(tmp_path / "b"), cfg, progress=False)
    run_a, run_b = ws.run(stopped.run), Workspace(tmp_path / "b").run(straight.run)
    assert run_a.checkpoint_steps() == run_b.checkpoint_steps()
    assert_same_weights(weights(tmp_path / "a", stopped.run), weights(tmp_path / "b", straight.run))
    assert all_metrics(tmp_path / "a", stopped.run) == all_metrics(tmp_path / "b", straight.run)
    assert run_a.metric_rows() == run_b.metric_rows(), "the metrics file resumes exactly too"


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Workspace, str]:
    ws = Workspace(tmp_path)
    return ws, train(ws, run_cfg(steps=20), progress=False).run


def _garble(path: Path) -> None:
    """Overwrite 16 floats in the middle of a safetensors file's tensor data."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    middle = (start + len(raw)) // 2
    raw[middle : middle + 64] = os.urandom(64)
    path.write_bytes(bytes(raw))


def test_damaged_checkpoints_are_errors_not_results(finished: tuple[Workspace, str]) -> None:
    ws, name = finished
    run = ws.run(name)
    _garble(run.checkpoint_file(5))
    with pytest.raises(CheckpointError, match=r"step-5\.safetensors is damaged"):
        load_trained(ws, name, 5)
    load_trained(ws, name, 20)  # the others are fine
    _garble(run.state_file())
    with pytest.raises(CheckpointError, match=r"latest\.safetensors is damaged"):
        resume(ws, name, progress=False)


def _edit_config(ws: Workspace, name: str, edit: Callable[[dict], object]) -> None:
    path = ws.run(name).path / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(edit(config)))


def _set(section: str, key: str, value: object):
    def edit(config: dict) -> dict:
        config[section][key] = value
        return config

    return edit


@pytest.mark.parametrize("n_digits", [4, 6])
def test_an_edited_task_is_refused(finished: tuple[Workspace, str], n_digits: int) -> None:
    ws, name = finished
    _edit_config(ws, name, _set("task_options", "n_digits", n_digits))
    with pytest.raises(ConfigError, match="does not fit together"):
        load_trained(ws, name)
    with pytest.raises(ConfigError, match="does not fit together"):
        resume(ws, name, progress=False)


def test_an_edited_model_is_refused(finished: tuple[Workspace, str]) -> None:
    ws, name = finished
    _edit_config(ws, name, _set("model", "d_mlp", 128))
    with pytest.raises(TinylensError, match=r"config\.json was changed"):
        load_trained(ws, name)
    with pytest.raises(CheckpointError, match="different config"):
        resume(ws, name, progress=False)


@pytest.mark.parametrize(
    "edit",
    [lambda c: [], lambda c: None, lambda c: "x", lambda c: {**c, "seed": "abc"}],
    ids=["list", "null", "string", "seed-abc"],
)
def test_a_config_of_the_wrong_shape_is_one_clear_error(
    finished: tuple[Workspace, str], edit: object
) -> None:
    ws, name = finished
    _edit_config(ws, name, edit)
    for action in (lambda: load_trained(ws, name), lambda: resume(ws, name, progress=False)):
        with pytest.raises(TinylensError) as err:
            action()
        assert "\n" not in str(err.value)


def test_an_empty_run_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must not be empty"):
        train(Workspace(tmp_path), run_cfg(steps=5), name="", progress=False)
    assert not (tmp_path / "tinylens.db").exists() or Workspace(tmp_path).runs() == []


def test_resuming_removes_debris_of_a_killed_writer(finished: tuple[Workspace, str]) -> None:
    ws, name = finished
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    debris = (
        ws.run(name).path
        / "checkpoints"
        / f".latest.safetensors.{store._host_tag()}-{proc.pid}.abcd1234.tmp"
    )
    debris.write_bytes(b"half a checkpoint")
    resume(ws, name, progress=False)
    assert not debris.exists()


# -- lost checkpoints: refused, never rebuilt in part (findings, second round, 2) --


def test_a_run_whose_checkpoints_were_deleted_is_refused_not_rebuilt(
    finished: tuple[Workspace, str],
) -> None:
    ws, name = finished
    run = ws.run(name)
    rows = run.metric_rows()
    shutil.rmtree(run.path / "checkpoints")
    cfg = run_cfg(steps=20)
    for action in (lambda: resume(ws, name, progress=False), lambda: train(ws, cfg, progress=False)):
        with pytest.raises(CheckpointError) as caught:
            action()
        message = str(caught.value)
        assert "lost its training state" in message and "latest.safetensors is missing" in message
        assert f"tinylens resume {name} --restart" in message and "\n" not in message
    assert run.metric_rows() == rows, "nothing was logged again"
    assert run.checkpoint_steps() == [] and run.state().status == "done"


def test_resuming_a_run_that_lost_step_checkpoints_is_refused(
    finished: tuple[Workspace, str],
) -> None:
    ws, name = finished
    run = ws.run(name)
    run.checkpoint_file(5).unlink()
    with pytest.raises(CheckpointError, match=r"lacks the checkpoints of steps 5, which were"):
        resume(ws, name, progress=False)
    with pytest.raises(CheckpointError, match=r"--restart"):
        train(ws, run_cfg(steps=20), progress=False)


def test_restart_trains_a_run_that_lost_its_checkpoints_again_from_scratch(tmp_path: Path) -> None:
    cfg = run_cfg(steps=20)
    ws = Workspace(tmp_path / "a")
    name = train(ws, cfg, progress=False).run
    shutil.rmtree(ws.run(name).path / "checkpoints")
    (ws.run(name).path / "results" / "stale.json").write_text("{}")
    restarted = resume(ws, name, progress=False, restart=True)
    assert (restarted.status, restarted.step, restarted.trained_steps) == ("done", 20, 20)
    assert not ws.run(name).has_result("stale"), "results of the old training are gone"

    straight = train(Workspace(tmp_path / "b"), cfg, progress=False).run
    run_a, run_b = ws.run(name), Workspace(tmp_path / "b").run(straight)
    assert run_a.metric_rows() == run_b.metric_rows(), "each metric once, as in a straight run"
    assert all_metrics(tmp_path / "a", name) == all_metrics(tmp_path / "b", straight)
    assert run_a.checkpoint_steps() == run_b.checkpoint_steps()
    assert_same_weights(weights(tmp_path / "a", name), weights(tmp_path / "b", straight))


class _Killed(BaseException):
    """Stands in for kill -9 in the middle of writing a file."""


def test_a_run_killed_before_its_first_state_starts_over_and_logs_each_metric_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = run_cfg(steps=40)  # first save at step 20

    def killed(self: store.Run, tensors: object, meta: object) -> None:
        raise _Killed  # after the metrics of steps 0–20 were flushed, before the state is written

    monkeypatch.setattr(store.Run, "save_state", killed)
    ws = Workspace(tmp_path / "a")
    with pytest.raises(_Killed):
        train(ws, cfg, progress=False)
    name = cfg.default_name()
    assert ws.run(name).state_file() is None and ws.run(name).metric_rows()
    monkeypatch.undo()
    assert resume(ws, name, progress=False).step == 40  # nothing past the first save was lost

    straight = train(Workspace(tmp_path / "b"), cfg, progress=False).run
    assert ws.run(name).metric_rows() == Workspace(tmp_path / "b").run(straight).metric_rows()
    assert_same_weights(weights(tmp_path / "a", name), weights(tmp_path / "b", straight))
