"""The explorer's server: what each route returns, that bad requests get a clear 4xx (never a 500),
that it never writes into the workspace, binds 127.0.0.1 by default, loads a model once, and reads
a run while it trains without getting in the trainer's way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from starlette.testclient import TestClient

from tinylens import cli, explorer
from tinylens.config import RunConfig, parameter_count
from tinylens.evaluation import greedy_answer
from tinylens.explorer import create_app
from tinylens.explorer.configs import differing_values
from tinylens.runs import load_trained
from tinylens.store import Run, Workspace

from .helpers import run_cfg


@pytest.fixture(scope="module")
def client(trained_workspace: tuple[Path, str]) -> TestClient:
    return TestClient(create_app(trained_workspace[0]))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_runs_details_and_metrics(client: TestClient, trained_workspace: tuple[Path, str]) -> None:
    _, name = trained_workspace
    rows = client.get("/api/runs").json()
    row = next(r for r in rows if r["name"] == name)
    assert (row["task"], row["preset"], row["status"], row["step"]) == ("addition", "tiny", "done", 60)
    assert 0 <= row["acc"] <= 1
    details = client.get(f"/api/runs/{name}").json()
    assert details["checkpoints"][0] == 0 and details["checkpoints"][-1] == 60
    assert "train_summary" in details["results"]
    metrics = client.get(f"/api/runs/{name}/metrics").json()
    assert metrics["train/loss"]["steps"][-1] == 60
    assert len(metrics["eval/acc"]["values"]) == len(metrics["eval/acc"]["steps"]) >= 2
    summary = client.get(f"/api/runs/{name}/results/train_summary").json()
    assert summary["step"] == 60


def test_the_pages_and_their_modules_are_served(client: TestClient) -> None:
    for path in ("/", "/run?name=x", "/static/index.js", "/static/run.js", "/static/plot.js"):
        response = client.get(path)
        assert response.status_code == 200, path
    assert "<table" not in client.get("/").text  # the table is drawn from /api/runs
    assert 'src="/static/index.js"' in client.get("/").text


def test_a_probe_answers_as_the_model_does(
    client: TestClient, trained_workspace: tuple[Path, str]
) -> None:
    root, name = trained_workspace
    answer = client.post(f"/api/runs/{name}/probe", json={"text": "12345+67890="}).json()
    trained = load_trained(Workspace(root), name)
    prompt = trained.task.parse_prompt("12345+67890=")
    expected = greedy_answer(trained.model, trained.task, prompt[None])[0]
    assert answer["tokens"][trained.task.prompt_len :] == [trained.task.vocab[int(t)] for t in expected]
    assert answer["truth"] == "12345+67890=080235"
    assert answer["step"] == 60
    n_layers, n_heads = trained.model.cfg.n_layers, trained.model.cfg.n_heads
    pattern = torch.tensor(answer["attention"])  # [layer, head, query, key]
    assert pattern.shape == (n_layers, n_heads, len(answer["tokens"]), len(answer["tokens"]))
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=2e-3)
    assert torch.all(pattern.triu(1) == 0)  # causal
    slot = answer["positions"][0]
    assert slot["top"][0]["p"] >= slot["top"][-1]["p"] and 0 <= slot["p_true"] <= 1
    drawn = client.post(f"/api/runs/{name}/probe", json={"seed": 7, "step": 0}).json()
    assert drawn["step"] == 0 and drawn["question"].endswith("=")


def test_a_maze_probe_draws_the_maze(maze_study_run: Run) -> None:
    root = maze_study_run.workspace.root
    app = create_app(root)
    with TestClient(app) as client:
        rows = client.get("/api/runs").json()
        name = next(r["name"] for r in rows if r["task"] == "maze" and r["kind"] == "train")
        answer = client.post(f"/api/runs/{name}/probe", json={"seed": 3}).json()
    maze = answer["maze"]
    n = maze["n"]
    assert maze["path"][0] == maze["origin"] and maze["path"][-1] == maze["target"]
    assert len(maze["connections"]) >= n * n - 1  # a spanning tree, at least
    assert all(0 <= r < n and 0 <= c < n for r, c in maze["predicted"])


# -- bad requests --

BAD_PATHS = [
    ("/api/runs/nope", 404, "no run named 'nope'"),
    ("/api/runs/%2e%2e/metrics", 404, "'..' is not a run name"),
    ("/api/runs/..%2f..%2fetc/metrics", 404, "no page"),
    ("/api/runs/%252e%252e/metrics", 404, "is not a run name"),
    ("/runs/..%2F..%2Fetc%2Fpasswd/report", 404, "no page"),
    ("/static/../explorer/app.py", 404, "no page"),
    ("/static/%2e%2e/app.py", 404, "no page"),
    ("/static/..%2fapp.py", 404, ""),
    ("/nope", 404, "no page '/nope'"),
]


@pytest.mark.parametrize(("path", "status", "message"), BAD_PATHS)
def test_traversal_and_unknown_paths_are_clear_404s(
    client: TestClient, path: str, status: int, message: str
) -> None:
    response = client.get(path)
    assert response.status_code == status
    if response.headers["content-type"].startswith("application/json"):
        assert message in response.json()["error"]
    assert "Traceback" not in response.text


def test_symlinks_out_of_the_workspace_are_refused(
    tmp_path: Path, trained_workspace: tuple[Path, str]
) -> None:
    root, name = trained_workspace
    outside = tmp_path / "outside"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "linked").symlink_to(root / name, target_is_directory=True)  # a run folder outside
    inside = workspace / "real"
    (inside / "figures").mkdir(parents=True)
    (inside / "config.json").write_text("{}")
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"\x89PNG secret")
    (inside / "figures" / "leak.png").symlink_to(outside / "secret.png")
    (inside / "report.html").symlink_to(outside / "secret.png")
    with TestClient(create_app(workspace)) as client:
        for path in (
            "/api/runs/linked",
            "/api/runs/linked/metrics",
            "/runs/real/figures/leak.png",
            "/runs/real/report",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "is not inside the workspace" in response.json()["error"]
            assert b"secret" not in response.content


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "must be JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"text": 5}', "text must be a string"),
        (b'{"text": "12a45+1=" }', ""),
        (b'{"text": "1+1=", "seed": 1}', "not both"),
        (b"{}", "not both"),
        (b'{"seed": -1}', "seed must be an integer"),
        (b'{"seed": true}', "seed must be an integer"),
        (b'{"seed": 1, "step": 61}', "no checkpoint at step 61; it has [0, "),
        (b'{"zz": 1}', "unknown fields ['zz']"),
        (b'{"text": "' + b"1" * 70_000 + b'"}', "at most 65536"),
    ],
)
def test_a_malformed_probe_is_a_clear_400(
    client: TestClient, trained_workspace: tuple[Path, str], body: bytes, message: str
) -> None:
    response = client.post(f"/api/runs/{trained_workspace[1]}/probe", content=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


STEP = "step must be an integer, one of the run's checkpoint steps; got "
SEED = "seed must be an integer in [0, 9223372036854775807], got "
TEXT = "text must be a string in the task's format, got "


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"seed": 1, "step": "60"}', STEP + "the string '60' (send 60, without quotes)"),
        (b'{"seed": 1, "step": 60.0}', STEP + "the number 60.0 (send 60)"),
        (b'{"seed": 1, "step": 60.5}', STEP + "the number 60.5"),
        (b'{"seed": 1, "step": true}', STEP + "the boolean true"),
        (b'{"seed": 1, "step": [60]}', STEP + "a list of 1 item"),
        (b'{"seed": 1, "step": {"n": 60}}', STEP + "an object"),
        (b'{"seed": 1, "step": "latest"}', STEP + "the string 'latest'"),
        (b'{"seed": "7"}', SEED + "the string '7' (send 7, without quotes)"),
        (b'{"seed": 7.0}', SEED + "the number 7.0 (send 7)"),
        (b'{"seed": false}', SEED + "the boolean false"),
        (b'{"seed": -1}', SEED + "the number -1"),
        (b'{"seed": 1e400}', SEED + "the number inf"),
        (b'{"seed": ' + b"9" * 60 + b"}", SEED + "the number 99999999999999999999… (60 digits)"),
        (b'{"text": 5}', TEXT + "the number 5"),
        (b'{"text": true}', TEXT + "the boolean true"),
        (b'{"text": ["1+1="]}', TEXT + "a list of 1 item"),
        (b'{"text": {"q": "1+1="}}', TEXT + "an object"),
        (b"[1, 2]", "the request body must be a JSON object, got a list of 2 items"),
        (b'"12345+67890="', "the request body must be a JSON object, got the string '12345+67890='"),
    ],
)
def test_a_probe_field_of_the_wrong_type_says_what_it_got(
    client: TestClient, trained_workspace: tuple[Path, str], body: bytes, message: str
) -> None:
    """Finding 7: `"step": "300"` answered "no checkpoint at step '300'"; each field of the wrong
    type now says which type it must have and what it got."""
    response = client.post(f"/api/runs/{trained_workspace[1]}/probe", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == message


def test_a_null_step_probes_the_latest_checkpoint(
    client: TestClient, trained_workspace: tuple[Path, str]
) -> None:
    response = client.post(f"/api/runs/{trained_workspace[1]}/probe", json={"seed": 2, "step": None})
    assert response.status_code == 200 and response.json()["step"] == 60


def test_the_explorer_never_writes_into_the_workspace(
    client: TestClient, trained_workspace: tuple[Path, str]
) -> None:
    root, name = trained_workspace
    Workspace(root).close()
    before = snapshot(root)
    for path in ("/api/runs", f"/api/runs/{name}", f"/api/runs/{name}/metrics", "/api/runs/nope"):
        client.get(path)
    client.post(f"/api/runs/{name}/probe", json={"seed": 1})
    assert snapshot(root) == before


def test_a_missing_workspace_lists_no_runs_and_creates_nothing(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path / "none")) as client:
        assert client.get("/api/runs").json() == []
    assert not (tmp_path / "none").exists()


# -- serving --


def test_it_binds_127_0_0_1_unless_told(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served: list[tuple[str, int]] = []
    monkeypatch.setattr(explorer, "serve", lambda ws, host, port: served.append((host, port)))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    cli.main(["explore", "-w", str(tmp_path), "--port", str(port)])
    cli.main(["explore", "-w", str(tmp_path), "--port", str(port), "--host", "0.0.0.0"])
    assert served == [("127.0.0.1", port), ("0.0.0.0", port)]


def test_a_port_in_use_is_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as caught:
            cli.main(["explore", "-w", str(tmp_path), "--port", str(port)])
    assert caught.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"error: cannot serve on 127.0.0.1:{port}")


@pytest.fixture
def live_server(trained_workspace: tuple[Path, str]) -> Iterator[tuple[str, object]]:
    """The explorer served by uvicorn on a free 127.0.0.1 port, in a thread: (base URL, app)."""
    app = create_app(trained_workspace[0])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_concurrent_probes_all_answer_right_and_load_the_model_once(
    live_server: tuple[str, object], trained_workspace: tuple[Path, str]
) -> None:
    base, app = live_server
    root, name = trained_workspace
    trained = load_trained(Workspace(root), name)
    questions = [f"{a:05d}+{(a * 7919) % 100_000:05d}=" for a in range(0, 100_000, 200)]  # 500
    prompts = torch.stack([trained.task.parse_prompt(q) for q in questions])
    expected = greedy_answer(trained.model, trained.task, prompts)
    wanted = {
        q: [trained.task.vocab[int(t)] for t in row] for q, row in zip(questions, expected, strict=True)
    }

    with httpx.Client(base_url=base, timeout=60) as http:

        def ask(question: str) -> tuple[str, int, list[str]]:
            response = http.post(f"/api/runs/{name}/probe", json={"text": question})
            return question, response.status_code, response.json()["tokens"][trained.task.prompt_len :]

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(ask, questions))
        elapsed = time.perf_counter() - start
    assert all(status == 200 for _, status, _ in answers)
    assert all(tokens == wanted[q] for q, _, tokens in answers)
    assert app.state.models.loads == 1
    print(f"{len(questions)} probes, 50 at a time: {len(questions) / elapsed:.0f} requests/s")


@pytest.mark.slow
def test_a_run_in_training_grows_on_reload_and_the_trainer_is_not_disturbed(tmp_path: Path) -> None:
    cfg = run_cfg(steps=400, log_every=5, eval_every=50, save_every=25)
    config = tmp_path / "config.json"
    config.write_text(
        '{"train": {"log_every": 5, "eval_every": 50, "save_every": 25, "eval_size": 128}}'
    )
    command = [
        sys.executable,
        "-m",
        "tinylens",
        "train",
        "addition",
        "--preset",
        "tiny",
        "--steps",
        "400",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    watched = tmp_path / "watched"
    trainer = subprocess.Popen(
        [*command, "-w", str(watched), "--config", str(config), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    counts: list[int] = []
    with TestClient(create_app(watched)) as client:
        while trainer.poll() is None:
            response = client.get(f"/api/runs/{cfg.default_name()}/metrics")
            if response.status_code == 200:  # 404 until the run exists
                counts.append(len(response.json().get("train/loss", {}).get("steps", [])))
            time.sleep(0.05)
        _, err = trainer.communicate()
        final = client.get(f"/api/runs/{cfg.default_name()}/metrics").json()
    assert trainer.returncode == 0, err
    growing = sorted(set(counts))
    assert len(growing) >= 3, f"the curves never grew while training: {growing}"
    assert counts == sorted(counts)  # never went back
    # the same run trained with nobody watching logs the very same numbers
    alone = subprocess.run(
        [*command, "-w", str(tmp_path / "alone"), "--config", str(config), "--no-progress"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert alone.returncode == 0
    with TestClient(create_app(tmp_path / "alone")) as client:
        assert client.get(f"/api/runs/{cfg.default_name()}/metrics").json() == final


def test_study_views_of_the_circuits_and_patching(
    seqcont_study_run: Run, inversion_study_run: Run
) -> None:
    with TestClient(create_app(seqcont_study_run.workspace.root)) as client:
        views = client.get(f"/api/runs/{seqcont_study_run.name}/views").json()
    circuits = seqcont_study_run.read_result("circuits")
    graph = seqcont_study_run.read_result("graph")
    kinds = [v["kind"] for v in views]
    assert kinds == ["heatmap", "circuit", "curve"] * len(circuits)
    heat, circuit = views[0], views[1]
    family = next(iter(circuits))
    assert heat["values"] == circuits[family]["head_patching"]
    assert len(heat["rows"]) == int(graph["n_layers"]) and len(heat["cols"]) == int(graph["n_heads"])
    assert [n["name"] for n in circuit["nodes"]] == circuits[family]["nodes"]
    assert circuit["edges"] == circuits[family]["edges"]
    assert sorted(circuit["edge_scores"]) == sorted(circuit["edges"])  # an EAP-IG score per edge
    with TestClient(create_app(inversion_study_run.workspace.root)) as client:
        views = client.get(f"/api/runs/{inversion_study_run.name}/views").json()
        train_run = next(r["name"] for r in client.get("/api/runs").json() if r["kind"] == "train")
        assert client.get(f"/api/runs/{train_run}/views").json() == []
    assert {v["kind"] for v in views} == {"heatmap", "inversion"}
    assert any(v["title"].startswith("counting: ") for v in views)
    viewer = next(v for v in views if v["kind"] == "inversion")
    stored = inversion_study_run.read_result("counting")["viewer"][0]
    assert viewer["query"] == stored["query"]
    assert [r["distance"] for r in viewer["rows"]] == [row[2] for row in stored["rows"]]
    assert viewer["epsilon"] == inversion_study_run.read_result("settings")["epsilon"]


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's table of sockets")
def test_the_real_server_listens_on_the_loopback_address_only(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    command = [sys.executable, "-m", "tinylens", "explore", "-w", str(tmp_path), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server never came up"
                time.sleep(0.1)
        rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        listening = {row[1] for row in rows if row[3] == "0A"}  # state 0A: LISTEN
        assert f"0100007F:{port:04X}" in listening  # 127.0.0.1
        assert f"00000000:{port:04X}" not in listening  # not 0.0.0.0
        assert httpx.get(f"http://127.0.0.1:{port}/api/runs").json() == []
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert "Traceback" not in err
    assert not tmp_path.joinpath("tinylens.db").exists()


# -- a damaged workspace: every request still gets an answer, never a 500 --


@pytest.fixture
def damaged(tmp_path: Path, trained_workspace: tuple[Path, str]) -> tuple[Path, str]:
    """A copy of the trained run's folder (no index: the explorer builds one in memory)."""
    root, name = trained_workspace
    shutil.copytree(root / name, tmp_path / "ws" / name)
    return tmp_path / "ws", name


