"""The workspace survives what users and crashes do to it: a lost, empty or corrupt index, a
read-only folder, bad names and paths, damaged checkpoints, debris of killed writers."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylens import store
from tinylens.errors import CheckpointError, ConfigError, RunNotFoundError, TinylensError
from tinylens.store import (
    DB_NAME,
    METRICS_FILE,
    STATUS_FILE,
    Workspace,
    load_tensors,
    read_metrics_file,
    save_tensors,
)
from tinylens.store import index as store_index
from tinylens.store import workspace as store_workspace


def make_runs(root: Path) -> Workspace:
    """Two runs with metrics (one NaN), one finished; the index closed again."""
    ws = Workspace(root)
    a = ws.create_run("alpha", {"x": 1}, kind="train")
    a.log_metrics([(s, "loss", 1.0 / s) for s in (1, 2, 3)])
    a.log_metrics([(4, "loss", float("nan")), (4, "acc", float("inf"))])
    a.set_status("done", 4)
    b = ws.create_run("study-beta", {"y": 2}, kind="study")
    b.log_metrics([(10, "m", 0.5)])
    ws.close()
    return ws


def assert_intact(ws: Workspace) -> None:
    infos = {r.name: r for r in ws.runs()}
    assert sorted(infos) == ["alpha", "study-beta"]
    assert (infos["alpha"].status, infos["alpha"].step, infos["alpha"].kind) == ("done", 4, "train")
    assert infos["study-beta"].kind == "study"
    loss = ws.run("alpha").metrics()["loss"]
    np.testing.assert_array_equal(loss.steps, [1, 2, 3])  # NaN lives in the file only
    np.testing.assert_allclose(loss.values, [1.0, 0.5, 1 / 3])
    assert ws.run("alpha").metrics()["acc"].values.tolist() == [float("inf")]
    assert ws.run("study-beta").metrics()["m"].values.tolist() == [0.5]


def test_metrics_are_kept_in_the_run_folder(tmp_path: Path) -> None:
    make_runs(tmp_path)
    rows = read_metrics_file(tmp_path / "alpha" / METRICS_FILE)
    assert rows[:3] == [(1, "loss", 1.0), (2, "loss", 0.5), (3, "loss", 1 / 3)]
    assert np.isnan(rows[3][2]) and rows[4] == (4, "acc", float("inf"))
    for line in (tmp_path / "alpha" / METRICS_FILE).read_text().splitlines():
        json.loads(line)  # strict JSON: NaN and inf are written as strings
    status = json.loads((tmp_path / "alpha" / STATUS_FILE).read_text())
    assert (status["status"], status["step"], status["kind"]) == ("done", 4, "train")


@pytest.mark.parametrize("damage", ["deleted", "zeroed", "garbled", "truncated"])
def test_a_lost_or_damaged_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    make_runs(tmp_path)
    db = tmp_path / DB_NAME
    if damage == "deleted":
        db.unlink()
    elif damage == "zeroed":
        db.write_bytes(b"")
    elif damage == "garbled":
        db.write_bytes(os.urandom(db.stat().st_size))
    else:
        db.write_bytes(db.read_bytes()[:1500])
    assert_intact(Workspace(tmp_path))
    corrupt = sorted(p.name for p in tmp_path.glob(f"{DB_NAME}.corrupt-*"))
    if damage in ("garbled", "truncated"):
        assert corrupt, "a corrupt index is kept aside, not deleted"
    else:
        assert corrupt == []


def test_a_rebuilt_index_is_usable_for_writing(tmp_path: Path) -> None:
    make_runs(tmp_path)
    (tmp_path / DB_NAME).unlink()
    ws = Workspace(tmp_path)
    ws.run("alpha").log_metrics([(5, "loss", 0.1)])
    ws.set_status("study-beta", "done")
    assert ws.info("study-beta").status == "done"
    assert ws.run("alpha").metrics()["loss"].steps.tolist() == [1, 2, 3, 5]


def test_reindex_rebuilds_from_the_folders(tmp_path: Path) -> None:
    make_runs(tmp_path)
    ws = Workspace(tmp_path)
    with ws.db:
        ws.db.execute("DELETE FROM runs WHERE name = 'alpha'")
        ws.db.execute("DELETE FROM metrics")
        ws.db.execute(
            "INSERT INTO runs VALUES ('ghost', 'train', '', '{}', 'done', 0, 0, 0)"
        )  # its folder is gone
    assert ws.reindex() == ["alpha", "study-beta"]
    assert_intact(ws)
    with pytest.raises(RunNotFoundError):
        ws.info("ghost")


def test_an_index_row_lost_by_a_crash_comes_back_on_listing(tmp_path: Path) -> None:
    make_runs(tmp_path)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("DELETE FROM runs WHERE name = 'alpha'")
    db.close()
    assert_intact(Workspace(tmp_path))


def test_metrics_file_tolerates_a_cut_last_line(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    run = ws.create_run("r", {}, kind="train")
    run.log_metrics([(1, "a", 1.0), (2, "a", 2.0)])
    path = tmp_path / "r" / METRICS_FILE
    path.write_bytes(path.read_bytes()[:-7])  # kill -9 inside the write of the last line
    assert run.metric_rows() == [(1, "a", 1.0)]
    run.log_metrics([(3, "a", 3.0)])  # the cut line is dropped, not glued to the new one
    assert run.metric_rows() == [(1, "a", 1.0), (3, "a", 3.0)]
    ws.delete_metrics_after("r", 1)
    assert run.metric_rows() == [(1, "a", 1.0)]
    assert run.metrics()["a"].steps.tolist() == [1]


def test_a_read_only_workspace_can_be_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_runs(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    # root ignores permissions, so the check is patched as well as the modes set
    for module in (store_index, store_workspace):  # every module that asks
        monkeypatch.setattr(module, "_is_writable", lambda path: False)
    for path in [tmp_path, *tmp_path.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        ws = Workspace(tmp_path)
        assert_intact(ws)
        assert ws.read_only
        with pytest.raises(TinylensError, match="read-only"):
            ws.set_status("alpha", "running")
        with pytest.raises(TinylensError, match="read-only"):
            ws.create_run("new", {}, kind="train")
        ws.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    finally:
        for path in [tmp_path, *tmp_path.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_workspace_without_its_index_is_listed_from_the_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_runs(tmp_path)
    (tmp_path / DB_NAME).unlink()
    for module in (store_index, store_workspace):  # every module that asks
        monkeypatch.setattr(module, "_is_writable", lambda path: False)
    assert_intact(Workspace(tmp_path))
    assert not (tmp_path / DB_NAME).exists()


def test_workspace_under_a_file_is_a_config_error(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    for bad in (afile, afile / "ws", afile / "a" / "b"):
        with pytest.raises(ConfigError, match="workspace"):
            Workspace(bad).runs()


def test_a_name_taken_by_something_else_is_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "afile").write_text("keep me too")
    for name in ("notes", "afile"):
        with pytest.raises(ConfigError, match="not a run"):
            ws.create_run(name, {}, kind="train")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert ws.runs() == []


def test_damaged_tensor_bytes_are_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"w": torch.randn(64, 64), "b": torch.zeros(3)}, {"kind": "k"})
    load_tensors(path, kind="k")
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    raw[header + 100 : header + 164] = os.urandom(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"damaged.*delete it") as err:
        load_tensors(path, kind="k")
    assert "\n" not in str(err.value)


def test_damaged_metadata_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A resume state's step or optimizer setting is metadata: a changed digit must not resume
    silently from another step or with another weight decay."""
    path = tmp_path / "t.safetensors"
    meta = {"kind": "k", "step": "123", "param_groups": '[{"weight_decay": 0.1}]'}
    save_tensors(path, {"w": torch.randn(4, 4)}, meta)
    assert load_tensors(path, kind="k")[1]["step"] == "123"
    for old, new in ((b'"123"', b'"923"'), (b"0.1}", b"0.9}")):
        raw = path.read_bytes()
        assert raw.count(old) == 1
        damaged = tmp_path / "d.safetensors"
        damaged.write_bytes(raw.replace(old, new))
        with pytest.raises(CheckpointError, match="tensors or metadata do not match"):
            load_tensors(damaged, kind="k")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_running_run_whose_process_died_shows_interrupted(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.create_run("r", {}, kind="train")
    assert ws.info("r").status == "running"  # this process is alive
    status = json.loads((tmp_path / "r" / STATUS_FILE).read_text())
    status["pid"] = _dead_pid()
    (tmp_path / "r" / STATUS_FILE).write_text(json.dumps(status))
    assert ws.info("r").status == "interrupted"
    assert [r.status for r in ws.runs()] == ["interrupted"]
    status["host"] = "another-machine"  # cannot be checked from here: left as recorded
    (tmp_path / "r" / STATUS_FILE).write_text(json.dumps(status))
    assert ws.info("r").status == "running"


def test_debris_of_dead_writers_is_removed_and_live_files_are_not(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    run = ws.create_run("r", {}, kind="train")
    host = store._host_tag()
    dead, alive = _dead_pid(), os.getpid()
    ckpt = tmp_path / "r" / "checkpoints"
    ckpt.mkdir()
    dead_tmp = ckpt / f".latest.safetensors.{host}-{dead}.abcd1234.tmp"
    live_tmp = ckpt / f".step-5.safetensors.{host}-{alive}.abcd1234.tmp"
    other_host = ckpt / f".step-6.safetensors.00000000-{dead}.abcd1234.tmp"
    old_style = tmp_path / "r" / ".config.json.k2j3h4g5.tmp"
    fresh_old_style = tmp_path / "r" / ".status.json.zzzzzzzz.tmp"
    kept_file = tmp_path / "r" / ".notes.tmp"  # not a name tinylens makes
    for path in (dead_tmp, live_tmp, other_host, old_style, fresh_old_style, kept_file):
        path.write_bytes(b"partial")
    long_ago = time.time() - 2 * store.STALE_AFTER_S
    os.utime(old_style, (long_ago, long_ago))
    assert sorted(p.name for p in run.remove_stale_files()) == sorted([dead_tmp.name, old_style.name])
    assert all(p.exists() for p in (live_tmp, other_host, fresh_old_style, kept_file))

    staging = tmp_path / f".r2.{host}-{dead}.abcd1234"
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    git = tmp_path / ".git"
    git.mkdir()
    os.utime(git, (long_ago, long_ago))
    ws.create_run("r3", {}, kind="train")  # opening for writing cleans up
    assert not staging.exists() and git.exists()


def test_the_index_opens_in_wal_mode_beside_other_openers(tmp_path: Path) -> None:
    """Several processes opening one fresh workspace at once: none fails on the WAL switch."""
    code = (
        "import sys, time\n"
        "from tinylens.store import Workspace\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "ws = Workspace(sys.argv[1]); ws.create_run('r' + sys.argv[3], {}, kind='train')\n"
        "ws.create_run('shared', {'same': 1}, kind='train')\n"
    )
    start = time.time() + 8  # after every interpreter has imported torch
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "ws"), str(start), str(i)],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for i in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    names = Workspace(tmp_path / "ws").run_names()
    assert sorted(names) == ["r0", "r1", "r2", "r3", "shared"]
    mode = sqlite3.connect(tmp_path / "ws" / DB_NAME).execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal" and socket.gethostname()


