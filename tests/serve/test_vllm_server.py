"""vLLM's OpenAI server with the embedded tiny model (the real vLLM on CPU, in .venv-vllm) against `llamavid ask`.

One server for the whole module, started the way users start it: the `llamavid serve --backend vllm` console
script, which runs vLLM's server with the plugin in .venv-vllm. Held-out synthetic images and clips go to it as
files under the allowed root; greedy answers must be token-identical to `llamavid ask --temperature 0`, streamed
or not. One clip asked three questions is encoded once (the feature cache of the server), and every answer still
equals `llamavid ask`'s. A clip with subtitles (the long-video layout) answers as `llamavid ask --subtitles` and
`llamavid serve` do.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testing_utils import IN_CI, require_module

ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = Path(os.environ.get("LLAMAVID_VLLM_VENV", ROOT / ".venv-vllm"))
TINY = ROOT / "src" / "llamavid" / "assets" / "tiny-llamavid"
MAX_TOKENS = 8
ITEMS_PER_KIND = int(os.environ.get("LLAMAVID_VLLM_ITEMS", "10"))  # images and clips each: 20 in all

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    """Held-out items written as files: PNG images and mp4 clips, with their questions."""
    from PIL import Image

    from llamavid.synth import generate_items, render_frame
    from llamavid.synth.dataset import write_video

    size = json.loads((TINY / "config.json").read_text())["vision_config"]["image_size"]
    folder = tmp_path_factory.mktemp("vllm-media")
    items = []
    for index, item in enumerate(generate_items("heldout", ITEMS_PER_KIND, seed=3, kind="image_qa")):
        path = folder / f"image-{index}.png"
        Image.fromarray(render_frame(item.media, size)).save(path)
        items.append({"path": path, "kind": "image", "question": item.question})
    for index, item in enumerate(generate_items("heldout", ITEMS_PER_KIND, seed=3, kind="video_qa")):
        path = write_video(item.media.render(size), folder / f"clip-{index}", "mp4")
        items.append({"path": path, "kind": "video", "question": item.question})
    return folder, items


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """`llamavid ask`'s engine (float32 on CPU, feature cache on) for the reference answers."""
    from llamavid.inference.engine import Engine

    return Engine.from_pretrained(
        TINY, device="cpu", dtype="float32", feature_cache=tmp_path_factory.mktemp("ask-cache")
    )


@pytest.fixture(scope="module")
def server(media_dir, tmp_path_factory):
    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        message = f"{python} missing: build it with `make vllm-venv` (make test does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    folder, _ = media_dir
    cache = tmp_path_factory.mktemp("vllm-feature-cache")
    log_path = tmp_path_factory.mktemp("vllm-log") / "server.log"
    port = _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # The engine core runs its model itself (no worker process): one process start fewer, ~25 s on 2 cores.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "OMP_NUM_THREADS": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    }
    # `llamavid serve --backend vllm`: vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`, as
    # vllm-cpu's own console script is broken; docs/vllm.md) in .venv-vllm, with our flags mapped to vLLM's.
    script = Path(sys.executable).with_name("llamavid")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "llamavid.cli.main"]
    command = [
        *launcher, "serve", "--backend", "vllm", "--vllm-python", str(python), "--model", str(TINY),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--allowed-root", str(folder),
        "--cache-dir", str(cache), "--max-batch-size", "8", "--vllm-args", "--max-model-len 512 --enforce-eager --distributed-executor-backend uni",
    ]  # fmt: skip
    log = open(log_path, "w")  # noqa: SIM115  (closed below, after the server)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"llamavid serve --backend vllm exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"llamavid serve --backend vllm did not start in 240 s:\n{log_path.read_text()[-4000:]}"
                )
            time.sleep(1)
        yield {"url": base, "log": log_path, "cache": cache, "model": str(TINY)}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()


def _messages(path: Path, kind: str, question: str) -> list[dict]:
    part = {"type": f"{kind}_url", f"{kind}_url": {"url": path.resolve().as_uri()}}
    return [{"role": "user", "content": [part, {"type": "text", "text": question}]}]


def _client(server):
    openai = require_module("openai")
    return openai.OpenAI(base_url=f"{server['url']}/v1", api_key="none", max_retries=0, timeout=120)


def _ask_vllm(client, server, path: Path, kind: str, question: str) -> tuple[str, list[int], list]:
    response = client.chat.completions.create(
        model=server["model"],
        messages=_messages(path, kind, question),
        temperature=0,
        max_tokens=MAX_TOKENS,
        logprobs=True,
        top_logprobs=2,
        extra_body={"return_token_ids": True, "skip_special_tokens": True},
    )
    choice = response.choices[0]
    token_ids = list(getattr(choice, "token_ids", None) or choice.model_extra.get("token_ids") or [])
    logprobs = choice.logprobs.content if choice.logprobs else []
    return choice.message.content or "", token_ids, logprobs


