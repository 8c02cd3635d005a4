"""Sweeps on a local Ray cluster of 2 CPUs: the same results as the local backend, and a worker
killed in the middle of a trial changes nothing (Ray retries it; the retry resumes the run)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tinylens.store import Workspace
from tinylens.sweep import SweepResult, expand, run_sweep

from .sweep_helpers import TRAIN, assert_same_sweeps, four_trials

ray = pytest.importorskip("ray", reason="the ray backend's tests need Ray (pip install 'tinylens[ray]')")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray of 2 CPUs for the module; the backend uses it as it is."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 2**20,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SweepResult]:
    """The 4-trial sweep on the local backend: the reference."""
    root = tmp_path_factory.mktemp("local")
    return root, run_sweep(Workspace(root), four_trials(), progress=False)


def test_ray_gives_the_local_backends_results(
    ray_cluster: None, local_sweep: tuple[Path, SweepResult], tmp_path: Path
) -> None:
    result = run_sweep(Workspace(tmp_path), four_trials(), backend="ray", progress=False)
    pids = {o.pid for o in result.outcomes.values()}
    assert os.getpid() not in pids  # the trials ran in Ray's workers
    assert sorted(o.trained_steps for o in result.outcomes.values()) == [TRAIN["steps"]] * 4
    assert_same_sweeps(*local_sweep, tmp_path, result)
    infos = {i.name: i for i in Workspace(tmp_path).runs()}
    assert all(infos[t.run].status == "done" for t in result.trials)


def _kill_once_saved(root: Path, run: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the worker training ``run`` as soon as it has saved a state to resume from."""
    status = root / run / "status.json"
    while not stop.is_set():
        try:
            record = json.loads(status.read_text())
        except (OSError, ValueError):
            record = {}
        pid = record.get("pid")
        saved = record.get("step", 0) >= TRAIN["save_every"]
        if record.get("status") == "running" and saved and pid not in (None, os.getpid()):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.005)


def test_a_worker_killed_mid_trial_is_retried_and_changes_nothing(
    ray_cluster: None, local_sweep: tuple[Path, SweepResult], tmp_path: Path
) -> None:
    spec = four_trials()
    victim = expand(spec)[2].run
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_once_saved, args=(tmp_path, victim, killed, stop))
    killer.start()
    try:
        result = run_sweep(Workspace(tmp_path), spec, backend="ray", progress=False)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1, "the trial finished before it could be killed"
    outcome = result.outcomes[victim]
    assert outcome.pid != killed[0]  # a new worker ran the retry ...
    assert 0 < outcome.trained_steps < TRAIN["steps"]  # ... from the state the killed one saved
    assert [t.status for t in result.trials] == ["done"] * 4
    assert_same_sweeps(*local_sweep, tmp_path, result)
