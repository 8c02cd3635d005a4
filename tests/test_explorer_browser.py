"""The explorer in a real browser: from the start page to a run's curves and a live probe in one
click, the probe's attention maps, a maze drawn with both paths, and a study's report.

Needs Debian's ``chromium`` and ``chromium-driver`` (CI installs them and sets
TINYLENS_REQUIRE_BROWSER=1, so a missing browser fails there instead of skipping). Screenshots go to
``$TINYLENS_SCREENSHOTS`` when set (the issue notes show them), else to the test's temporary folder.
"""

from __future__ import annotations

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
    """The explorer over a workspace holding copies of the trained tiny run and the addition study's
    run (folders only: the explorer indexes them in memory, read-only)."""
    root, name = trained_workspace
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(root / name, site / name)
    shutil.copytree(study_run.path, site / study_run.name)
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
    browser.find_element(By.ID, "filter").send_keys("study-")
    assert not browser.find_elements(By.CSS_SELECTOR, f"tr[data-run='{name}']")  # filtered out
    browser.find_element(By.ID, "filter").clear()
    browser.find_element(By.ID, "filter").send_keys(" ")  # an input event with an empty needle
    browser.save_screenshot(str(shots / "1-runs.png"))

    browser.find_element(By.LINK_TEXT, name).click()  # click 1: the run's page
    wait_for(browser, "[data-chart='loss'] path[data-series]")
    curves = browser.find_elements(By.CSS_SELECTOR, "#curves path[data-series]")
    assert {c.get_attribute("data-series") for c in curves} >= {"train/loss", "eval/loss", "eval/acc"}
    assert all(int(c.get_attribute("data-points")) >= 2 for c in curves)
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
    assert len(maps) == 2  # the tiny model: 1 layer × 2 heads
    token = browser.find_elements(By.CSS_SELECTOR, "#attention .tokens span")[-1]
    ActionChains(browser).move_to_element(token).perform()
    shaded = browser.execute_script(
        "return [...document.querySelectorAll('#attention .tokens span')]"
        ".filter(s => s.style.background !== '').length"
    )
    assert shaded == len(browser.find_elements(By.CSS_SELECTOR, "#attention .tokens span"))
    browser.save_screenshot(str(shots / "3-probe-attention.png"))

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
