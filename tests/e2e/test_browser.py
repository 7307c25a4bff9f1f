"""The app in a real browser: `streamlit run` on a free localhost port, driven by headless Debian Chromium."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ..conftest import DATA, ROOT, needs_offline_backbone

CHROMIUM = Path("/usr/bin/chromium")
APP = ROOT / "streamlit_app" / "app.py"
STARTUP_S = 120  # until the server answers its health check
FIRST_PAGE_MS = 600_000  # the first page indexes the bundled sample on a slow CI machine
SEARCH_MS = 120_000
SCREENSHOT_ENV = "SIMLIB_APP_SCREENSHOT"  # also copy the screenshot there (docs/app-screenshot.png for the README)
DUPLICATES_SCREENSHOT_ENV = "SIMLIB_APP_DUPLICATES_SCREENSHOT"  # the Duplicates tab's (docs/app-duplicates.png)

pytestmark = [
    needs_offline_backbone,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian's Chromium is not installed at {CHROMIUM} "
                       "(apt-get install chromium; scripts/test does it)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """URL of the app served by `streamlit run` in a subprocess, headless and without telemetry."""
    port = free_port()
    env = {
        **os.environ,
        "SIMLIB_APP_STORE": str(tmp_path / "store"),
        "SIMLIB_RESNET18_WEIGHTS": str(tmp_path / "no-resnet18-weights.pth"),  # 'auto' -> EfficientNet-Lite0
    }
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.address", "127.0.0.1", "--server.port", str(port),
        "--server.fileWatcherType", "none",
    ]
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_healthy(url, process, log_path)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with status {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer at {url} within {STARTUP_S} s:\n{log_path.read_text()}")


def loaded_images(page) -> int:
    return page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=stImage] img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length"
    )


def test_uploaded_query_shows_result_images_and_badges_and_the_duplicates_tab_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500}, accept_downloads=True)
            page.goto(server)
            query = page.locator(".st-key-query_file input[type=file]")
            query.wait_for(state="attached", timeout=FIRST_PAGE_MS)
            expect(page.get_by_text("26 images", exact=False).first).to_be_visible()

            query.set_input_files(DATA / "queries" / "ladybird-cropped-small.jpg")
            expect(page.get_by_text("Visual match", exact=True)).to_be_visible(timeout=SEARCH_MS)
            expect(page.get_by_text("Visual, below threshold", exact=True)).to_have_count(7)
            expect(page.get_by_text("1. 06-sidecar-name-ext-xmp-LadyBird.jpg")).to_be_visible()
            expect(page.get_by_text("reaches the match threshold")).to_be_visible()
            page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=stImage] img')]"
                ".filter(img => img.complete && img.naturalWidth > 0).length >= 9",
                timeout=SEARCH_MS,
            )
            assert loaded_images(page) == 9  # the query and its 8 results
            page.locator("[data-testid=stStatusWidget]").wait_for(state="detached", timeout=SEARCH_MS)  # run over
            screenshot = tmp_path / "app-screenshot.png"
            page.screenshot(path=screenshot)
            if os.environ.get(SCREENSHOT_ENV):
                shutil.copyfile(screenshot, os.environ[SCREENSHOT_ENV])

            with page.expect_download() as download:
                page.get_by_role("button", name="Download results (CSV)").click()
            with open(download.value.path(), newline="") as handle:
                rows = list(csv.DictReader(handle))
            assert len(rows) == 8 and rows[0]["file"] == "06-sidecar-name-ext-xmp-LadyBird.jpg"
            assert rows[0]["reason"] == "visual" and float(rows[0]["similarity"]) > 0.9

            query.set_input_files(DATA / "queries" / "blinds-4-stars.jpg")
            expect(page.get_by_text("Rating fallback", exact=True)).to_have_count(8, timeout=SEARCH_MS)
            expect(page.get_by_text("is below the match threshold")).to_be_visible()
            page.screenshot(path=tmp_path / "app-fallback.png")

            page.get_by_role("tab", name="Duplicates").click()
            group = page.locator(".st-key-duplicate_group_1")
            expect(group.get_by_text("Exact copies", exact=True)).to_be_visible(timeout=SEARCH_MS)
            expect(group.get_by_text("Keeper", exact=True)).to_be_visible()
            expect(group.get_by_text("Copy", exact=True)).to_be_visible()
            page.wait_for_function(
                "() => [...document.querySelectorAll('.st-key-duplicate_group_1 [data-testid=stImage] img')]"
                ".filter(img => img.complete && img.naturalWidth > 0).length == 2",
                timeout=SEARCH_MS,
            )
            expect(page.get_by_role("button", name="Download groups (CSV)")).to_be_visible()
            page.locator(".st-key-duplicate_threshold input[type=range]").press("Home")  # the lowest threshold
            expect(page.get_by_text("Near duplicates", exact=True)).to_be_visible(timeout=SEARCH_MS)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.st-key-duplicate_group_2 [data-testid=stImage] img')]"
                ".filter(img => img.complete && img.naturalWidth > 0).length == 2",
                timeout=SEARCH_MS,
            )
            page.locator("[data-testid=stStatusWidget]").wait_for(state="detached", timeout=SEARCH_MS)
            duplicates = tmp_path / "app-duplicates.png"
            page.screenshot(path=duplicates)
            if os.environ.get(DUPLICATES_SCREENSHOT_ENV):
                shutil.copyfile(duplicates, os.environ[DUPLICATES_SCREENSHOT_ENV])
        finally:
            browser.close()
