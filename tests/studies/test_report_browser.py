"""The study report in a real browser: it opens, every figure decodes, the claims come first.

Needs Debian's ``chromium`` and ``chromium-driver``; CI installs them and sets
TINYLENS_REQUIRE_BROWSER=1 so that a missing browser fails instead of skipping.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By

from tinylens.store import Run

from ..browser import chromium, webdriver


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


@pytest.mark.parametrize(
    ("fixture", "n_claims"),
    [
        ("study_run", 7),
        ("maze_study_run", 5),
        ("seqcont_study_run", 4),
        ("regions_study_run", 5),
        ("inversion_study_run", 8),
    ],
)
def test_report_opens_with_every_figure(
    browser: webdriver.Chrome, request: pytest.FixtureRequest, fixture: str, n_claims: int
) -> None:
    study_run: Run = request.getfixturevalue(fixture)
    browser.get(study_run.report_path.resolve().as_uri())
    n_figures = len(study_run.figure_names())
    images = browser.execute_script("return document.images.length")
    decoded = browser.execute_script(
        "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
    )
    assert images == decoded == n_figures > 0
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert headings[0] == "Claims"
    claim_rows = browser.find_elements(By.CSS_SELECTOR, "table:first-of-type tbody tr")
    assert len(claim_rows) == n_claims
    verdicts = {row.find_elements(By.TAG_NAME, "td")[4].text for row in claim_rows}
    assert verdicts <= {"holds", "does not hold"}
