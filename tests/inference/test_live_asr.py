"""Live speech-to-text (`LiveSession(asr=True)`, the ``[asr]`` extra) with real speech.

The speech is pocketsphinx's own test recording ("go forward ten meters", 16 kHz mono), taken from its sdist by
`tools/fetch_real_media.py` (cached under build/real-media). It is muxed four seconds into a ten-second MPEG-TS
clip with a rendered video, as 44.1 kHz stereo MP2, so the session must resample it, and fed through an OS pipe.
pocketsphinx 5.1.1 hears "go forward ten years" here; the test asserts only the robust word "forward" and times.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import threading
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from llamavid.errors import DependencyError, InvalidInputError
from llamavid.inference.live import LiveSession
from llamavid.synth.episodes import make_episode
from testing_utils import IN_CI

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "real-media"
SPEECH_AT, SECONDS, WAIT_S = 4.0, 10, 60.0
QUESTION = "What does the speaker say?"


def _fetcher() -> ModuleType:
    module = sys.modules.get("fetch_real_media")
    if module is None:
        spec = importlib.util.spec_from_file_location(
            "fetch_real_media", REPO / "tools" / "fetch_real_media.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["fetch_real_media"] = module
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """ "go forward ten meters" as int16 samples at 16 kHz."""
    if importlib.util.find_spec("pocketsphinx") is None and not IN_CI:
        pytest.skip('pocketsphinx is not installed (pip install "llamavid[asr]")')
    fetcher = _fetcher()
    try:
        files = fetcher.fetch_source(fetcher.SPEECH, CACHE)
    except fetcher.RegistryUnreachableError as error:
        if IN_CI:
            pytest.fail(f"CI must reach the package registries: {error}")
        pytest.skip(f"package registry unreachable, speech test not run: {error}")
    path = next(row.path for row in files if row.path.endswith("goforward.raw"))
    return np.fromfile(path, dtype="<i2")


def _clip(speech: np.ndarray | None) -> bytes:
    """SECONDS of rendered video at 2 frames/s, with `speech` at SPEECH_AT s as 44.1 kHz stereo MP2 (or no audio)."""
    import av

    episode = make_episode(np.random.default_rng(1), "heldout", 60)
    sink = io.BytesIO()
    container = av.open(sink, "w", format="mpegts")
    video = container.add_stream("libx264", rate=2, options={"preset": "ultrafast", "g": "4"})
    video.width = video.height = 64
    video.pix_fmt = "yuv420p"
    streams: list = []
    if speech is not None:
        audio = container.add_stream("mp2", rate=44_100, layout="stereo")
        track = np.zeros(SECONDS * 16_000, dtype=np.int16)
        begin = int(SPEECH_AT * 16_000)
        track[begin : begin + len(speech)] = speech
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=44_100)
        block = 1152
        for start in range(0, len(track), block):
            piece = av.AudioFrame.from_ndarray(
                track[None, start : start + block], format="s16", layout="mono"
            )
            piece.sample_rate = 16_000
            piece.pts, piece.time_base = start, Fraction(1, 16_000)
            for out in resampler.resample(piece):
                streams += [(out.time, audio, out)]
    streams += [
        (index / 2, video, av.VideoFrame.from_ndarray(episode.render_frame(index, 64), format="rgb24"))
        for index in range(SECONDS * 2)
    ]
    for _, stream, frame in sorted(streams, key=lambda row: (row[0], row[1].index)):
        container.mux(stream.encode(frame))
    for stream in container.streams:
        container.mux(stream.encode())
    container.close()
    return sink.getvalue()


def _session(engine, data: bytes, cache_dir: Path, **options) -> LiveSession:
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as out:
            out.write(data)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    session = LiveSession(engine, read_end, cache_dir=cache_dir, **options)
    status = session.wait(timeout=WAIT_S)
    feeder.join(WAIT_S)
    assert status.state == "ended", status
    return session


@pytest.fixture
def engine(serving_engine):
    """The suite's shared tiny engine (the cue path does not depend on the weights; no new model load)."""
    return serving_engine


def test_recognised_speech_reaches_the_frames_at_its_time(engine, speech, tmp_path):
    session = _session(engine, _clip(speech), tmp_path, asr=True)
    cues = session.asr.cues()
    heard = [cue for cue in cues if "forward" in cue.text.split()]
    assert len(heard) == 1, cues
    cue = heard[0]
    # The recording's speech runs from about 0.5 s to 2.5 s of its 2.8 s.
    assert SPEECH_AT <= cue.start <= SPEECH_AT + 1.0 and SPEECH_AT + 1.5 <= cue.end <= SPEECH_AT + 3.5, cue
    answer = session.ask(QUESTION, temperature=0, max_new_tokens=4)
    assert answer.frames_used == SECONDS and answer.subtitles is not None
    # llamavid ask's alignment: the cue goes with the last frame shown before it ends.
    shown = int(np.searchsorted(answer.timestamps, cue.end, side="left")) - 1
    assert "forward" in answer.subtitles[shown].split(), answer.subtitles
    assert sum(bool(text.strip()) for text in answer.subtitles) == 1
    # A window after the speech carries none of it; the status names no fault.
    assert session.ask(QUESTION, window="2s", temperature=0, max_new_tokens=4).subtitles is None
    assert "speech-to-text" not in session.status.message
    session.close()


def test_sources_without_audio(engine, speech, tmp_path):
    session = _session(engine, _clip(None), tmp_path, asr=True)
    assert "has no audio stream" in session.status.message
    assert session.ask(QUESTION, temperature=0, max_new_tokens=4).subtitles is None
    session.close()
    read_end, write_end = os.pipe()
    os.close(write_end)
    with pytest.raises(InvalidInputError, match=r"raw RGB frames, which has no audio"):
        LiveSession(engine, read_end, raw_size=(64, 64), asr=True, start=False, cache_dir=tmp_path)
    os.close(read_end)


def test_without_the_extra_says_how_to_install(engine, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # what an environment without it imports
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(DependencyError, match=r'pip install "llamavid\[asr\]"'):
            LiveSession(engine, read_end, asr=True, start=False, cache_dir=tmp_path)
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("missing", [False, True])
def test_cli_refuses_before_loading_the_model(tmp_path, monkeypatch, capsys, missing):
    from llamavid.cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.ts").write_bytes(b"")
    if missing:
        monkeypatch.setitem(sys.modules, "pocketsphinx", None)
        extra, expected = [], 'pip install "llamavid[asr]"'
    else:
        if importlib.util.find_spec("pocketsphinx") is None and not IN_CI:
            pytest.skip("pocketsphinx is not installed")
        extra, expected = ["--raw", "64x64"], "raw RGB frames, which has no audio"
    argv = ["live", "x.ts", "--asr", *extra, "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llamavid live: error:") and expected in err[0], err
