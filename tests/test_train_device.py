"""Training off the main process's data path and off the CPU: batches built ahead in worker processes
are the batches drawn in place, and a run on a GPU trains, saves CPU checkpoints and resumes.

The GPU tests run only where torch sees a CUDA device (never in CI); their skip says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinylens.config import RunConfig, TrainConfig, make_run_config
from tinylens.errors import ConfigError
from tinylens.evaluation import evaluate
from tinylens.runs import load_trained, train
from tinylens.store import Workspace
from tinylens.tasks import make_task
from tinylens.train import Trainer, training_device
from tinylens.train_data import WORKERS_VARIABLE, TrainBatches, default_data_workers

from .helpers import stop_after
from .test_train import all_metrics, assert_same_weights, weights
from .test_train_forward import SHARED as MAZE_RUN

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")


@pytest.mark.parametrize("k", [1, 4])
def test_batches_built_in_workers_are_the_batches_drawn_in_place(k: int) -> None:
    task = make_task("maze", {"grid": 3})
    in_place_rng, ahead_rng = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    in_place = TrainBatches(task, 16, k, in_place_rng, workers=0)
    ahead = TrainBatches(task, 16, k, ahead_rng, workers=2)
    try:
        for _ in range(7):
            assert torch.equal(ahead.next(), in_place.next())
            # the run's generator is where in-place drawing leaves it, so a state saved now resumes
            assert torch.equal(ahead_rng.get_state(), in_place_rng.get_state())
    finally:
        ahead.close()


def test_a_dead_worker_leaves_the_batches_unchanged(capfd: pytest.CaptureFixture[str]) -> None:
    task = make_task("maze", {"grid": 3})
    in_place_rng, ahead_rng = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    in_place = TrainBatches(task, 16, 1, in_place_rng, workers=0)
    ahead = TrainBatches(task, 16, 1, ahead_rng, workers=2)
    try:
        assert torch.equal(ahead.next(), in_place.next())
        assert ahead._pool is not None
        for pid in list(ahead._pool._processes):
            os.kill(pid, signal.SIGKILL)
        for _ in range(6):
            assert torch.equal(ahead.next(), in_place.next())
        assert ahead.workers == 0 and ahead._pool is None
        assert "data worker process died" in capfd.readouterr().err
    finally:
        ahead.close()


def test_a_task_without_seeded_batches_draws_in_place() -> None:
    task = make_task("addition", {})
    batches = TrainBatches(task, 8, 1, torch.Generator().manual_seed(0), workers=4)
    assert batches.workers == 0
    expected = task.sample(8, torch.Generator().manual_seed(0), train=True)
    assert torch.equal(batches.next(), expected)


def test_data_workers_default_to_none_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKERS_VARIABLE, raising=False)
    assert default_data_workers(torch.device("cpu")) == 0
    assert 0 <= default_data_workers(torch.device("cuda")) <= 8
    monkeypatch.setenv(WORKERS_VARIABLE, "3")
    assert default_data_workers(torch.device("cpu")) == 3
    monkeypatch.setenv(WORKERS_VARIABLE, "many")
    with pytest.raises(ConfigError, match="number of processes"):
        default_data_workers(torch.device("cpu"))


def test_training_with_data_workers_stops_resumes_and_equals_training_in_place(
    tmp_path: Path,
) -> None:
    cfg = make_run_config("maze", "tiny", overrides=MAZE_RUN)
    straight = train(Workspace(tmp_path / "straight"), cfg, progress=False)

    workspace = Workspace(tmp_path / "workers")
    run = workspace.create_run(cfg.default_name(), cfg.to_dict(), kind="train")
    trainer = Trainer(run, cfg, progress=False, data_workers=2)
    stop_after(trainer, 23)
    assert trainer.fit().status == "interrupted"
    assert trainer._batches is None  # the workers were stopped
    resumed = Trainer(workspace.run(run.name), cfg, progress=False, data_workers=2).fit()
    assert resumed.status == "done"
    assert_same_weights(
        weights(tmp_path / "workers", run.name), weights(tmp_path / "straight", straight.run)
    )
    assert all_metrics(tmp_path / "workers", run.name) == all_metrics(
        tmp_path / "straight", straight.run
    )


def _session_size(session: int) -> int:
    """Processes whose session id is ``session`` (Linux's /proc)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            count += int(fields[3]) == session  # field 6 of stat: the session id
    return count


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes in /proc")
def test_ctrl_c_stops_a_run_with_data_workers_in_one_line(tmp_path: Path) -> None:
    """The command line with batches built in worker processes; Ctrl-C reaches every process of
    the group, as from a terminal: exit 130, one line, no worker tracebacks, resumable."""
    env = {**os.environ, WORKERS_VARIABLE: "2", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "tinylens", "train", "maze", "--preset", "tiny"]
    argv += ["--steps", "100000", "--no-progress", "--name", "r", "-w", str(tmp_path)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # trainer, resource tracker, fork server and both workers
        while _session_size(proc.pid) < 5 or not list((tmp_path / "r" / "checkpoints").glob("step-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("interrupted at step ")
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "interrupted"


def test_device_is_checked_and_left_out_of_older_run_names() -> None:
    with pytest.raises(ConfigError, match="is not one of"):
        TrainConfig(device="gpu")
    cfg = make_run_config("maze", "tiny", overrides=MAZE_RUN)
    assert "device" not in cfg.to_dict()["train"]
    on_gpu = make_run_config("maze", "tiny", overrides={**MAZE_RUN, "train": {"device": "cuda"}})
    assert on_gpu.to_dict()["train"]["device"] == "cuda"
    assert on_gpu.identity != cfg.identity


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a CUDA device")
def test_asking_for_cuda_without_one_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        training_device(TrainConfig(device="cuda"))


def _gpu_cfg(**train_over: object) -> RunConfig:
    over = {**MAZE_RUN, "train": {**MAZE_RUN["train"], "device": "cuda", **train_over}}
    return make_run_config("maze", "tiny", overrides=over)


@needs_cuda
@pytest.mark.parametrize(
    "train_over",
    [{}, {"precision": "bf16"}, {"forward": "bridge", "queries_per_prompt": 1}],
    ids=["direct-k4", "direct-k4-bf16", "bridge"],
)
def test_a_gpu_run_learns_and_its_checkpoints_load_on_the_cpu(tmp_path: Path, train_over: dict) -> None:
    cfg = _gpu_cfg(steps=120, **train_over)
    result = train(Workspace(tmp_path), cfg, progress=False)
    run = Workspace(tmp_path).run(result.run)
    losses = run.metrics()["train/loss"].values
    assert losses[-1] < 0.7 * losses[0]
    assert all(t.device.type == "cpu" for t in weights(tmp_path, result.run).values())
    trained = load_trained(Workspace(tmp_path), result.run)  # on the CPU
    assert next(trained.model.parameters()).device.type == "cpu"
    held_out = Trainer(run, cfg, progress=False).eval_tokens  # the run's own held-out set
    on_cpu = evaluate(trained.model.eval(), trained.task, held_out)
    assert result.final_eval is not None
    assert on_cpu.loss == pytest.approx(result.final_eval.loss, rel=1e-3, abs=1e-4)


@needs_cuda
def test_a_gpu_run_stops_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    cfg = _gpu_cfg()
    straight = train(Workspace(tmp_path / "straight"), cfg, progress=False)
    workspace = Workspace(tmp_path / "stopped")
    run = workspace.create_run(cfg.default_name(), cfg.to_dict(), kind="train")
    trainer = Trainer(run, cfg, progress=False)
    stop_after(trainer, 23)
    assert trainer.fit().status == "interrupted"
    Trainer(workspace.run(run.name), cfg, progress=False).fit()
    a, b = weights(tmp_path / "stopped", run.name), weights(tmp_path / "straight", straight.run)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"GPU resume: largest weight difference {worst:.3g} (0 means bit-identical)")
    # CUDA kernels may sum in a different order from call to call; the tolerance allows that
    # and nothing more (a wrong data or optimizer state would move weights by ~1e-2)
    assert worst <= 1e-5