@pytest.mark.parametrize(
    ("damage", "path"),
    [
        (lambda run: (run / "results" / "x.json").write_text('{"a": NaN}'), "/api/runs/{run}/results/x"),
        (lambda run: (run / "results" / "x.json").write_text("[" * 50_000), "/api/runs/{run}/results/x"),
        (lambda run: (run / "config.json").write_text('{"task": ' + "9" * 5000 + "}"), "/api/runs"),
        (lambda run: (run / "config.json").write_text("[" * 50_000), "/api/runs/{run}/metrics"),
        (
            lambda run: (run / "status.json").write_text(
                json.dumps({"status": "running", "pid": 10**30, "host": socket.gethostname()})
            ),
            "/api/runs",
        ),
        (lambda run: None, "/api/runs/{run}/results/" + "a" * 300),
    ],
)
def test_damaged_files_never_give_a_500(damaged: tuple[Path, str], damage, path: str) -> None:
    root, name = damaged
    damage(root / name)
    with TestClient(create_app(root)) as client:
        response = client.get(path.format(run=name))
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text


def test_odd_probe_bodies_are_400s(client: TestClient, trained_workspace: tuple[Path, str]) -> None:
    name = trained_workspace[1]
    for body in (b"[" * 60_000, b'{"seed": 0, "step": 60.0}', b'{"seed": 1e400}', b'{"seed": 10e30}'):
        response = client.post(f"/api/runs/{name}/probe", content=body)
        assert response.status_code == 400, (body[:30], response.text)


