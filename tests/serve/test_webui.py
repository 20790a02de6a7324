"""The Gradio web UI: a headless Chromium uploads a generated video, asks, and reads the answer.

Every request the page makes to a non-localhost address is recorded and aborted, and fails the test: the UI
must work offline and send nothing about uploads anywhere (no analytics, no CDN fonts or scripts).
"""

import os
import shutil
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from testing_utils import IN_CI, require_module
from tiny_helpers import LIVE_EPISODE

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


# The first hour in the web UI: watch the upload, real sampling, a timeline that seeks, no stale "upload first",
# bounded uploads that do not linger on the server. One UI with a small frame cap and upload limit.
MAX_FRAMES = 4
MAX_UPLOAD_MB = 1


@pytest.fixture(scope="module")
def capped_app(serving_engine):
    require_module("gradio")
    from llamavid.serve.webui import build_ui, launch

    demo = build_ui(serving_engine, max_new_tokens=4, max_frames=MAX_FRAMES, max_upload_mb=MAX_UPLOAD_MB)
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    playwright_api = require_module("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium is required in CI: apt-get install -y chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, capped_app):
    """A fresh tab on the capped UI; any request to a non-local address fails the test."""
    outside: list[str] = []

    def guard(route):
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    tab = chromium.new_page()
    tab.route("**/*", guard)
    tab.set_default_timeout(60_000)
    tab.goto(capped_app, wait_until="domcontentloaded")
    tab.wait_for_selector("#media-upload input[type=file]", state="attached")
    yield tab
    tab.close()
    assert outside == [], f"the page contacted non-local addresses: {outside}"


@pytest.fixture(scope="module")
def ten_second_video(tmp_path_factory):
    """10 s at 1 fps is 10 frames, over the cap of 4: sampled evenly at 0, 2.5, 5 and 7.5 s, i.e. 0.4 fps."""
    from llamavid.demo import write_demo_video

    return write_demo_video(tmp_path_factory.mktemp("media") / "ten_seconds.mp4", seconds=10)


def uploads_named(name: str) -> list[str]:
    from gradio.utils import get_upload_folder

    return [str(path) for path in Path(get_upload_folder()).rglob(name)]


def ask(tab, question: str) -> str:
    tab.fill("#question textarea", question)
    tab.click("#send")
    tab.wait_for_selector("#relevance [data-t]")  # drawn once the answer is complete
    return tab.locator("#chatbot [data-testid='bot']").last.inner_text().strip()


def test_the_page_plays_the_upload_and_reports_the_real_sampling(page, ten_second_video, tmp_path):
    page.set_input_files("#media-upload input[type=file]", str(ten_second_video))
    page.wait_for_selector("#status :text('Ready')")
    status = page.inner_text("#status")
    assert f"{MAX_FRAMES} frames" in status and "0.4 fps" in status, status
    assert "1 fps" not in status
    page.wait_for_function("() => document.querySelector('#player video')?.readyState >= 1")
    duration = page.eval_on_selector("#player video", "video => video.duration")
    assert abs(duration - 10) < 0.5
    box = page.locator("#player video").bounding_box()
    assert box is not None and box["width"] >= 300 and box["height"] >= 200, box
    page.screenshot(path=str(tmp_path / "player.png"))


def test_clicking_the_relevance_timeline_seeks_the_player(page, ten_second_video, tmp_path):
    page.set_input_files("#media-upload input[type=file]", str(ten_second_video))
    page.wait_for_selector("#status :text('Ready')")
    assert ask(page, "Which way does the red square move?")
    bars = page.locator("#relevance svg [data-t]")
    times = sorted({float(bars.nth(index).get_attribute("data-t")) for index in range(bars.count())})
    assert times == [0.0, 2.5, 5.0, 7.5], times  # one bar per sampled frame, at its time
    chart = page.locator("#relevance svg").bounding_box()
    heading = page.locator("#relevance h4").bounding_box()
    assert chart is not None and heading is not None
    assert chart["width"] >= 300 and chart["height"] >= 60, chart
    assert heading["y"] + heading["height"] <= chart["y"] + 1, "the label covers the timeline"
    page.screenshot(path=str(tmp_path / "timeline.png"), full_page=True)
    for button in page.locator("#relevance button[data-t]").all()[:2]:
        target = float(button.get_attribute("data-t"))
        button.click()
        page.wait_for_function(
            f"() => Math.abs(document.querySelector('#player video').currentTime - {target}) < 0.05"
        )


def test_a_question_asked_before_ready_waits_for_the_video(page, demo_video_path):
    page.set_input_files("#media-upload input[type=file]", str(demo_video_path))
    page.wait_for_selector(f"#media-upload :text('{demo_video_path.name}')")  # uploaded, not yet encoded
    page.fill("#question textarea", "Which way does the red square move?")
    page.click("#send")
    page.wait_for_selector("#relevance [data-t]", timeout=30_000)
    assert page.locator(":text('first')").count() == 0  # no "Upload a video or an image first" toast


def test_uploads_are_deleted_once_encoded_and_large_files_refused(page, demo_video_path, tmp_path):
    unique = tmp_path / f"upload-{uuid.uuid4().hex}.mp4"
    shutil.copy(demo_video_path, unique)
    page.set_input_files("#media-upload input[type=file]", str(unique))
    page.wait_for_selector("#status :text('Ready')")
    assert uploads_named(unique.name) == [], "the upload is still on the server after encoding"
    assert ask(page, "Which way does the red square move?")  # answered from the features alone

    big = tmp_path / f"big-{uuid.uuid4().hex}.mp4"
    big.write_bytes(os.urandom(int(1.5 * MAX_UPLOAD_MB * 1024 * 1024)))
    page.locator("#media-upload button[aria-label='Clear']").first.click()
    page.wait_for_selector("#media-upload input[type=file]", state="attached")
    page.set_input_files("#media-upload input[type=file]", str(big))
    page.wait_for_selector(":text-matches('maximum|too large|exceed', 'i')")
    assert uploads_named(big.name) == []
    assert big.name not in page.inner_text("#status")


def test_the_example_plays_from_the_server_and_stays(page):
    for _ in range(2):  # a second click finds the example again: it is never deleted
        page.locator("table tbody tr").first.click()
        page.wait_for_selector("#status :text('Ready')")
        page.wait_for_function("() => document.querySelector('#player video')?.readyState >= 1")
        assert "gradio_api/file=" in page.eval_on_selector("#player video", "video => video.src")
        page.locator("#media-upload button[aria-label='Clear']").first.click()
        page.wait_for_selector("#status :text('Upload a video')")


def test_subtitles_are_read_once_and_follow_the_videos(page, ten_second_video, demo_video_path, tmp_path):
    first, second = (tmp_path / f"subs-{uuid.uuid4().hex}.srt" for _ in range(2))
    for path in (first, second):
        path.write_text("1\n00:00:02,000 --> 00:00:04,000\nThe square starts moving.\n", encoding="utf-8")
    page.set_input_files("#subtitle-upload input[type=file]", str(first))  # before any video
    page.wait_for_selector("#status :text('now upload the video')")
    assert uploads_named(first.name) == []
    page.set_input_files("#media-upload input[type=file]", str(ten_second_video))
    page.wait_for_selector(f"#status :text('subtitles from {first.name}')")
    assert ask(page, "What does the square do?")

    page.locator("#media-upload button[aria-label='Clear']").first.click()
    page.set_input_files("#media-upload input[type=file]", str(demo_video_path))  # the next video keeps them
    page.wait_for_selector(f"#status :text('{demo_video_path.name}')")
    assert f"subtitles from {first.name}" in page.inner_text("#status")
    page.locator("#subtitle-upload button[aria-label='Clear']").first.click()
    page.set_input_files("#subtitle-upload input[type=file]", str(second))  # new subtitles, same video
    page.wait_for_selector(f"#status :text('subtitles from {second.name}')")
    assert uploads_named(second.name) == []


def test_a_broken_upload_is_explained_when_asked(page, tmp_path):
    broken = tmp_path / f"broken-{uuid.uuid4().hex}.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    page.set_input_files("#media-upload input[type=file]", str(broken))
    page.wait_for_selector("#status :text('Could not use')")
    assert uploads_named(broken.name) == []
    page.fill("#question textarea", "What happens?")
    page.click("#send")
    page.wait_for_selector(":text('Upload another file')")
    assert page.locator(":text('Upload a video or an image first')").count() == 0


def test_the_live_tab_watches_a_fifo_under_the_allowed_root(tmp_path):
    """The Live tab's callbacks: the server's source rules, the session limit, the newest frame, the status line,
    an answer with the embedded model and the relevance timeline so far."""
    gr = require_module("gradio")
    import threading

    import numpy as np

    from llamavid.inference import Engine
    from llamavid.serve.webui import LiveTab, build_ui
    from llamavid.synth.episodes import make_episode

    engine = Engine.from_pretrained(None, device="cpu", feature_cache=tmp_path / "cache")
    root = tmp_path / "streams"
    root.mkdir()
    (tmp_path / "outside.ts").touch()
    tab = LiveTab(engine, [str(root)], max_sessions=1, max_new_tokens=8)
    for source, reason in (
        (tmp_path / "outside.ts", "outside"),
        ("rtsp://cam/1", "network"),
        ("-", "network"),
    ):
        with pytest.raises(gr.Error, match=reason):
            tab.start(str(source), "", None)
    assert "No live session" in tab.refresh(None, None)[1]
    fifo = root / "camera.rgb"
    os.mkfifo(fifo)
    session_id, status = tab.start(str(fifo), "64x64", None)
    assert session_id in status
    (root / "other.ts").touch()
    with pytest.raises(gr.Error, match="at most 1"):  # the limit counts every tab's sessions
        tab.start(str(root / "other.ts"), "", None)
    live = LIVE_EPISODE  # a one-frame needle the embedded model answers
    episode = make_episode(np.random.default_rng(live["seed"]), "heldout", live["frames"])

    def feed() -> None:
        with open(fifo, "wb") as sink:
            for index in range(30):
                sink.write(episode.render_frame(index, 64).tobytes())

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    assert tab.registry.get(session_id).wait(timeout=90).frames == 30
    feeder.join(30)
    frame, status, _ = tab.refresh(session_id, None)
    assert frame.shape == (64, 64, 3) and "30 frames" in status and "ended" in status
    chat, box, question, timeline = tab.ask(live["question"], "", [], session_id)
    assert box == "" and chat[-1]["role"] == "assistant" and chat[-1]["content"].startswith(live["colour"])
    needle_time = f"0:{live['needle']:02d}"  # the needle is among the most relevant frames
    assert "30 frames" in timeline and needle_time in timeline
    assert "Relevance so far" in tab.refresh(session_id, question)[2]
    with pytest.raises(gr.Error, match="window"):
        tab.ask("What happened?", "ten minutes", chat, session_id)
    tab.close(session_id)  # what Gradio calls when the page closes
    assert "No live session" in tab.status_line(session_id) and tab.registry.list() == []
    with pytest.raises(gr.Error, match="Start a live session"):
        tab.ask("What happened?", "", [], session_id)
    demo = build_ui(engine, live_roots=[str(root)])
    assert demo.llamavid_live.enabled and not build_ui(engine).llamavid_live.enabled
