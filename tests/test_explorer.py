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
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from starlette.testclient import TestClient

from tinylens import cli, explorer
from tinylens.evaluation import greedy_answer
from tinylens.explorer import create_app
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
        (b'{"seed": 1, "step": 61}', "no checkpoint at step 61"),
        (b'{"seed": 1, "step": "60"}', "no checkpoint at step '60'"),
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