def _stream_vllm(client, server, path: Path, kind: str, question: str) -> str:
    stream = client.chat.completions.create(
        model=server["model"],
        messages=_messages(path, kind, question),
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def _strip_eos(token_ids: list[int], eos: int) -> list[int]:
    return token_ids[: token_ids.index(eos)] if eos in token_ids else token_ids


def test_greedy_answers_match_llamavid_ask(server, media_dir, engine):
    _, items = media_dir
    client = _client(server)
    eos = engine.processor.tokenizer.eos_token_id
    identical, report = 0, []
    # The server answers (streamed and not) four requests at a time while this process computes the references.
    with ThreadPoolExecutor(max_workers=4) as pool:
        asked = [pool.submit(_ask_vllm, client, server, i["path"], i["kind"], i["question"]) for i in items]
        streams = [
            pool.submit(_stream_vllm, client, server, i["path"], i["kind"], i["question"]) for i in items
        ]
        references = [
            engine.ask(item["path"], item["question"], temperature=0, max_new_tokens=MAX_TOKENS)
            for item in items
        ]
        answers = [
            (future.result(timeout=300), stream.result(timeout=300))
            for future, stream in zip(asked, streams, strict=True)
        ]
    for item, reference, ((text, token_ids, logprobs), streamed) in zip(
        items, references, answers, strict=True
    ):
        assert streamed.strip() == text.strip(), (item, streamed, text)
        # Engine's ids end with the EOS that stopped it; vLLM's leave the stop token out.
        ours, expected = _strip_eos(token_ids, eos), _strip_eos(reference.token_ids, eos)
        if ours == expected and text.strip() == reference.text:
            identical += 1
            continue
        step = next(
            (i for i, (a, b) in enumerate(zip(ours, expected, strict=False)) if a != b),
            min(len(ours), len(expected)),
        )
        gap = None
        if step < len(logprobs) and len(logprobs[step].top_logprobs) > 1:
            top = logprobs[step].top_logprobs
            gap = top[0].logprob - top[1].logprob
        report.append({"item": str(item["path"].name), "step": step, "logprob_gap": gap, "vllm": ours,
                       "ask": expected})  # fmt: skip
    print(f"vLLM vs llamavid ask: {identical}/{len(items)} token-identical; differing: {report}")
    assert identical >= len(items) - max(1, len(items) // 20), report


def test_one_video_three_questions_one_encoding(server, media_dir, engine):
    _, items = media_dir
    clip = next(item for item in items if item["kind"] == "video")
    # A clip the other test has not sent, so this server has never encoded it.
    from llamavid.synth import generate_items
    from llamavid.synth.dataset import write_video

    folder = clip["path"].parent
    item = generate_items("heldout", 1, seed=11, kind="video_qa")[0]
    size = json.loads((TINY / "config.json").read_text())["vision_config"]["image_size"]
    path = write_video(item.media.render(size), folder / "three-questions", "mp4")
    questions = [item.question, "What colour is the object?", "How many objects are there?"]
    before = server["log"].read_text().count("llamavid: encoded")
    client = _client(server)
    for question in questions:
        reference = engine.ask(path, question, temperature=0, max_new_tokens=MAX_TOKENS)
        text, token_ids, _ = _ask_vllm(client, server, path, "video", question)
        eos = engine.processor.tokenizer.eos_token_id
        assert _strip_eos(token_ids, eos) == _strip_eos(reference.token_ids, eos), question
        assert text.strip() == reference.text
    encodings = server["log"].read_text().count("llamavid: encoded") - before
    assert encodings == 1, f"{encodings} encodings for one video and three questions"
    entries = [p for p in server["cache"].iterdir() if p.is_dir()]
    from llamavid.data import FeatureCache

    sources = [row for row in FeatureCache(server["cache"]).list_entries() if row.get("complete")]
    assert len(entries) == len(sources)  # every entry complete: nothing half-written


SUBTITLES_SRT = (
    "1\n00:00:00,000 --> 00:00:02,500\nA shape appears on the left.\n\n"
    "2\n00:00:02,500 --> 00:00:06,000\nIt moves across the picture...\n"
)


@pytest.fixture(scope="module")
def subtitled_clip(media_dir):
    """A held-out clip and an .srt next to it (under the server's allowed root)."""
    _, items = media_dir
    clip = next(item for item in items if item["kind"] == "video")
    srt = clip["path"].with_suffix(".srt")
    srt.write_text(SUBTITLES_SRT)
    return clip, srt


def test_subtitles_match_llamavid_ask_and_llamavid_serve(server, engine, subtitled_clip):
    """The long-video layout through vLLM: token-identical to `llamavid ask --subtitles`, as `llamavid serve`."""
    from llamavid.serve.app import RunningServer, ServerConfig, create_app

    clip, srt = subtitled_clip
    path, question = clip["path"], clip["question"]
    reference = engine.ask(path, question, temperature=0, max_new_tokens=MAX_TOKENS, subtitles=srt)
    plain = engine.ask(path, question, temperature=0, max_new_tokens=MAX_TOKENS)
    assert reference.prompt_tokens > plain.prompt_tokens  # the movie layout, subtitles in the prompt
    eos = engine.processor.tokenizer.eos_token_id
    vtt = "WEBVTT\n\n" + SUBTITLES_SRT.replace(",", ".").replace("1\n00", "00").replace("2\n00", "00")
    forms = {
        "SRT text": SUBTITLES_SRT,
        "data: URL of a .vtt": "data:text/vtt;base64," + base64.b64encode(vtt.encode()).decode(),
        "file:// URL under the allowed root": srt.resolve().as_uri(),
    }
    client = _client(server)
    ours = RunningServer(create_app(engine, ServerConfig(allowed_roots=(path.parent,))))
    try:
        ours_client = _client({"url": ours.url})
        for name, subtitles in forms.items():
            options = {"mm_processor_kwargs": {"subtitles": subtitles}}
            response = client.chat.completions.create(
                model=server["model"], messages=_messages(path, "video", question), temperature=0,
                max_tokens=MAX_TOKENS, extra_body={**options, "return_token_ids": True},
            )  # fmt: skip
            choice = response.choices[0]
            token_ids = list(getattr(choice, "token_ids", None) or choice.model_extra.get("token_ids") or [])
            assert _strip_eos(token_ids, eos) == _strip_eos(reference.token_ids, eos), name
            assert (choice.message.content or "").strip() == reference.text, name
            assert response.usage.prompt_tokens == reference.prompt_tokens, name
            served = ours_client.chat.completions.create(
                model=engine.name, messages=_messages(path, "video", question), temperature=0,
                max_tokens=MAX_TOKENS, extra_body=options,
            )  # fmt: skip
            assert served.choices[0].message.content == reference.text, name
    finally:
        ours.stop()


def test_the_ask_command_agrees_with_the_engine(engine, subtitled_clip, capsys):
    """The reference answers come from `Engine.ask`; this pins them to the `llamavid ask` command (subtitles on),
    run in this process (its own parser, model loading and feature cache; no interpreter start)."""
    from llamavid.cli.main import main

    clip, srt = subtitled_clip
    capsys.readouterr()
    code = main(
        ["ask", str(clip["path"]), clip["question"], "--model", str(TINY), "--temperature", "0",
         "--max-new-tokens", str(MAX_TOKENS), "--json", "-q", "--dtype", "float32", "--device", "cpu",
         "--cache-dir", str(engine.feature_cache.root), "--subtitles", str(srt)]
    )  # fmt: skip
    assert code == 0
    reference = engine.ask(
        clip["path"], clip["question"], temperature=0, max_new_tokens=MAX_TOKENS, subtitles=srt
    )
    assert json.loads(capsys.readouterr().out)["answer"] == reference.text


@pytest.mark.parametrize(
    "options",
    [
        {"subtitles": "1\n00:00:0x,000 --> 00:00:01,000\nbroken\n"},
        {"subtitles": "file:///etc/hostname.srt"},
        {"subtitles": "https://example.com/a.srt"},
        {"fps": 50},  # over the server's --max-fps (8)
        {"max_frames": 1000},  # over the server's --max-frames (256)
    ],
)
def test_bad_media_options_get_a_400(server, subtitled_clip, options):
    """Malformed cues, a file outside the allowed root, a remote URL, sampling over the server's limits: refused
    as `llamavid serve` refuses them."""
    import httpx

    clip, _ = subtitled_clip
    body = {
        "model": server["model"],
        "messages": _messages(clip["path"], "video", clip["question"]),
        "max_tokens": 4,
        "mm_processor_kwargs": options,
    }
    response = httpx.post(f"{server['url']}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, (response.status_code, response.text[:500])
    assert f"mm_processor_kwargs.{next(iter(options))}" in response.text, response.text[:500]


@pytest.mark.parametrize(
    "url", ["data:video/mp4;base64,bm90IGEgdmlkZW8=", "file:///nonexistent/clip.mp4", "text"]
)
def test_a_bad_media_url_gets_a_4xx(server, media_dir, url):
    """Undecodable bytes, a missing file, a file that is no video: 4xx, and the server keeps serving.

    (An unreachable http:// host is vLLM's own fetch error, a 500, before the plugin sees anything.)
    """
    import httpx

    if url == "text":
        folder, _ = media_dir
        (folder / "notes.mp4").write_text("not a video")
        url = (folder / "notes.mp4").resolve().as_uri()

    body = {
        "model": server["model"],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "?"}],
            }
        ],
        "max_tokens": 4,
    }
    response = httpx.post(f"{server['url']}/v1/chat/completions", json=body, timeout=60)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert httpx.get(f"{server['url']}/health", timeout=5).status_code == 200  # still serving


def test_metrics_endpoint(server):
    import httpx

    text = httpx.get(f"{server['url']}/metrics", timeout=10).text
    assert "vllm:" in text
