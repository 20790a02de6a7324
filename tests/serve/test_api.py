"""The OpenAI-compatible server, live on 127.0.0.1:<free port>, driven by the official `openai` client and httpx.

Queue and timeout behaviour is tested by holding the engine on a `threading.Event`, never by sleeping.
"""

import base64
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llamavid.inference.settings import SamplingSettings
from testing_utils import require_module  # noqa: E402

openai = require_module("openai")
httpx = require_module("httpx")
api = require_module("llamavid.serve.app")

GREEDY = dict(temperature=0, max_tokens=6)


def video_part(path) -> dict:
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}}


def ask_message(part: dict, text: str = "What moves?") -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


class HeldEngine:
    """Wraps `engine.answer_batch` so a test decides when each batch may run, and records every batch."""

    def __init__(self, engine, monkeypatch):
        self.real = engine.answer_batch
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list] = []
        self.cancel_checks = []
        monkeypatch.setattr(engine, "answer_batch", self)

    def __call__(self, requests, on_delta=None, is_cancelled=None):
        self.cancel_checks.append(is_cancelled)
        self.entered.set()
        assert self.release.wait(timeout=60), "test never released the engine"
        answers = self.real(requests, on_delta=on_delta, is_cancelled=is_cancelled)
        self.batches.append(answers)
        return answers


@pytest.fixture(scope="module")
def media_root(tmp_path_factory, demo_video_path):
    root = tmp_path_factory.mktemp("allowed")
    (root / "clip.mp4").write_bytes(demo_video_path.read_bytes())
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, root / "link.mp4")
    return root


def start(engine, **config):
    return api.RunningServer(api.create_app(engine, api.ServerConfig(**config)))


