"""The Gradio web UI: a headless Chromium uploads a generated video, asks, and reads the answer.

Every request the page makes to a non-localhost address is recorded and aborted, and fails the test: the UI
must work offline and send nothing about uploads anywhere (no analytics, no CDN fonts or scripts).
"""

import os
import shutil
import socket
from urllib.parse import urlparse

import pytest

from testing_utils import IN_CI, require_module

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def web_app(serving_engine):
    require_module("gradio")
    from llamavid.serve.webui import build_ui, launch

    demo = build_ui(serving_engine, max_new_tokens=6)
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()


def test_analytics_are_off(web_app):
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert web_app[1].analytics_enabled is False


def test_upload_ask_and_read_the_answer_in_chromium(web_app, demo_video_path, tmp_path):
    playwright_api = require_module("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium is required in CI: apt-get install -y chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    url, _ = web_app
    outside: list[str] = []

    def guard(route):
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page()
            page.route("**/*", guard)
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#media-upload input[type=file]", state="attached")
            page.set_input_files("#media-upload input[type=file]", str(demo_video_path))
            page.wait_for_selector("#status :text('Ready')")
            assert "4 frames" in page.inner_text("#status")
            page.fill("#question textarea", "Which way does the red square move?")
            page.click("#send")
            page.wait_for_selector("#relevance img")  # drawn after the answer is complete
            bot = page.locator("#chatbot [data-testid='bot']").last
            answer = bot.inner_text().strip()
            user = page.locator("#chatbot [data-testid='user']").last.inner_text()
        finally:
            browser.close()
    assert "red square" in user
    assert answer  # random weights: any non-empty text; schema and flow are what is tested here
    assert outside == [], f"the page contacted non-local addresses: {outside}"
