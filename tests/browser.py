"""The headless Chromium the browser tests drive (Debian's ``chromium`` and ``chromium-driver``).

Without one the tests skip locally; CI installs them and sets TINYLENS_REQUIRE_BROWSER=1, so that a
missing browser fails there instead of skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@contextmanager
def chromium(window: str = "1280,2000") -> Iterator[webdriver.Chrome]:
    """A headless Chromium, offline-minded (no background network, sync or updates)."""
    if not (CHROMIUM and DRIVER):
        message = "headless Chromium not installed: apt-get install chromium chromium-driver"
        if os.environ.get("TINYLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--window-size={window}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
