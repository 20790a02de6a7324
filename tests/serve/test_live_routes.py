"""``/v1/live/sessions`` routes on a real server (127.0.0.1) with the embedded tiny model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llamavid.serve.app import RunningServer, ServerConfig, create_app

_spec = importlib.util.spec_from_file_location(
    "_live_stream_writer_serve", Path(__file__).resolve().parents[1] / "inference" / "test_live.py"
)
_live = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_live)
WRITER, QUESTION, COLOUR, FRAMES, SEED = _live.WRITER, _live.QUESTION, _live.COLOUR, _live.FRAMES, _live.SEED
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from llamavid.inference import Engine

    root = tmp_path_factory.mktemp("live-root")
    video = root / "stream.ts"
    writer = subprocess.run(
        [sys.executable, "-c", WRITER, str(SEED), str(FRAMES), "-1", str(video), "-1"],
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT_S,
    )
    assert writer.returncode == 0
    (root / "stream.ts.end").touch()
    engine = Engine.from_pretrained(None, device="cpu", feature_cache=tmp_path_factory.mktemp("live-cache"))
    config = ServerConfig(allowed_roots=(root,), max_live_sessions=1)
    app = create_app(engine, config)  # adds the live routes (add_live_routes)
    registry = app.state.live
    with RunningServer(app) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
        yield client, registry, root
        registry.close_all()


def test_create_ask_list_delete(served):
    client, registry, root = served
    body = {
        "source": f"file://{root / 'stream.ts'}",
        "end_marker": str(root / "stream.ts.end"),
        "session_id": "s1",
    }
    created = client.post("/v1/live/sessions", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["session_id"] == "s1"
    assert registry.get("s1").wait(timeout=TIMEOUT_S).state == "ended"
    status = client.get("/v1/live/sessions/s1").json()
    assert status["frames"] == FRAMES and status["state"] == "ended"
    assert [row["session_id"] for row in client.get("/v1/live/sessions").json()["data"]] == ["s1"]
    # One session is the limit here: a second one is refused with 429 and Retry-After.
    second = client.post("/v1/live/sessions", json={"source": str(root / "stream.ts")})
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    question = {
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 8,
        "window": "10m",
    }
    answer = client.post("/v1/live/sessions/s1/chat/completions", json=question)
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert payload["choices"][0]["message"]["content"].strip().lower() == COLOUR
    assert payload["usage"]["frames_sampled"] == FRAMES and payload["live"]["policy"] == "all"
    streamed = client.post("/v1/live/sessions/s1/chat/completions", json={**question, "stream": True})
    assert COLOUR in streamed.text and streamed.text.rstrip().endswith("data: [DONE]")
    bad_window = client.post("/v1/live/sessions/s1/chat/completions", json={**question, "window": "soon"})
    assert bad_window.status_code == 400 and "window" in bad_window.json()["error"]["message"]
    capped = client.post("/v1/live/sessions/s1/chat/completions", json={**question, "max_frames": 8}).json()
    assert capped["live"]["frames_used"] == 8 and capped["live"]["policy"] == "relevance"
    bad_cap = client.post("/v1/live/sessions/s1/chat/completions", json={**question, "max_frames": "all"})
    assert bad_cap.status_code == 400 and "max_frames" in bad_cap.json()["error"]["message"]
    # What /v1/chat/completions hands over for extra_body={"live_session": ...}: its parsed body, dumped.
    from llamavid.serve.app import ChatCompletionRequest

    parsed = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}], "temperature": 0}
    )
    completion, stream = registry.chat_completion(
        "s1", {**parsed.model_dump(exclude_none=True), "max_tokens": 8}
    )
    assert not stream and completion["choices"][0]["message"]["content"].strip().lower() == COLOUR
    # The same through the ordinary endpoint, as the openai client sends extra_body={"live_session": ...}.
    routed = client.post("/v1/chat/completions", json={**question, "live_session": "s1"})
    assert routed.status_code == 200, routed.text
    assert routed.json()["choices"][0]["message"]["content"].strip().lower() == COLOUR
    deleted = client.delete("/v1/live/sessions/s1")
    assert deleted.status_code == 200 and deleted.json()["frames"] == FRAMES
    assert client.get("/v1/live/sessions/s1").status_code == 404
    assert client.post("/v1/live/sessions/s1/chat/completions", json=question).status_code == 404


@pytest.mark.parametrize(
    ("source", "status"),
    [
        ("/etc/passwd", 403),  # outside the allowed root
        ("rtsp://127.0.0.1/cam", 400),  # network sources are never read from a request
        ("-", 400),  # the server's stdin is not a source
        ("relative.ts", 400),
        ("{root}/missing.ts", 400),
        ("{root}/../escape.ts", 403),
    ],
)
def test_sources_obey_allowed_roots(served, source, status):
    client, _, root = served
    response = client.post("/v1/live/sessions", json={"source": source.format(root=root)})
    assert response.status_code == status, response.text
    assert client.get("/v1/live/sessions").json()["data"] == []  # nothing was reserved by a refusal


def test_unknown_fields_and_bad_options_are_400(served):
    client, _, root = served
    source = str(root / "stream.ts")
    assert client.post("/v1/live/sessions", json={"source": source, "allow_network": True}).status_code == 400
    assert client.post("/v1/live/sessions", json={"source": source, "fps": 100}).status_code == 400
    assert client.post("/v1/live/sessions", json={"source": source, "raw_size": "big"}).status_code == 400
    assert client.post("/v1/live/sessions", json={"source": source, "max_frames": 0}).status_code == 400
    outside = client.post("/v1/live/sessions", json={"source": source, "subtitles": "/etc/passwd"})
    assert outside.status_code == 403 and "subtitles" in outside.json()["error"]["message"]
    bad_id = client.post("/v1/live/sessions", json={"source": source, "session_id": "../x"})
    assert bad_id.status_code == 400 and "session id" in bad_id.json()["error"]["message"]
    assert client.get("/v1/live/sessions").json()["data"] == []