def test_a_config_symlinked_out_of_the_workspace_is_neither_listed_nor_served(
    damaged: tuple[Path, str], tmp_path: Path
) -> None:
    root, name = damaged
    secret = tmp_path / "secret.json"
    secret.write_text((root / name / "config.json").read_text().replace("addition", "addition", 1))
    (root / name / "config.json").unlink()
    (root / name / "config.json").symlink_to(secret)
    with TestClient(create_app(root)) as client:
        assert client.get("/api/runs").json() == []
        response = client.get(f"/api/runs/{name}")
    assert response.status_code == 404 and "not inside the workspace" in response.json()["error"]


def test_a_wal_without_its_shm_file_is_read_without_creating_one(
    damaged: tuple[Path, str], trained_workspace: tuple[Path, str]
) -> None:
    import sqlite3  # noqa: PLC0415

    root, name = damaged
    Workspace(root).runs()  # builds tinylens.db
    writer = sqlite3.connect(root / "tinylens.db")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE runs SET step = 59 WHERE name = ?", (name,))
    writer.commit()
    copy = root.parent / "copied"
    copy.mkdir()
    for item in root.iterdir():  # copied as a user might: the -shm left behind
        if item.is_dir():
            shutil.copytree(item, copy / item.name)
        elif item.name != "tinylens.db-shm":
            (copy / item.name).write_bytes(item.read_bytes())
    writer.close()
    assert (copy / "tinylens.db-wal").stat().st_size > 0
    with TestClient(create_app(copy)) as client:
        rows = client.get("/api/runs").json()
    assert [r["name"] for r in rows] == [name]
    assert not (copy / "tinylens.db-shm").exists()


