"""The explorer in a real browser: from the start page to a run's curves and a live probe in one
click, the probe's attention maps, a maze drawn with both paths, and a study's report.

Needs Debian's ``chromium`` and ``chromium-driver`` (CI installs them and sets
TINYLENS_REQUIRE_BROWSER=1, so a missing browser fails there instead of skipping). Screenshots go to
``$TINYLENS_SCREENSHOTS`` when set (the issue notes show them), else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tinylens.explorer import create_app
from tinylens.store import Run

from .browser import chromium, webdriver


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium("1280,1600") as driver:
        yield driver


@contextmanager
def served(root: Path) -> Iterator[str]:
    """The explorer over ``root`` on a free 127.0.0.1 port, in a thread: its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(root), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def addition_site(
    trained_workspace: tuple[Path, str], study_run: Run, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The explorer over a workspace holding copies of the trained tiny run and of the addition
    study's workspace: its 1-layer and 2-layer models and its study run, the runs `make demo`
    makes, with the tiny preset (folders only: the explorer indexes them in memory, read-only)."""
    root, name = trained_workspace
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(root / name, site / name)
    for folder in study_run.workspace.root.iterdir():
        if (folder / "config.json").is_file():
            shutil.copytree(folder, site / folder.name)
    with served(site) as url:
        yield url


@pytest.fixture(scope="module")
def maze_site(maze_study_run: Run) -> Iterator[str]:
    with served(maze_study_run.workspace.root) as url:
        yield url


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("TINYLENS_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cell_text(row: object, key: str) -> str:
    """The text of the runs table's cell of column ``key`` in ``row``."""
    return row.find_element(By.CSS_SELECTOR, f"td.col-{key}").text


def wait_for(browser: webdriver.Chrome, css: str, timeout: float = 60) -> object:
    return WebDriverWait(browser, timeout).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def test_start_page_to_curves_and_a_live_probe(
    browser: webdriver.Chrome, addition_site: str, trained_workspace: tuple[Path, str], shots: Path
) -> None:
    _, name = trained_workspace
    browser.get(addition_site + "/")
    row = wait_for(browser, f"tr[data-run='{name}']")
    assert "addition" in row.text and "tiny" in row.text
    cells = {key: cell_text(row, key) for key in ("shape", "d_mlp", "params", "differs")}
    assert cells["shape"] == "1 × 2 × 32" and cells["d_mlp"] == "64"  # the tiny preset's model
    assert cells["params"] == "9.95k" and "train.steps 60" in cells["differs"]
    study_models = {
        cell_text(r, "shape"): r.get_attribute("data-run")
        for r in browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
        if r.get_attribute("data-run") != name and cell_text(r, "shape") != "-"
    }  # the addition study's 1-layer and 2-layer models
    assert sorted(study_models) == ["1 × 2 × 32", "2 × 2 × 32"]
    for shape, run in study_models.items():
        differs = cell_text(browser.find_element(By.CSS_SELECTOR, f"tr[data-run='{run}']"), "differs")
        assert f"model.n_layers {shape[0]}" in differs
    browser.find_element(By.ID, "filter").send_keys("study-")
    assert not browser.find_elements(By.CSS_SELECTOR, f"tr[data-run='{name}']")  # filtered out
    browser.find_element(By.ID, "filter").clear()
    browser.find_element(By.ID, "filter").send_keys(" ")  # an input event with an empty needle
    browser.save_screenshot(str(shots / "1-start-page.png"))

    browser.find_element(By.LINK_TEXT, study_models["2 × 2 × 32"]).click()  # click 1: its page
    wait_for(browser, "[data-chart='loss'] path[data-series]")
    curves = browser.find_elements(By.CSS_SELECTOR, "#curves path[data-series]")
    assert {c.get_attribute("data-series") for c in curves} >= {"train/loss", "eval/loss", "eval/acc"}
    assert all(int(c.get_attribute("data-points")) >= 2 for c in curves)
    fact = "#facts tr[data-fact='{}'] td"
    model = browser.find_element(By.CSS_SELECTOR, fact.format("model")).text
    assert model == "2 layers × 2 heads × d_model 32, d_head 16, d_mlp 64"
    assert browser.find_element(By.CSS_SELECTOR, fact.format("parameters")).text.startswith("18,496: ")
    compared = browser.find_elements(By.CSS_SELECTOR, "#group tbody tr")
    assert len(compared) == 3  # the study's two models and the tiny run: addition, tiny
    assert "model.n_layers" in [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#group th")]
    # held-out accuracy on a linear axis ending at 1, even with "log values" ticked; loss on log
    assert browser.find_element(By.ID, "log-y").is_selected()
    accuracy = browser.find_element(By.CSS_SELECTOR, "[data-chart='held-out exact match'] svg")
    assert (accuracy.get_attribute("data-log-y"), accuracy.get_attribute("data-y-max")) == ("false", "1")
    loss = browser.find_element(By.CSS_SELECTOR, "[data-chart='loss'] svg")
    assert loss.get_attribute("data-log-y") == "true"
    browser.save_screenshot(str(shots / "2-run-curves.png"))

    field = browser.find_element(By.ID, "probe-text")
    field.send_keys("12345+67890=")
    browser.find_element(By.ID, "probe-ask").click()  # the probe, on the same page
    verdict = wait_for(browser, "#probe-verdict")
    assert verdict.text in {"correct", "wrong"}
    answer = browser.find_element(By.ID, "probe-answer").text
    assert answer.startswith("12345+67890=") and len(answer) == len("12345+67890=") + 6
    assert len(browser.find_elements(By.CSS_SELECTOR, "#probe-positions tbody tr")) == 6
    maps = browser.find_elements(By.CSS_SELECTOR, "canvas.attention-map")
    assert len(maps) == 4  # the study's 2-layer model: 2 layers × 2 heads
    token = browser.find_elements(By.CSS_SELECTOR, "#attention .tokens span")[-1]
    ActionChains(browser).move_to_element(token).perform()
    shaded = browser.execute_script(
        "return [...document.querySelectorAll('#attention .tokens span')]"
        ".filter(s => s.style.background !== '').length"
    )
    assert shaded == len(browser.find_elements(By.CSS_SELECTOR, "#attention .tokens span"))
    browser.save_screenshot(str(shots / "3-live-probe.png"))

    field.clear()
    field.send_keys("12x45+1=")
    browser.find_element(By.ID, "probe-ask").click()
    error = wait_for(browser, "#probe-result .error")
    assert error.text.startswith("error: ")


def test_a_study_run_shows_its_report_and_figures(
    browser: webdriver.Chrome, addition_site: str, study_run: Run, shots: Path
) -> None:
    browser.get(f"{addition_site}/run?name={study_run.name}")
    wait_for(browser, "#report-link")
    count = len(study_run.figure_names())
    decoded = (
        "return [...document.querySelectorAll('#report img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(decoded) == count > 0)
    browser.save_screenshot(str(shots / "4-study-run.png"))
    browser.find_element(By.ID, "report-link").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.TAG_NAME, "h2"))
    assert browser.find_elements(By.TAG_NAME, "h2")[0].text == "Claims"


def test_a_maze_probe_draws_the_maze_with_both_paths(
    browser: webdriver.Chrome, maze_site: str, maze_study_run: Run, shots: Path
) -> None:
    browser.get(maze_site + "/")
    wait_for(browser, "#runs-table")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    maze_run = next(r.get_attribute("data-run") for r in rows if " maze " in f" {r.text} ")
    browser.get(f"{maze_site}/run?name={maze_run}")
    wait_for(browser, "#probe-draw").click()
    wait_for(browser, "#maze #true-path")
    assert browser.find_elements(By.CSS_SELECTOR, "#maze line.wall")
    assert browser.find_elements(By.CSS_SELECTOR, "#attention canvas.attention-map")
    browser.execute_script("document.getElementById('maze').scrollIntoView()")
    browser.save_screenshot(str(shots / "5-maze-probe.png"))


def test_a_seqcont_study_shows_patching_heatmaps_and_circuit_graphs(
    browser: webdriver.Chrome, seqcont_study_run: Run, shots: Path
) -> None:
    with served(seqcont_study_run.workspace.root) as site:
        browser.get(f"{site}/run?name={seqcont_study_run.name}")
        wait_for(browser, ".study-view svg.circuit")
        circuits = seqcont_study_run.read_result("circuits")
        family = next(iter(circuits))
        nodes = browser.find_elements(By.CSS_SELECTOR, ".study-view svg.circuit")[0].find_elements(
            By.CSS_SELECTOR, "circle.node:not(.off):not(.fixed)"
        )
        assert sorted(n.get_attribute("data-node") for n in nodes) == sorted(circuits[family]["nodes"])
        cells = browser.find_elements(By.CSS_SELECTOR, ".study-view svg.heatmap")[0].find_elements(
            By.TAG_NAME, "rect"
        )
        assert len(cells) == sum(len(row) for row in circuits[family]["head_patching"])
        edges = browser.find_elements(By.CSS_SELECTOR, ".study-view svg.circuit")[0].find_elements(
            By.CSS_SELECTOR, "line.edge"
        )
        assert len(edges) == len(circuits[family]["edges"])
        assert all(e.get_attribute("data-score") != "" for e in edges)
        browser.execute_script("document.getElementById('views-section').scrollIntoView()")
        browser.save_screenshot(str(shots / "6-seqcont-study-views.png"))


def test_the_inversion_viewer_shows_samples_and_the_epsilon_line(
    browser: webdriver.Chrome, inversion_study_run: Run, shots: Path
) -> None:
    with served(inversion_study_run.workspace.root) as site:
        browser.get(f"{site}/run?name={inversion_study_run.name}")
        viewer = wait_for(browser, ".study-view .inversion")
        stored = inversion_study_run.read_result("counting")["viewer"][0]
        assert len(viewer.find_elements(By.CSS_SELECTOR, ".sample")) == len(stored["rows"])
        assert viewer.find_elements(By.CSS_SELECTOR, ".epsilon-line")
        browser.execute_script("document.querySelector('.inversion').scrollIntoView()")
        browser.save_screenshot(str(shots / "7-inversion-viewer.png"))


def test_a_flat_line_sits_at_the_top_of_a_fraction_axis_and_mid_axis_otherwise(
    browser: webdriver.Chrome, addition_site: str
) -> None:
    """A flat 100% accuracy line used to sit at the bottom of a 1–2 axis (finding 8)."""
    browser.get(addition_site + "/")
    wait_for(browser, "#runs-table")
    drawn = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        import("/static/plot.js").then(({ lineChart }) => {
          const flat = (v) => [{ name: "s", steps: [0, 10, 20], values: [v, v, v] }];
          const charts = [lineChart(flat(1), { fraction: true, logY: true }),
                          lineChart(flat(0.5)), lineChart(flat(0.5), { logY: true })];
          const path = (c) => c.querySelector("path").getAttribute("d");
          done(charts.map((c) => [c.getAttribute("data-log-y"), path(c)]));
        });
        """
    )
    heights = [(log, {float(p.split(",")[1]) for p in d[1:].split("L")}) for log, d in drawn]
    assert heights[0] == ("false", {10.0})  # the plot's top edge (PAD.top)
    assert heights[1] == ("false", {103.0}) and heights[2] == ("true", {103.0})  # mid-axis


def test_a_run_with_links_out_of_the_workspace_still_shows_its_page(
    browser: webdriver.Chrome, trained_workspace: tuple[Path, str], tmp_path: Path
) -> None:
    """Finding 4: one planted link made the whole run unreachable. Here its held-out accuracy is
    also a flat 100%, which must be drawn along the top of its chart."""
    root, name = trained_workspace
    site, outside = tmp_path / "site", tmp_path / "outside"
    shutil.copytree(root / name, site / name)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"\x89PNG secret")
    (site / name / "results" / "dirlink").symlink_to(outside, target_is_directory=True)
    (site / name / "figures").mkdir()
    (site / name / "figures" / "leak.png").symlink_to(outside / "secret.png")
    metrics = site / name / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    for row in rows:
        row["value"] = 1.0 if row["name"] == "eval/acc" else row["value"]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with served(site) as url:
        browser.get(f"{url}/run?name={name}")
        note = wait_for(browser, "#left-out")
        assert note.text.endswith("figures/leak.png, results/dirlink")
        assert browser.find_element(By.CSS_SELECTOR, "#facts tr[data-fact='model']")
        assert "no report or figures" in browser.find_element(By.ID, "report").text
        path = wait_for(browser, "[data-chart='held-out exact match'] path[data-series='eval/acc']")
        ys = {float(p.split(",")[1]) for p in path.get_attribute("d")[1:].split("L")}
        assert ys == {10.0}
        assert browser.find_element(By.ID, "probe-draw")  # a probe form: checkpoints are listed
