"""Bodies over the upload limit, and HTTP framing an attacker controls (lengths, headers), on a 1 MiB server."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
from security_helpers import API_KEY, AUTH, Attacker, error_of, memory_mb, raw_exchange, reset_peak

from testing_utils import require_module

LIMIT = 2**20


@pytest.fixture(scope="module")
def small(serving_engine, media_root) -> Iterator[Attacker]:
    app = require_module("llamavid.serve.app")
    config = app.ServerConfig(allowed_roots=(media_root,), api_key=API_KEY, max_upload_bytes=LIMIT)
    with app.RunningServer(app.create_app(serving_engine, config)) as running:
        yield Attacker(running, media_root)


def streamed(megabytes: int) -> Iterator[bytes]:
    """A chunked body of `megabytes` MiB inside one JSON string, generated 1 MiB at a time."""
    yield b'{"messages": [{"role": "user", "content": "'
    chunk = b"a" * 2**20
    for _ in range(megabytes):
        yield chunk
    yield b'"}]}'


def test_declared_oversize_body_is_413(small):
    response = small.post(content=b"x" * (2 * LIMIT))  # httpx declares Content-Length
    assert response.status_code == 413 and str(LIMIT) in error_of(response)


def test_streamed_oversize_bodies_stop_at_the_limit(small):
    reset_peak()
    before = memory_mb()
    started = time.monotonic()
    for _ in range(3):
        response = small.post(content=streamed(200), timeout=30)  # chunked: no length to refuse up front
        assert response.status_code == 413
    assert time.monotonic() - started < 20
    grown = memory_mb("VmHWM") - before
    assert grown < 100, f"peak memory grew {grown:.0f} MiB for bodies cut at {LIMIT} bytes"


def test_oversize_without_key_is_401(small):
    assert small.post(content=streamed(4), auth=False).status_code == 401


def test_data_url_within_the_limit_holding_garbage_is_400(small):
    garbage = base64.b64encode(bytes(range(256)) * 3000).decode()  # 768 KB, not a video
    part = {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{garbage}"}}
    response = small.post({"messages": [{"role": "user", "content": [part, {"type": "text", "text": "?"}]}]})
    assert response.status_code == 400 and "uploaded media" in error_of(response)


FRAMING = {
    "length not a number": b"Content-Length: abc\r\n\r\n{}",
    "negative length": b"Content-Length: -1\r\n\r\n{}",
    "two lengths": b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "length and chunked": b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "bad chunk size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "100 KB header": b"X-Padding: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    "5000 headers": b"".join(b"X-%d: a\r\n" % i for i in range(5000)) + b"Content-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("name", sorted(FRAMING))
def test_broken_framing_is_a_4xx_or_a_closed_connection(small, name):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    auth = b"Authorization: " + AUTH["Authorization"].encode() + b"\r\n"
    status = raw_exchange(int(small.url.rsplit(":", 1)[1]), head + auth + FRAMING[name])
    assert status is None or 400 <= status < 500, status
    assert small.get("/health").status_code == 200
