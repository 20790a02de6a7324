"""Live sessions with the embedded tiny model: a stream from a writer process, asked about while it plays.

The writer renders a held-out synthetic-world episode (a white "needle" frame at a known time) and muxes it as
MPEG-TS at full speed, pausing after a given frame until the test releases it, so a question is asked
mid-stream without any sleep. Every wait is bounded (`LiveSession.wait` and subprocess timeouts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from llamavid.errors import ContextBudgetError, InvalidInputError
from llamavid.inference.live import LiveSession, parse_window, select_by_relevance
from llamavid.synth.episodes import make_episode
from tiny_helpers import LIVE_EPISODE

QUESTION = LIVE_EPISODE["question"]
SEED, FRAMES, NEEDLE, COLOUR = (LIVE_EPISODE[key] for key in ("seed", "frames", "needle", "colour"))
PAUSE_AFTER = 40
WAIT_S = 90.0

# argv: seed frames pause_after out(- = stdout) garbage_after(-1 = none). Pauses after frame `pause_after` until a
# line arrives on stdin; with garbage_after, writes random bytes after that frame and stops.
WRITER = r"""
import os, sys
import av
import numpy as np
from llamavid.synth.episodes import make_episode

seed, frames, pause, out, garbage = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
episode = make_episode(np.random.default_rng(seed), "heldout", frames)
sink = sys.stdout.buffer if out == "-" else open(out, "ab", buffering=0)
container = av.open(sink, "w", format="mpegts", options={"flush_packets": "1"})
stream = container.add_stream("libx264", rate=1, options={"preset": "ultrafast", "tune": "zerolatency", "qp": "4", "g": "4"})
stream.width = stream.height = 64
stream.pix_fmt = "yuv420p"
for index in range(frames):
    container.mux(stream.encode(av.VideoFrame.from_ndarray(episode.render_frame(index, 64), format="rgb24")))
    if index == garbage:
        sink.flush()
        sink.write(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
        sink.flush()
        os._exit(0)
    if index == pause:
        sink.flush()
        sys.stdin.readline()
container.mux(stream.encode())
container.close()
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from llamavid.inference import Engine

    return Engine.from_pretrained(None, device="cpu", feature_cache=tmp_path_factory.mktemp("live-cache"))


def _writer(out: str, pause: int = PAUSE_AFTER, garbage: int = -1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(SEED), str(FRAMES), str(pause), out, str(garbage)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE if out == "-" else subprocess.DEVNULL,
    )


def _release(writer: subprocess.Popen) -> None:
    assert writer.stdin is not None
    writer.stdin.write(b"go\n")
    writer.stdin.close()


def _ask(session: LiveSession, **options) -> str:
    return session.ask(QUESTION, temperature=0, max_new_tokens=8, **options).text.strip().lower()


def test_episode_facts():
    episode = make_episode(np.random.default_rng(SEED), "heldout", FRAMES)
    assert (episode.needle_start, episode.needle_colour) == (NEEDLE, COLOUR)


def test_pipe_stream_answers_mid_stream(engine):
    writer = _writer("-")
    try:
        session = LiveSession(engine, writer.stdout, chunk_frames=16)
        status = session.wait(position=NEEDLE + 8, timeout=WAIT_S)
        assert status.state in ("running", "stalled"), status.line()  # the writer is paused: mid-stream
        assert status.position is not None and NEEDLE < status.position <= PAUSE_AFTER
        answer = session.ask(QUESTION, temperature=0, max_new_tokens=8)
        assert answer.text.strip().lower() == COLOUR
        assert answer.policy == "all" and answer.frames_used == status.frames <= PAUSE_AFTER + 1
        assert answer.timestamps[NEEDLE] == NEEDLE  # sampled by timestamp, one frame per second
        # A window after the needle does not show it.
        recent = session.ask(QUESTION, window="5s", temperature=0, max_new_tokens=8)
        assert recent.frames_seen <= 6 and recent.timestamps[0] > NEEDLE
        _release(writer)
        status = session.wait(timeout=WAIT_S)
        assert status.state == "ended", status.line()
        assert status.frames == FRAMES and status.position == FRAMES - 1
        assert status.realtime_factor > 1.0 and "ended" in status.message
        assert _ask(session) == COLOUR
        entry = session.entry()
        assert entry.num_frames == FRAMES and np.array_equal(entry.timestamps, np.arange(FRAMES))
        assert len(session.thumbnails()[0]) == FRAMES
    finally:
        writer.kill()
        writer.wait(30)


def test_growing_file_is_followed_until_the_end_marker(engine, tmp_path):
    video, marker = tmp_path / "growing.ts", tmp_path / "growing.ts.end"
    video.touch()
    writer = _writer(str(video))
    try:
        session = LiveSession(engine, video, end_marker=marker, idle_timeout=WAIT_S, chunk_frames=16)
        status = session.wait(position=NEEDLE + 8, timeout=WAIT_S)
        assert status.state in ("running", "stalled"), status.line()
        assert _ask(session) == COLOUR
        _release(writer)
        assert writer.wait(WAIT_S) == 0
        marker.touch()
        status = session.wait(timeout=WAIT_S)
        assert status.state == "ended" and "end marker" in status.message, status.line()
        assert status.frames == FRAMES
    finally:
        writer.kill()
        writer.wait(30)


def test_killed_session_resumes_from_its_cache(engine, tmp_path):
    video, marker = tmp_path / "done.ts", tmp_path / "done.ts.end"
    writer = _writer(str(video), pause=-1)
    assert writer.wait(WAIT_S) == 0
    marker.touch()
    session = LiveSession(engine, video, session_id="resume-me", end_marker=marker, chunk_frames=16)
    assert session.wait(timeout=WAIT_S).frames == FRAMES
    path = session.path
    # What a kill leaves: a sidecar from two chunks ago, later chunk files it does not list, a half temp file.
    meta = json.loads((path / "meta.json").read_text())
    meta["chunks"] = meta["chunks"][:2]
    kept = sum(chunk["frames"] for chunk in meta["chunks"])
    meta["timestamps"] = meta["timestamps"][:kept]
    meta["num_frames"] = kept
    (path / "meta.json").write_text(json.dumps(meta))
    (path / ".chunk_00002.safetensors.x.tmp").write_bytes(b"half")
    calls = engine.frame_encoder.calls
    resumed = LiveSession(engine, video, session_id="resume-me", end_marker=marker, chunk_frames=16)
    status = resumed.wait(timeout=WAIT_S)
    assert status.state == "ended" and status.resumed_frames == kept > 0 and status.frames == FRAMES
    assert engine.frame_encoder.calls - calls <= (FRAMES - kept) // 8 + 4  # only the lost frames are encoded
    entry = engine.feature_cache.open("live-resume-me")  # a sound cache entry, every checksum verified
    assert np.array_equal(entry.timestamps, np.arange(FRAMES))
    assert _ask(resumed) == COLOUR  # the needle is in the resumed part


def test_garbage_mid_stream_keeps_what_was_read(engine):
    writer = _writer("-", pause=-1, garbage=PAUSE_AFTER)
    try:
        session = LiveSession(engine, writer.stdout)
        status = session.wait(timeout=WAIT_S)
        assert status.state in ("ended", "failed"), status.line()
        assert NEEDLE + 5 < status.frames <= PAUSE_AFTER + 1
        assert _ask(session) == COLOUR
    finally:
        writer.kill()
        writer.wait(30)


def _raw_session(engine, frames: int, **options) -> LiveSession:
    """The episode's first `frames` frames as raw RGB at 2 frames/s through an OS pipe (sampled at 1 fps)."""
    episode = make_episode(np.random.default_rng(SEED), "heldout", FRAMES)
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as sink:
            for index in range(frames):
                data = episode.render_frame(index, 64).tobytes()
                sink.write(data + data)  # each frame twice: 2 raw frames per stream second

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    session = LiveSession(engine, read_end, raw_size=(64, 64), raw_fps=2.0, **options)
    status = session.wait(timeout=WAIT_S)
    feeder.join(WAIT_S)
    os.close(read_end)
    assert status.state == "ended" and status.frames == frames, status.line()
    return session


def test_raw_frames_and_context_policies(engine):
    session = _raw_session(engine, FRAMES)
    assert np.array_equal(session.entry().timestamps, np.arange(FRAMES))
    times, relevance = session.relevance(QUESTION)
    assert np.array_equal(times, np.arange(FRAMES)) and abs(relevance.sum() - 1) < 1e-6
    saved = engine.max_memory
    per_token = (
        engine.check_budget(QUESTION, 1).kv_cache_bytes - engine.check_budget(QUESTION, 0).kv_cache_bytes
    )
    engine.max_memory = 8192 * 160  # about 70 frames of the tiny model's KV cache: the 120 frames do not fit
    try:
        assert per_token > 0
        with pytest.raises(ContextBudgetError):
            session.ask(QUESTION, context_policy="refuse", temperature=0, max_new_tokens=8)
        chosen = session.ask(QUESTION, temperature=0, max_new_tokens=8)  # relevance, the default
        assert chosen.policy == "relevance" and chosen.frames_used < FRAMES == chosen.frames_seen
        assert NEEDLE in chosen.timestamps and np.all(np.diff(chosen.timestamps) > 0)
        assert chosen.text.strip().lower() == COLOUR
        again = session.ask(QUESTION, temperature=0, max_new_tokens=8)  # scores of stored chunks reused
        assert np.array_equal(again.timestamps, chosen.timestamps) and again.text == chosen.text
        recent = session.ask(QUESTION, context_policy="recent", temperature=0, max_new_tokens=8)
        assert recent.timestamps[-1] == FRAMES - 1 and recent.frames_used == chosen.frames_used
        uniform = session.ask(QUESTION, context_policy="uniform", temperature=0, max_new_tokens=8)
        assert uniform.timestamps[0] == 0 and uniform.timestamps[-1] == FRAMES - 1
    finally:
        engine.max_memory = saved


def test_relevance_answer_equals_the_reference_computation(engine):
    """The scores-only path, the kept context tokens and the cap on shown frames change no answer: frame scores,
    selection and answer equal those of the model's own `get_visual_tokens` and `Engine.build_request`."""
    import torch

    from llamavid.inference.media import PreparedMedia

    session = _raw_session(engine, FRAMES, chunk_frames=16, max_frames=24)
    fresh = session.ask(QUESTION, temperature=0, max_new_tokens=8)  # a new question: every frame scored now
    features = session.entry().load_features().to(engine.dtype)
    assert len(features) == FRAMES

    def media(rows: np.ndarray) -> PreparedMedia:
        return PreparedMedia(
            source="reference",
            is_image=False,
            timestamps=rows.astype(np.float64),
            duration=float(FRAMES - 1),
            features=features[torch.as_tensor(rows)],
            thumbnails=np.zeros((len(rows), 1, 1, 3), np.uint8),
        )

    reference = engine.visual_output(media(np.arange(FRAMES)), QUESTION, output_attentions=True)
    scores = reference.frame_scores.double().numpy()
    times, relevance = session.relevance(QUESTION)
    expected = np.exp(scores - scores.max())
    assert np.allclose(relevance, expected / expected.sum(), rtol=1e-4, atol=1e-9)
    picks = select_by_relevance(scores, 24)
    settings = engine.settings(temperature=0, max_new_tokens=8)
    wanted = engine.answer(engine.build_request(QUESTION, media(picks), settings=settings))
    again = session.ask(QUESTION, temperature=0, max_new_tokens=8)  # scores kept: tokens of the picks only
    for answer in (fresh, again):
        assert answer.policy == "relevance" and answer.frames_used == 24 and answer.frames_seen == FRAMES
        assert np.array_equal(answer.timestamps, times[picks]) and NEEDLE in answer.timestamps
        assert answer.answer.token_ids == wanted.token_ids and answer.text.strip().lower() == COLOUR
    everything = session.ask(QUESTION, max_frames=0, temperature=0, max_new_tokens=8)
    assert everything.policy == "all" and everything.frames_used == FRAMES
    with pytest.raises(InvalidInputError, match="max_frames"):
        session.ask(QUESTION, max_frames=-1)


def test_stalled_then_broken_source(engine):
    read_end, write_end = os.pipe()
    session = LiveSession(engine, read_end, stall_after=0.2)
    try:
        status = session.wait(states=("stalled",), timeout=WAIT_S)
        assert status.state == "stalled" and "no data" in status.message
        with pytest.raises(InvalidInputError, match="no frame yet"):
            session.ask(QUESTION)
        assert session.status.idle >= status.idle  # the idle clock keeps counting while stalled
        os.write(write_end, b"this is not a video stream " * 100)
        os.close(write_end)
        status = session.wait(timeout=WAIT_S)
        assert status.state == "failed" and status.frames == 0, status.line()
    finally:
        session.close()
        os.close(read_end)


def test_select_by_relevance_keeps_outliers_and_coverage():
    scores = np.full(100, 10.0)
    scores[37], scores[80] = -5.0, 30.0
    chosen = select_by_relevance(scores, 10)
    assert len(chosen) == 10 and {37, 80} <= set(chosen.tolist()) and np.all(np.diff(chosen) > 0)
    assert chosen[0] == 0 and chosen[-1] == 99  # the evenly spread half reaches both ends
    assert np.array_equal(select_by_relevance(scores, 200), np.arange(100))
    for count in range(1, 100):
        assert len(select_by_relevance(np.random.default_rng(count).normal(size=100), count)) == count


def test_parse_window_and_bad_options(engine, tmp_path):
    assert parse_window(None) is None
    assert parse_window("10m") == 600 and parse_window("1h30m") == 5400 and parse_window(90) == 90
    assert parse_window("2.5m") == 150 and parse_window("45s") == 45 and parse_window("30") == 30
    for bad in ("ten minutes", "-5", "0", "5x"):
        with pytest.raises(InvalidInputError):
            parse_window(bad)
    with pytest.raises(InvalidInputError, match="network"):
        LiveSession(engine, "rtsp://127.0.0.1/stream", start=False)
    with pytest.raises(InvalidInputError, match="session id"):
        LiveSession(engine, tmp_path, session_id="../escape", start=False)
    with pytest.raises(InvalidInputError, match="context_policy"):
        LiveSession(engine, "-", context_policy="drop-everything", start=False)
    from llamavid.data.errors import MediaError

    with pytest.raises(MediaError):
        LiveSession(engine, tmp_path / "missing.ts", start=False)
    with pytest.raises(MediaError, match="no camera there.*v4l2-ctl"):  # V4L2 cameras: none in CI
        LiveSession(engine, "/dev/video97", start=False)
    with pytest.raises(InvalidInputError, match="max_frames"):
        LiveSession(engine, "-", max_frames=0, start=False)


def test_python_api_live(engine):
    from llamavid.api import LlamaVid

    episode = make_episode(np.random.default_rng(SEED), "heldout", FRAMES)
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as sink:
            for index in range(30):
                sink.write(episode.render_frame(index, 64).tobytes())

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    with LlamaVid(engine).live(read_end, raw_size=(64, 64), session_id="api") as session:
        assert session.wait(timeout=WAIT_S).frames == 30
        assert str(session.ask(QUESTION, temperature=0, max_new_tokens=8)).strip().lower() == COLOUR
    feeder.join(WAIT_S)
    os.close(read_end)
    assert session.status.state == "ended"


def test_stalled_raw_source_recovers(engine):
    frame = make_episode(np.random.default_rng(SEED), "heldout", FRAMES).render_frame(0, 64).tobytes()
    read_end, write_end = os.pipe()
    session = LiveSession(engine, read_end, raw_size=(64, 64), stall_after=0.2)
    try:
        os.write(write_end, frame * 3)
        assert session.wait(frames=3, timeout=WAIT_S).frames == 3
        status = session.wait(states=("stalled",), timeout=WAIT_S)
        assert status.state == "stalled" and status.frames == 3
        os.write(write_end, frame * 3)
        status = session.wait(frames=6, timeout=WAIT_S)
        assert status.frames == 6 and status.state == "running", status.line()
        os.close(write_end)
        status = session.wait(timeout=WAIT_S)
        assert status.state == "ended" and status.frames == 6
    finally:
        session.close()
        os.close(read_end)


def test_subtitles_follow_a_growing_file(engine, tmp_path):
    """Whole cues of a growing .srt go to the last shown frame before they end; a cue still being written, and
    one the stream has not reached, are left out until they are."""
    subtitles = tmp_path / "live.srt"
    subtitles.write_text(
        "1\n00:00:02,000 --> 00:00:04,500\nA green shape appears\n\n2\n00:00:10,000 --> 00:00:11,000\nhalf-writ"
    )
    session = _raw_session(engine, 30, subtitles=subtitles)
    first = session.ask(QUESTION, temperature=0, max_new_tokens=8)
    assert first.frames_used == 30 and first.subtitles is not None
    assert first.subtitles[4] == "A green shape appears" and sum(map(bool, first.subtitles)) == 1
    with subtitles.open("a") as handle:
        handle.write("ten\n\n3\n00:00:40,000 --> 00:00:41,000\nnot reached yet\n\n")
    second = session.ask(QUESTION, temperature=0, max_new_tokens=8)
    assert second.subtitles is not None and second.subtitles[10] == "half-written"
    assert "not reached" not in " ".join(second.subtitles)
    assert second.answer.prompt_tokens > first.answer.prompt_tokens
    assert session.ask(QUESTION, window="5s", temperature=0, max_new_tokens=8).subtitles is None
    subtitles.write_text("1\n00:00:02,000 --> nonsense\nbroken\n\n")
    assert session.ask(QUESTION, temperature=0, max_new_tokens=8).subtitles == second.subtitles
    assert "subtitles" in session.status.message


@pytest.mark.parametrize(("layers", "every"), [(1, 1), (4, 2)])
def test_fast_scores_equal_the_models_context_tokens(layers, every):
    """The scores-only path equals `get_context_tokens` for other Q-Former depths and cross-attention spacing
    (the released Q-Former cross-attends every second layer; deeper layers attend per frame)."""
    import torch

    from llamavid.inference.live import _fast_context
    from llamavid.model.modeling_llamavid import index_frame_pairs
    from llamavid.testing import build_tiny_model, tiny_config_kwargs

    qformer = dict(
        tiny_config_kwargs()["qformer_config"], num_hidden_layers=layers, cross_attention_frequency=every
    )
    model = build_tiny_model(seed=3, qformer_config=qformer).model
    config = model.config
    features = torch.randn(9, config.num_patches + 1, config.vision.hidden_size)
    ids, mask = torch.randint(3, 60, (1, 7)), torch.ones(1, 7, dtype=torch.long)
    with torch.no_grad():
        patches, visual = model.split_vision_features(features, from_pixels=True)
        zero = torch.zeros(1, dtype=torch.long)
        pairs = index_frame_pairs(torch.tensor([9]), zero, zero)
        expected, _, scores = model.get_context_tokens(
            patches, visual, ids, mask, pairs, output_attentions=True
        )
        tokens, fast = _fast_context(model, features, model.question_states(ids, mask, features.dtype))
    assert torch.allclose(tokens, expected, atol=1e-5) and torch.allclose(fast, scores, atol=1e-5)
