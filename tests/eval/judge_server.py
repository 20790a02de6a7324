"""A deterministic OpenAI-compatible chat-completions server on 127.0.0.1 for judge and generator tests.

The reply is computed by a function of the request messages, so tests know every verdict in advance. The server
runs in a daemon thread, serves only loopback and is shut down by the context manager.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[list[dict[str, str]], dict[str, Any]], "str | tuple[int, str]"]


class _State:
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()


@contextmanager
def judge_server(responder: Responder) -> Iterator[tuple[str, _State]]:
    """Yield ``(base_url, state)``; ``state.requests`` records every request body."""
    state = _State(responder)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with state.lock:
                state.requests.append(body)
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": "not found"})
                return
            reply = state.responder(body["messages"], body)
            if isinstance(reply, tuple):
                self._send(reply[0], {"error": reply[1]})
                return
            self._send(
                200,
                {
                    "id": "test",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def field(messages: list[dict[str, str]], name: str) -> str:
    """The value of a ``Name: value`` line in the user message (e.g. ``Correct Answer``)."""
    for line in messages[-1]["content"].splitlines():
        if line.startswith(name + ": "):
            return line[len(name) + 2 :]
    return ""
