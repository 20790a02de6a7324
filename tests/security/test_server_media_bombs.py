"""Decompression bombs: small uploads whose pictures are huge, refused from their headers before decoding.

A 12000x12000 1-bit PNG is 17 KB on the wire and 432 MB as RGB (about 1.9 GB by the time it is resized and
normalised); a one-frame 7200x7200 Matroska video is 51 KB. Both must be refused from the picture size their
headers declare, fast and without the server's memory growing.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import time

import pytest
from security_helpers import ask, error_of, media_part, memory_mb, reset_peak

from testing_utils import require_module

# What a refused bomb may cost the server: the upload, its temporary file and bookkeeping, never the pixels.
MAX_PEAK_GROWTH_MB = 200


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def png_bomb() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, "PNG", optimize=True)  # 18 MB here, freed on return
    return data_url("image/png", buffer.getvalue())


@pytest.fixture(scope="module")
def video_bomb(tmp_path_factory) -> str:
    """One black 7200x7200 frame (51.8 megapixels, over the 50 MP default) as lossless PNG in Matroska."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed (apt-get install ffmpeg)")
    path = tmp_path_factory.mktemp("bomb") / "bomb.mkv"
    command = [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "color=black:s=7200x7200:d=1:r=1"]
    command += ["-frames:v", "1", "-c:v", "png", "-pix_fmt", "gray", str(path)]
    subprocess.run(command, check=True, timeout=60)
    return data_url("video/x-matroska", path.read_bytes())


def send_bomb(attacker, part: dict):
    reset_peak()
    before = memory_mb()
    started = time.monotonic()
    response = attacker.post(ask(part))
    return response, time.monotonic() - started, memory_mb("VmHWM") - before


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns at open; we refuse
def test_png_bomb_is_refused_from_its_header(attacker, png_bomb):
    assert len(png_bomb) < 100_000  # it passes any upload limit
    response, seconds, grown = send_bomb(attacker, media_part(png_bomb, "image_url"))
    assert response.status_code == 400
    message = error_of(response)
    assert "12000x12000" in message and "50 megapixels" in message and "uploaded media" in message
    assert seconds < 5
    assert grown < MAX_PEAK_GROWTH_MB, f"peak memory grew {grown:.0f} MiB"


def test_video_with_huge_frames_is_refused_from_its_header(attacker, video_bomb):
    response, seconds, grown = send_bomb(attacker, media_part(video_bomb))
    assert response.status_code == 400
    message = error_of(response)
    assert "7200x7200" in message and "50 megapixels" in message
    assert seconds < 20  # the probe runs in a child process
    assert grown < MAX_PEAK_GROWTH_MB, f"peak memory grew {grown:.0f} MiB"


def test_pixel_limit_is_configurable(serving_engine, media_root):
    app = require_module("llamavid.serve.app")
    httpx = require_module("httpx")
    config = app.ServerConfig(allowed_roots=(media_root,), max_pixels=10_000)
    with app.RunningServer(app.create_app(serving_engine, config)) as running:
        url = f"{running.url}/v1/chat/completions"
        still = httpx.post(
            url, json=ask(media_part(f"file://{media_root}/still.png", "image_url")), timeout=60
        )
        assert still.status_code == 200, still.text  # 40x30 = 1200 pixels
        clip = httpx.post(url, json=ask(media_part(f"file://{media_root}/clip.mp4")), timeout=60)
        assert clip.status_code == 400  # 112x112 = 12544 pixels, refused by the probe
        assert "112x112" in error_of(clip) and "clip.mp4" in error_of(clip)
