"""Headless Debian Chromium driven by selenium through Debian's chromium-driver, for tests of our web pages.

    from tests.browser import chromium

    def test_page(tmp_path):
        with chromium(width=1200, height=800) as browser:
            browser.get(url)
            browser.find_element(By.TAG_NAME, "body").send_keys("1")
            screenshot(browser, tmp_path / "page.png")

Selenium Manager is never asked to download a browser or driver: the Debian binaries are named explicitly. A
missing chromium, chromium-driver or selenium skips the test with the package to install (and fails under CI=true,
where .ci/run installs them), like tests/conftest.py's require_tool.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver", "chromium-driver")
# Debian puts the driver here even when /usr/bin is not on PATH (a stripped test environment).
FALLBACK_PATHS = {"chromium": "/usr/bin/chromium", "chromedriver": "/usr/bin/chromedriver"}


def _skip_or_fail(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _find(names: tuple[str, ...], package: str) -> str:
    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    fallback = FALLBACK_PATHS.get(names[0])
    if found is None and fallback and os.access(fallback, os.X_OK):
        found = fallback
    if found is None:
        _skip_or_fail(f"{names[0]} is not installed (Debian package `{package}`; .ci/run installs it)")
    return found


def chromium_paths() -> tuple[str, str]:
    """(browser, driver): the Debian binaries, or a skip naming the package to install."""
    return _find(CHROMIUM_NAMES, "chromium"), _find(DRIVER_NAMES, "chromium-driver")


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 800, timeout_s: float = 30.0) -> Iterator:
    """A headless Chromium WebDriver with a window of `width` x `height`; quit (browser and driver) on exit.

    Each browser gets its own throwaway profile folder, so parallel tests (pytest-xdist) never share one."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip_or_fail("selenium is not installed (pip install selenium; it is in edgecls' test extra)")
    browser_path, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    with tempfile.TemporaryDirectory(prefix="edgecls-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            driver.set_page_load_timeout(timeout_s)
            driver.set_window_size(width, height)
            yield driver
        finally:
            driver.quit()


def screenshot(driver, path: Path) -> Path:
    """Save what the browser shows as a PNG at `path` (folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"chromium could not save a screenshot to {path}")
    return path


def wait_for(driver, condition, timeout_s: float = 10.0, message: str = ""):
    """selenium's WebDriverWait(driver, timeout_s).until(condition): the condition's truthy value, or a timeout.

    An element found just before the page navigated or re-rendered (stale) counts as "not yet", not as a failure."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout_s, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(condition, message)
