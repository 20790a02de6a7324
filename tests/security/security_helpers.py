"""Helpers of the security suite: the `Attacker` client, memory readings, a decoy listener, request builders.

Every request goes through `Attacker`, which fails the test on any 5xx answer, on a traceback in a body and
when the server's memory (this process's: `RunningServer` runs in-process) grows more than 1 GiB over the idle
server's.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from testing_utils import require_module

if TYPE_CHECKING:
    import httpx

API_KEY = "security-suite-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_GROWTH_MB = 1024


def memory_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its peak since the last `reset_peak` (``VmHWM``), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} missing from /proc/self/status")


def reset_peak() -> None:
    """Restart the ``VmHWM`` high-water mark from the current RSS (Linux: writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except (
        OSError
    ) as error:  # without a reset, VmHWM is the whole run's peak and says nothing about one request
        pytest.skip(f"cannot reset the peak-memory mark ({error}); this check needs Linux /proc")


class Attacker:
    """Sends hostile requests to one live server and checks what must hold after every one of them."""

    def __init__(self, server: object, root: Path) -> None:
        self.server = server
        self.url = server.url  # type: ignore[attr-defined]
        self.root = root
        self.idle_mb = memory_mb()

    def check(self, response: httpx.Response) -> httpx.Response:
        assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
        assert "Traceback" not in response.text
        grown = memory_mb() - self.idle_mb
        assert grown < MAX_GROWTH_MB, f"server memory grew {grown:.0f} MiB over idle"
        return response

    def post(
        self,
        body: object = None,
        *,
        content: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        path: str = "/v1/chat/completions",
        timeout: float = 60,
    ) -> httpx.Response:
        sent = {"content-type": "application/json", **(AUTH if auth else {}), **(headers or {})}
        response = require_module("httpx").post(
            self.url + path,
            json=body if content is None else None,
            content=content,
            headers=sent,
            timeout=timeout,
        )
        return self.check(response)

    def get(self, path: str, *, auth: bool = True, headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {**(AUTH if auth else {}), **(headers or {})}
        return self.check(require_module("httpx").get(self.url + path, headers=sent, timeout=60))


def error_of(response: httpx.Response) -> str:
    """The message of an OpenAI-shaped error answer (fails when the body is not one)."""
    assert response.headers["content-type"].startswith("application/json"), response.text[:300]
    error = response.json()["error"]
    assert set(error) >= {"message", "type"}
    return str(error["message"])


def ask(part: dict | None = None, text: str = "What moves?", **fields: object) -> dict:
    """A chat-completions body with one user message (an optional media part, then `text`)."""
    content: object = text if part is None else [part, {"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 3, **fields}


def media_part(url: str, kind: str = "video_url") -> dict:
    return {"type": kind, kind: {"url": url}}


class Decoy:
    """A TCP listener on 127.0.0.1 that counts connections: a server that never fetches URLs leaves it at 0."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._socket.settimeout(0.05)
        self.port = self._socket.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        deadline = time.monotonic() + 600  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                connection, _ = self._socket.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> int | None:
    """Send raw bytes to 127.0.0.1:`port` and return the answer's status code (``None``: closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        with contextlib.suppress(OSError):  # the server may answer and close before reading everything
            connection.sendall(request)
        answer = b""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in answer and time.monotonic() < deadline:
            try:
                data = connection.recv(4096)
            except OSError:
                break
            if not data:
                break
            answer += data
    status_line = answer.split(b"\r\n", 1)[0].split()
    return int(status_line[1]) if len(status_line) >= 2 and status_line[1].isdigit() else None