@pytest.mark.parametrize("action", ["reindex", "create_run", "runs"])
def test_an_index_damaged_in_the_middle_is_rebuilt_on_any_use(tmp_path: Path, action: str) -> None:
    """Noise over one page past the header opens fine and fails only on a later query: a write
    (create_run, reindex) once ended in `database disk image is malformed` tracebacks."""
    ws = make_runs(tmp_path)
    ws.run("alpha").log_metrics([(s, f"m{k}", 0.1) for s in range(5, 400) for k in range(3)])
    ws.close()
    db = tmp_path / DB_NAME
    probe = sqlite3.connect(db)
    page = probe.execute("PRAGMA page_size").fetchone()[0]
    probe.close()
    wal = tmp_path / f"{DB_NAME}-wal"
    assert db.stat().st_size > 4 * page and not (wal.exists() and wal.stat().st_size)
    with db.open("r+b") as f:
        f.seek(2 * page)
        f.write(os.urandom(page))
    ws = Workspace(tmp_path)
    if action == "reindex":
        assert ws.reindex() == ["alpha", "study-beta"]
    elif action == "create_run":
        ws.create_run("gamma", {"z": 3}, kind="train")
    infos = {r.name for r in ws.runs()}
    assert {"alpha", "study-beta"} <= infos
    assert len(ws.run("alpha").metrics()["m0"].steps) == 395  # restored from metrics.jsonl