# -- symlinks inside a run: left out, the run still reachable (finding 4) --


@pytest.fixture
def planted(damaged: tuple[Path, str], tmp_path: Path) -> tuple[Path, str, str]:
    """The copied run with links out of the workspace planted in it (a folder and a result in
    results/, a figure, a checkpoint, the report), a real figure beside them, and a second run
    whose whole results/ folder is a link out: (workspace, run, second run)."""
    root, name = damaged
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.json").write_text('{"secret": "outside"}')
    (outside / "secret.png").write_bytes(b"\x89PNG secret")
    (outside / "folder" / "hidden-name.json").write_text('{"secret": "outside"}')
    shutil.copy(outside / "secret.png", outside / "step-999.safetensors")
    run = root / name
    (run / "figures").mkdir()
    (run / "figures" / "real.png").write_bytes(b"\x89PNG inside")
    (run / "results" / "dirlink").symlink_to(outside / "folder", target_is_directory=True)
    (run / "results" / "leak.json").symlink_to(outside / "secret.json")
    (run / "figures" / "leak.png").symlink_to(outside / "secret.png")
    (run / "checkpoints" / "step-999.safetensors").symlink_to(outside / "step-999.safetensors")
    (run / "report.html").symlink_to(outside / "secret.png")
    second = "second-run"
    shutil.copytree(run, root / second, symlinks=True)
    shutil.rmtree(root / second / "results")
    (root / second / "results").symlink_to(outside / "folder", target_is_directory=True)
    return root, name, second


