"""The workspace: run folders, the SQLite index and metrics, atomic writes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylens.errors import CheckpointError, ConfigError, RunNotFoundError
from tinylens.store import Workspace, atomic_path, config_hash, load_tensors, save_tensors


def test_create_run_lays_out_folder_and_index(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    run = ws.create_run("r1", {"b": 1, "a": [1, 2]}, kind="train")
    assert run.config == {"a": [1, 2], "b": 1}
    assert (tmp_path / "r1" / "config.json").is_file()
    assert ws.run_names() == ["r1"]
    info = ws.info("r1")
    assert (info.status, info.kind, info.step) == ("running", "train", 0)
    assert info.config_hash == config_hash({"a": [1, 2], "b": 1})
    mode = sqlite3.connect(tmp_path / "tinylens.db").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_config_hash_ignores_key_order() -> None:
    assert config_hash({"a": 1, "b": {"c": 2, "d": 3}}) == config_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_duplicate_and_bad_names(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    first = ws.create_run("r1", {"a": 1}, kind="train")
    again = ws.create_run("r1", {"a": 1}, kind="train")  # the same config: the same run
    assert again.path == first.path and ws.run_names() == ["r1"]
    with pytest.raises(ConfigError, match=r"already exists .* different config"):
        ws.create_run("r1", {"a": 2}, kind="train")
    for bad in ["", "../x", ".hidden", "a/b", "x" * 200, "evil\n", "a\nb"]:
        with pytest.raises(ConfigError, match="not allowed"):
            ws.create_run(bad, {}, kind="train")
    for reserved in ["tinylens.db", "tinylens.db-wal", "TinyLens.DB-shm", "tinylens.db.corrupt-1"]:
        with pytest.raises(ConfigError, match="reserved"):
            ws.create_run(reserved, {}, kind="train")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("tinylens.db")) == ["r1"]


def test_missing_run_lists_known_ones(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.create_run("alpha", {}, kind="train")
    with pytest.raises(RunNotFoundError, match="alpha"):
        ws.run("beta")
    with pytest.raises(RunNotFoundError, match="not a run name"):
        ws.run("../alpha")


def test_json_results_are_strict(tmp_path: Path) -> None:
    run = Workspace(tmp_path).create_run("r", {}, kind="train")
    path = run.write_result("x", {"a": float("nan"), "b": [1.0, float("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None]}


def test_a_recreated_run_does_not_inherit_old_metrics(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.create_run("r", {}, kind="train").log_metrics([(1, "m", 1.0)])
    shutil.rmtree(tmp_path / "r")  # the folder is gone, its index rows are not
    assert ws.create_run("r", {}, kind="train").metrics() == {}


def test_metrics_round_trip_as_arrays(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    run = ws.create_run("r", {}, kind="train")
    run.log_metrics([(s, "eval/loss", 1.0 / (s + 1)) for s in (30, 10, 20)])
    run.log_metrics([(10, "eval/acc", 0.5), (10, "eval/loss", 9.0)])  # overwrite step 10
    m = run.metrics()
    assert set(m) == {"eval/loss", "eval/acc"}
    np.testing.assert_array_equal(m["eval/loss"].steps, [10, 20, 30])
    np.testing.assert_allclose(m["eval/loss"].values, [9.0, 1 / 21, 1 / 31])
    assert set(run.metrics("eval/acc")) == {"eval/acc"}
    ws.delete_metrics_after("r", 15)
    np.testing.assert_array_equal(run.metrics()["eval/loss"].steps, [10])


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_tensors_kind_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"x": torch.arange(3)}, {"kind": "a"})
    tensors, _ = load_tensors(path, kind="a")
    assert torch.equal(tensors["x"], torch.arange(3))
    with pytest.raises(CheckpointError, match="not a 'b' file"):
        load_tensors(path, kind="b")


def test_checkpoint_lookup_errors(tmp_path: Path) -> None:
    run = Workspace(tmp_path).create_run("r", {}, kind="train")
    with pytest.raises(CheckpointError, match="no checkpoints"):
        run.checkpoint_file()
    run.save_checkpoint(5, {"x": torch.zeros(1)}, {"kind": "k"})
    run.save_checkpoint(50, {"x": torch.zeros(1)}, {"kind": "k"})
    assert run.checkpoint_steps() == [5, 50]
    assert run.checkpoint_file().name == "step-50.safetensors"
    with pytest.raises(CheckpointError, match=r"steps \[5, 50\]"):
        run.checkpoint_file(7)