@pytest.fixture(scope="module")
def server(serving_engine, media_root):
    running = start(
        serving_engine,
        allowed_roots=(media_root,),
        max_upload_bytes=1_000_000,
        max_batch_size=4,
        batch_wait_ms=20,
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_health_and_completion_schema(server, client, serving_engine, demo_video_path):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert [model.id for model in client.models.list()] == [serving_engine.name]
    response = client.chat.completions.create(
        model=serving_engine.name, messages=ask_message(video_part(demo_video_path)), **GREEDY
    )
    assert response.object == "chat.completion" and response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 8 and response.usage.completion_tokens <= 6
    expected = serving_engine.ask(demo_video_path, "What moves?", temperature=0, max_new_tokens=6).text
    assert response.choices[0].message.content == expected

    stream = client.chat.completions.create(
        model=serving_engine.name,
        messages=ask_message(video_part(demo_video_path)),
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.strip() == expected
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens


def test_multi_turn_and_image_parts(server, client, serving_engine, media_root):
    from PIL import Image

    image = media_root / "still.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    messages = [
        {"role": "system", "content": "ignored: the template has its own system text"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{image}"}}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "Are you sure?"},
    ]  # fmt: skip
    response = client.chat.completions.create(model=serving_engine.name, messages=messages, **GREEDY)
    media = serving_engine.load_media(image)
    expected = serving_engine.answer_batch(
        [
            serving_engine.build_request(
                "Are you sure?", media, [("Colour?", "red")], SamplingSettings(0, 1, 6)
            )
        ]
    )[0]
    assert response.choices[0].message.content == expected.text


def test_concurrent_requests_are_batched_with_unbatched_answers(serving_engine, demo_video_path, monkeypatch):
    held = HeldEngine(serving_engine, monkeypatch)
    questions = ["What moves?", "Which colour?", "Where is it?", "How many?"]
    with start(serving_engine, max_batch_size=4, batch_wait_ms=50) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0, timeout=60)

        def ask(question):
            return (
                client.chat.completions.create(
                    model=serving_engine.name,
                    messages=ask_message(video_part(demo_video_path), question),
                    **GREEDY,
                )
                .choices[0]
                .message.content
            )

        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(ask, questions[0])
            assert held.entered.wait(60)  # the first request holds the device ...
            rest = [pool.submit(ask, question) for question in questions[1:]]
            assert running.server.config.app.state.scheduler.wait_until_queued(
                3, timeout=60
            )  # ... the others wait
            held.release.set()
            answers = [first.result(), *(future.result() for future in rest)]
    assert [len(batch) for batch in held.batches] == [1, 3]
    monkeypatch.undo()
    expected = [
        serving_engine.ask(demo_video_path, q, temperature=0, max_new_tokens=6).text for q in questions
    ]
    assert answers == expected


def test_full_queue_answers_429_and_timeout_504(serving_engine, monkeypatch):
    held = HeldEngine(serving_engine, monkeypatch)
    body = {"messages": [{"role": "user", "content": "hello"}], **GREEDY}
    with start(serving_engine, max_batch_size=1, max_queue=1) as running, ThreadPoolExecutor(2) as pool:
        url = f"{running.url}/v1/chat/completions"
        first = pool.submit(httpx.post, url, json=body, timeout=60)
        assert held.entered.wait(60)
        second = pool.submit(httpx.post, url, json=body, timeout=60)
        assert running.server.config.app.state.scheduler.wait_until_queued(1, timeout=60)
        refused = httpx.post(url, json=body, timeout=60)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "busy" in refused.json()["error"]["message"]
        held.release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200

    held.release.clear()
    held.entered.clear()
    with start(serving_engine, request_timeout=0.5) as running:
        url = f"{running.url}/v1/chat/completions"
        timed_out = httpx.post(url, json=body, timeout=60)  # the engine is held: the deadline passes first
        assert timed_out.status_code == 504 and timed_out.json()["error"]["type"] == "timeout_error"
        assert held.cancel_checks[-1](0)  # the held request is already marked cancelled
        held.release.set()
        assert httpx.get(f"{running.url}/health").status_code == 200


def test_client_disconnect_mid_stream_cancels_and_server_stays_up(
    serving_engine, monkeypatch, demo_video_path
):
    held = HeldEngine(serving_engine, monkeypatch)
    body = {
        "messages": [{"role": "user", "content": "tell a long story"}],
        "stream": True,
        "temperature": 0,
        "max_tokens": 400,
    }
    with start(serving_engine) as running:
        url = f"{running.url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            first_line = next(response.iter_lines())
            assert first_line.startswith("data: ")
        assert held.entered.wait(60)
        gone = threading.Event()
        for _ in range(600):  # bounded: until the server has noticed the disconnect
            if held.cancel_checks[-1](0):
                break
            gone.wait(0.05)
        assert held.cancel_checks[-1](0)
        held.release.set()
        ok = httpx.post(url, json={**body, "stream": False, "max_tokens": 3}, timeout=60)
        assert ok.status_code == 200
    assert held.batches[0][0].finish_reason == "cancelled"


@pytest.mark.parametrize(
    "url, status, words",
    [
        ("file:///etc/passwd", 403, "outside"),
        ("file://{root}/../outside/secret.txt", 403, "outside"),
        ("file://{root}/%2e%2e/%2e%2e/etc/passwd", 403, "outside"),
        ("file://{root}/link.mp4", 403, "outside"),  # a symlink inside the root pointing out
        ("file://otherhost/etc/passwd", 400, "host"),
        ("https://example.com/video.mp4", 400, "data:"),
        ("ftp://example.com/video.mp4", 400, "data:"),
        ("data:video/mp4;base64,@@@not-base64@@@", 400, "base64"),
        ("data:text/html;base64,PGgxPg==", 400, "unsupported media type"),
        ("data:video/mp4,rawbytes", 400, "base64"),
        ("data:video/mp4;base64,AAAAAAAAAAAA", 400, "uploaded media"),
    ],
)
def test_refused_media_urls(server, media_root, url, status, words):
    part = {"type": "video_url", "video_url": {"url": url.format(root=media_root)}}
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json={"messages": ask_message(part), **GREEDY}, timeout=60
    )
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "body, status",
    [
        (b"{not json", 400),
        (b'{"messages": []}', 400),
        (b'{"messages": [{"role": "assistant", "content": "hi"}]}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}', 404),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 99}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000000}', 400),
        (b'{"messages": [{"role": "user", "content": [{"type": "video_url"}]}]}', 400),
        (b"x" * 1_100_000, 413),
    ],
)
def test_malformed_and_oversize_bodies(server, body, status):
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) >= {"message", "type"}
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_two_media_parts_are_refused(server, demo_video_path):
    part = video_part(demo_video_path)
    messages = [{"role": "user", "content": [part, part, {"type": "text", "text": "compare"}]}]
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": messages}, timeout=60)
    assert response.status_code == 400 and "one image or video" in response.json()["error"]["message"]


