"""The API key is checked first: before the body is read, before it is parsed, before anything else."""

from __future__ import annotations

import time

import pytest
from security_helpers import API_KEY, ask, error_of, media_part, memory_mb, reset_peak

BODY_MB = 60
UNAUTHENTICATED_REQUESTS = 8


def large_body():
    """A valid 60 MB chat request, streamed 1 MB at a time (chunked), so this process never holds it."""
    yield b'{"messages": [{"role": "user", "content": "'
    chunk = b"a" * 2**20
    for _ in range(BODY_MB):
        yield chunk
    yield b'"}]}'


def test_unauthenticated_bodies_are_refused_without_being_read(attacker):
    reset_peak()
    before = memory_mb()
    started = time.monotonic()
    for _ in range(UNAUTHENTICATED_REQUESTS):
        response = attacker.post(content=large_body(), auth=False, timeout=30)
        assert response.status_code == 401
        assert error_of(response).startswith("missing or wrong API key")
    grown = memory_mb("VmHWM") - before
    assert grown < 50, f"peak memory grew {grown:.0f} MiB for {UNAUTHENTICATED_REQUESTS} refused bodies"
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("body", [b"{not json", b'{"messages": []}', b"\xff\xfe"])
def test_bad_body_without_key_is_401_not_400(attacker, body):
    response = attacker.post(content=body, auth=False)
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_scheme_is_case_insensitive(attacker, scheme):
    headers = {"Authorization": f"{scheme} {API_KEY}"}
    assert attacker.get("/v1/models", auth=False, headers=headers).status_code == 200
    assert attacker.post(ask(), auth=False, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        f"Basic {API_KEY}",
        f"Bearer {API_KEY}x",
        f"Bearer {API_KEY[:-1]}",
        API_KEY,
    ],
)
def test_missing_or_wrong_key_is_401(attacker, header):
    headers = {} if header is None else {"Authorization": header}
    for response in (
        attacker.get("/v1/models", auth=False, headers=headers),
        attacker.post(ask(), auth=False, headers=headers),
    ):
        assert response.status_code == 401 and "API key" in error_of(response)
    assert attacker.get("/health", auth=False).status_code == 200


@pytest.mark.parametrize("name", ["", "frames", "frames/", "pipe.mp4"])
def test_only_regular_files_are_media(attacker, name):
    url = f"file://{attacker.root}/{name}"
    response = attacker.post(ask(media_part(url)))
    assert response.status_code == 400
    assert "not a media file" in error_of(response)


def test_key_is_case_sensitive_and_sent_once(attacker):
    httpx = pytest.importorskip("httpx")
    assert (
        attacker.get(
            "/v1/models", auth=False, headers={"Authorization": f"Bearer {API_KEY.upper()}"}
        ).status_code
        == 401
    )
    twice = [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {API_KEY}")]
    response = attacker.check(httpx.get(f"{attacker.url}/v1/models", headers=twice, timeout=30))
    assert response.status_code == 401