def test_a_link_out_of_the_workspace_is_left_out_and_the_run_stays_reachable(
    planted: tuple[Path, str, str],
) -> None:
    root, name, second = planted
    with TestClient(create_app(root)) as client:
        assert {r["name"] for r in client.get("/api/runs").json()} == {name, second}
        details = client.get(f"/api/runs/{name}").json()
        assert details["results"] == ["train_summary"]
        assert details["figures"] == ["real"]
        assert details["checkpoints"][-1] == 60 and 999 not in details["checkpoints"]
        assert details["report"] is False
        assert details["left_out"] == [
            "checkpoints/step-999.safetensors",
            "figures/leak.png",
            "report.html",
            "results/dirlink",
            "results/leak.json",
        ]
        for path in ("metrics", "views", "results/train_summary"):
            assert client.get(f"/api/runs/{name}/{path}").status_code == 200, path
        assert client.get(f"/runs/{name}/figures/real.png").content == b"\x89PNG inside"
        probed = client.post(f"/api/runs/{name}/probe", json={"seed": 1})
        assert probed.status_code == 200 and probed.json()["step"] == 60
        refused = client.post(f"/api/runs/{name}/probe", json={"seed": 1, "step": 999})
        assert refused.status_code == 400 and "no checkpoint at step 999" in refused.json()["error"]
        other = client.get(f"/api/runs/{second}").json()
        assert other["results"] == []
        assert other["left_out"] == [*details["left_out"][:3], "results"]
        for path in (
            f"/api/runs/{name}/results/leak",
            f"/api/runs/{name}/results/dirlink",
            f"/runs/{name}/figures/leak.png",
            f"/runs/{name}/report",
            f"/api/runs/{second}/results/hidden-name",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert b"secret" not in response.content and b"outside" not in response.content, path
        assert "is not inside the workspace" in client.get(f"/runs/{name}/figures/leak.png").text
        everything = client.get(f"/api/runs/{second}").text + client.get("/api/runs").text
    assert "hidden-name" not in everything  # an outside folder is not even listed


# -- telling models apart: shape, size and what differs (finding 8) --


def _copy_run(root: Path, name: str, new: str, kind: str = "train", **config: object) -> None:
    """A copy of run ``name`` called ``new``, its config.json's top-level fields replaced by
    ``config`` and its status.json's kind set to ``kind``."""
    shutil.copytree(root / name, root / new)
    stored = json.loads((root / name / "config.json").read_text())
    (root / new / "config.json").write_text(json.dumps({**stored, **config}))
    status = json.loads((root / name / "status.json").read_text())
    (root / new / "status.json").write_text(json.dumps({**status, "kind": kind}))


@pytest.fixture
def models_apart(damaged: tuple[Path, str]) -> tuple[Path, str]:
    """The copied tiny run (d_model 32), a narrower copy (d_model 16), a decoder run, a sweep run
    and a run whose model section is damaged: (workspace, the tiny run's name)."""
    root, name = damaged
    model = json.loads((root / name / "config.json").read_text())["model"]
    _copy_run(root, name, "narrow", model={**model, "d_model": 16, "d_head": 8})
    decoder = {"d_vocab": 12, "n_ctx": 18, "d_act": 32, "n_sites": 1, "d_model": 64, "n_layers": 2,
               "n_heads": 4, "n_cond_blocks": 6}  # fmt: skip
    _copy_run(root, name, "decoder-run", kind="decoder", decoder=decoder, model=None, task=None)
    _copy_run(root, name, "sweep-run", kind="sweep", model=None, grid={"model.d_model": [16, 32]})
    _copy_run(root, name, "broken-model", preset="odd", model={**model, "n_layers": "two"})
    return root, name


def test_the_runs_table_shows_each_model_and_what_differs(models_apart: tuple[Path, str]) -> None:
    root, name = models_apart
    with TestClient(create_app(root)) as client:
        rows = {r["name"]: r for r in client.get("/api/runs").json()}
    tiny = rows[name]
    assert tiny["shape"] == {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_head": 16, "d_mlp": 64}
    config = RunConfig.from_dict(json.loads((root / name / "config.json").read_text()))
    assert tiny["params"] == parameter_count(config.model) == 9_952  # every weight, bias and gain
    assert rows["narrow"]["params"] == parameter_count(replace(config.model, d_model=16, d_head=8))
    assert tiny["differs"] == {"model.d_head": 16, "model.d_model": 32}
    assert rows["narrow"]["differs"] == {"model.d_head": 8, "model.d_model": 16}
    decoder = rows["decoder-run"]
    assert (decoder["kind"], decoder["shape"], decoder["params"]) == (
        "decoder",
        {"n_layers": 2, "n_heads": 4, "d_model": 64},
        None,
    )
    assert (rows["sweep-run"]["shape"], rows["sweep-run"]["params"]) == (None, None)
    assert (rows["broken-model"]["shape"], rows["broken-model"]["params"]) == (None, None)
    for other in ("decoder-run", "sweep-run", "broken-model"):  # each alone in its group
        assert rows[other]["differs"] == {}, other


def test_a_run_page_shows_its_model_and_the_runs_it_is_compared_with(
    models_apart: tuple[Path, str],
) -> None:
    root, name = models_apart
    with TestClient(create_app(root)) as client:
        details = client.get("/api/runs/narrow").json()
        alone = client.get("/api/runs/sweep-run").json()
    assert details["shape"]["d_model"] == 16 and details["params"] > 0
    group = details["group"]
    assert (group["kind"], group["task"], group["preset"]) == ("train", "addition", "tiny")
    assert group["fields"] == ["model.d_head", "model.d_model"]
    assert sorted(group["runs"], key=lambda r: r["name"]) == sorted(
        [
            {"name": name, "values": {"model.d_head": 16, "model.d_model": 32}},
            {"name": "narrow", "values": {"model.d_head": 8, "model.d_model": 16}},
        ],
        key=lambda r: r["name"],
    )
    assert alone["group"]["fields"] == [] and [r["name"] for r in alone["group"]["runs"]] == [
        "sweep-run"
    ]
    assert (alone["shape"], alone["params"]) == (None, None)


def test_differing_values_compares_nested_fields_lists_and_missing_ones() -> None:
    configs = {
        "a": {"model": {"d_model": 16, "act_fn": "relu"}, "seed": 0, "sites": [1, 2], "x": {}},
        "b": {"model": {"d_model": 32, "act_fn": "relu"}, "seed": 0, "sites": [1, 3], "x": {}},
        "c": {"model": {"d_model": 32, "act_fn": "relu"}, "sites": [1, 2], "x": {}},
    }
    assert differing_values(configs) == {
        "a": {"model.d_model": 16, "seed": 0, "sites": [1, 2]},
        "b": {"model.d_model": 32, "seed": 0, "sites": [1, 3]},
        "c": {"model.d_model": 32, "seed": None, "sites": [1, 2]},  # seed missing: a difference
    }
    assert differing_values({"a": configs["a"]}) == {"a": {}}
    deep: dict[str, object] = {"v": 1}
    for _ in range(50):
        deep = {"n": deep}
    assert differing_values({"a": deep, "b": deep}) == {"a": {}, "b": {}}  # deep nesting: no error