def test_api_key_and_disabled_file_urls(serving_engine, demo_video_path):
    with start(serving_engine, api_key="s3cret") as running:
        assert httpx.get(f"{running.url}/v1/models").status_code == 401
        assert (
            httpx.get(f"{running.url}/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code
            == 200
        )
        part = {"type": "video_url", "video_url": {"url": f"file://{demo_video_path}"}}
        response = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"messages": ask_message(part)},
            headers={"Authorization": "Bearer s3cret"},
            timeout=60,
        )
        assert response.status_code == 403 and "--allowed-root" in response.json()["error"]["message"]


SUBTITLES_SRT = (
    "1\n00:00:00,000 --> 00:00:02,000\nA red square appears.\n\n"
    "2\n00:00:02,000 --> 00:00:04,000\nIt slides to the right.\n"
)


def test_media_options_through_extra_body(server, client, serving_engine, media_root):
    clip = media_root / "clip.mp4"
    part = {"type": "video_url", "video_url": {"url": f"file://{clip}"}}

    def create(options=None, **fields):
        extra = None if options is None else {"mm_processor_kwargs": options}
        return client.chat.completions.create(
            model=serving_engine.name, messages=ask_message(part), extra_body=extra, **GREEDY, **fields
        )

    plain = create()
    assert (plain.usage.frames_sampled, plain.usage.frames_capped) == (4, False)  # 4 s at the server's 1 fps

    capped = create({"fps": 2, "max_frames": 3})  # 8 frames at 2 fps, sampled uniformly as 3
    assert (capped.usage.frames_sampled, capped.usage.frames_capped) == (3, True)
    expected = serving_engine.ask(clip, "What moves?", temperature=0, max_new_tokens=6, fps=2, max_frames=3)
    assert capped.choices[0].message.content == expected.text
    assert capped.usage.prompt_tokens == expected.prompt_tokens

    srt_file = media_root / "clip.srt"
    srt_file.write_text(SUBTITLES_SRT)
    vtt = "WEBVTT\n\n" + SUBTITLES_SRT.replace(",", ".").replace("1\n00", "00").replace("2\n00", "00")
    expected = serving_engine.ask(clip, "What moves?", temperature=0, max_new_tokens=6, subtitles=srt_file)
    forms = {
        "raw SRT text": SUBTITLES_SRT,
        "data: URL of a .vtt": "data:text/vtt;base64," + base64.b64encode(vtt.encode()).decode(),
        "file:// URL under the root": f"file://{srt_file}",
    }
    for name, subtitles in forms.items():
        answer = create({"subtitles": subtitles})
        assert answer.choices[0].message.content == expected.text, name
        assert answer.usage.prompt_tokens == expected.prompt_tokens > plain.usage.prompt_tokens, name

    stream = create({"max_frames": 2}, stream=True, stream_options={"include_usage": True})
    usage = list(stream)[-1].usage
    assert (usage.frames_sampled, usage.frames_capped) == (2, True)
