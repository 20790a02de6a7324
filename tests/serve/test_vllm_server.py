"""`vllm serve` with the embedded tiny model (the real vLLM on CPU, in .venv-vllm) against `llamavid ask`.

Held-out synthetic images and clips go to the server as files under --allowed-local-media-path; greedy answers
must be token-identical to `llamavid ask --temperature 0`, streamed or not. One clip asked three questions is
encoded once (the feature cache of the server), and every answer still equals `llamavid ask`'s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
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
        "LLAMAVID_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    }
    # `vllm serve` itself, minus the console script: vllm-cpu 0.32.0's `vllm` reads the version of a "vllm"
    # distribution, which vllm-cpu is not, and exits (docs/vllm.md).
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(TINY), "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "512", "--enforce-eager", "--allowed-local-media-path", str(folder),
        "--media-io-kwargs", json.dumps({"video": {"video_backend": "llamavid"}}), "--max-num-seqs", "8",
    ]  # fmt: skip
    log = open(log_path, "w")  # noqa: SIM115  (closed below, after the server)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not start in 240 s:\n{log_path.read_text()[-4000:]}")
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
    for item in items:
        reference = engine.ask(item["path"], item["question"], temperature=0, max_new_tokens=MAX_TOKENS)
        text, token_ids, logprobs = _ask_vllm(client, server, item["path"], item["kind"], item["question"])
        streamed = _stream_vllm(client, server, item["path"], item["kind"], item["question"])
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


def test_the_console_script_agrees_with_the_engine(media_dir, engine):
    """The reference answers above come from `Engine.ask`; this pins them to the `llamavid ask` command."""
    _, items = media_dir
    clip = next(item for item in items if item["kind"] == "video")
    result = subprocess.run(
        [sys.executable, "-m", "llamavid.cli.main", "ask", str(clip["path"]), clip["question"], "--model",
         str(TINY), "--temperature", "0", "--max-new-tokens", str(MAX_TOKENS), "--json", "--dtype", "float32",
         "--cache-dir", str(engine.feature_cache.root)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reference = engine.ask(clip["path"], clip["question"], temperature=0, max_new_tokens=MAX_TOKENS)
    assert json.loads(result.stdout)["answer"] == reference.text


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