def test_files_and_run_folders_follow_the_umask(tmp_path: Path) -> None:
    """mkstemp/mkdtemp make 0600/0700: a shared workspace (or a read-only explorer running as
    another user) could not read a run. Written files and run folders get what the umask allows."""
    previous = os.umask(0o022)
    try:
        store.files._umask.cache_clear()
        ws = Workspace(tmp_path)
        run = ws.create_run("alpha", {"x": 1}, kind="train")
        run.write_result("r", {"a": 1})
        assert (run.path.stat().st_mode & 0o777) == 0o755
        assert ((run.path / "results" / "r.json").stat().st_mode & 0o777) == 0o644
        assert ((run.path / "config.json").stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(previous)
        store.files._umask.cache_clear()


@pytest.mark.parametrize(
    "damaged",
    [{"step": "abc"}, {"step": None}, {"step": 1e30}, {"kind": [1]}, {"created": "x"}, [], "x"],
)
def test_one_damaged_status_file_does_not_break_the_workspace(tmp_path: Path, damaged: object) -> None:
    """Rebuilding the index reads every status.json: a wrongly typed field once raised out of
    every command on the workspace (ValueError, TypeError, OverflowError tracebacks)."""
    make_runs(tmp_path)
    (tmp_path / "alpha" / STATUS_FILE).write_text(json.dumps(damaged))
    (tmp_path / DB_NAME).unlink()
    infos = {r.name: r for r in Workspace(tmp_path).runs()}
    assert sorted(infos) == ["alpha", "study-beta"]
    alpha = infos["alpha"]
    assert alpha.kind == "train" and isinstance(alpha.step, int) and isinstance(alpha.created, float)


def test_verify_tensors_checks_a_file_as_load_tensors_does(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"w": torch.randn(64, 64), "b": torch.zeros(3)}, {"kind": "k", "step": "7"})
    assert store.verify_tensors(path, kind="k") == load_tensors(path, kind="k")[1]
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    cases = {
        "damaged": bytes(raw[: header + 100]) + os.urandom(64) + bytes(raw[header + 164 :]),
        "truncated or corrupt": bytes(raw[: header + 100]),
    }
    for message, content in cases.items():
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(content)
        for check in (store.verify_tensors, load_tensors):
            with pytest.raises(CheckpointError, match=message):
                check(broken, kind="k")
    with pytest.raises(CheckpointError, match="holds 'k', not a 'other' file"):
        store.verify_tensors(path, kind="other")
    with pytest.raises(CheckpointError, match="does not exist"):
        store.verify_tensors(tmp_path / "missing.safetensors", kind="k")
