"""Refresh the README's web-UI picture (`make screenshots`): run the UI, ask about a generated video, screenshot.

Needs the `[serve]` extra, Playwright and Debian's `chromium` (never `playwright install`). Everything stays on
127.0.0.1; the page's requests to other hosts are aborted.
Usage: .venv/bin/python tools/screenshots.py [--out docs/images/webui.png] [--model DIR]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM_FLAGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/webui.png"))
    parser.add_argument("--model", default=None, help="model folder (default: the embedded tiny model)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from llamavid.demo import encode_mp4, synthetic_question_clip
    from llamavid.inference.engine import Engine
    from llamavid.serve.webui import build_ui, launch

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    engine = Engine.from_pretrained(args.model)
    demo = build_ui(engine, max_new_tokens=16)
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
            frames, question, _ = synthetic_question_clip(seed=1)
            video = encode_mp4(frames, Path(folder) / "synthetic_clip.mp4")  # plays in the browser
            browser = playwright.chromium.launch_persistent_context(
                str(Path(folder) / "profile"),
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 900},
            )
            page = browser.new_page()

            def local_only(route):
                host = urlparse(route.request.url).hostname
                local = route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost")
                route.continue_() if local else route.abort()

            page.route("**/*", local_only)
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.wait_for_selector("#media-upload input[type=file]", state="attached")
            page.set_input_files("#media-upload input[type=file]", str(video))
            page.wait_for_selector("#status :text('Ready')")
            page.fill("#question textarea", question)
            page.click("#send")
            page.wait_for_selector("#relevance img")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
