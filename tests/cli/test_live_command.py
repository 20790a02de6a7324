"""``llamavid live``: questions answered about a stream while it plays, with the embedded tiny model."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamavid.cli.live import parse_question
from llamavid.cli.main import main
from llamavid.errors import InvalidInputError

_spec = importlib.util.spec_from_file_location(
    "_live_stream_writer", Path(__file__).resolve().parents[1] / "inference" / "test_live.py"
)
_live = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_live)
WRITER, QUESTION, COLOUR, FRAMES, SEED = _live.WRITER, _live.QUESTION, _live.COLOUR, _live.FRAMES, _live.SEED
TIMEOUT_S = 120


def _write_stream(out: str) -> subprocess.Popen:
    # SEED, 120 frames, no pause, no garbage (see tests/inference/test_live.py)
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(SEED), str(FRAMES), "-1", out, "-1"],
        stdout=subprocess.PIPE if out == "-" else subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def test_stdin_stream_with_questions_file(tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text(f"# asked at stream times\n@30 {QUESTION}\n\n@1m {QUESTION}\n", encoding="utf-8")
    writer = _write_stream("-")
    try:
        command = [sys.executable, "-m", "llamavid.cli.main", "live", "-", "--questions", str(questions)]
        command += ["--cache-dir", str(tmp_path / "cache"), "--temperature", "0", "--max-new-tokens", "8"]
        command += ["--device", "cpu", "--session-id", "cli-stdin"]
        result = subprocess.run(
            command,
            stdin=writer.stdout,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    finally:
        writer.kill()
        writer.wait(30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [COLOUR, COLOUR]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("live cli-stdin: ended") and f"{FRAMES} frames" in last and "frames/s" in last
    assert (tmp_path / "cache" / "live-cli-stdin" / "meta.json").is_file()


def test_growing_file_with_questions_on_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    video, marker = tmp_path / "stream.ts", tmp_path / "stream.ts.end"
    assert _write_stream(str(video)).wait(TIMEOUT_S) == 0
    marker.touch()  # the writer has finished: the file ends where it ends now
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"@25 {QUESTION}\n{QUESTION}\n"))
    args = ["live", str(video), "--end-marker", str(marker), "--cache-dir", str(tmp_path / "cache")]
    args += ["--temperature", "0", "--max-new-tokens", "8", "--json", "--device", "cpu", "--window", "2h"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    import json

    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["answer"].strip() for row in rows] == [COLOUR, COLOUR]
    assert rows[0]["position"] >= 25 and rows[0]["policy"] == "all"
    assert "end marker" in err.strip().splitlines()[-1]


def test_parse_question() -> None:
    assert parse_question("  # comment") is None and parse_question("   ") is None
    assert parse_question("What now?") == (None, "What now?")
    assert parse_question("@1m30s What now?") == (90.0, "What now?")
    assert parse_question("@0 First?") == (0.0, "First?")
    with pytest.raises(InvalidInputError):
        parse_question("@soon What?")


@pytest.mark.parametrize(
    "extra",
    [
        ["-"],  # stdin carries the stream: questions must come from a file
        ["missing.ts"],
        ["-", "--questions", "nowhere.txt"],
        ["x.ts", "--raw", "640"],
        ["x.ts", "--window", "forever"],
    ],
)
def test_bad_inputs_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.ts").write_bytes(b"")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["live", *extra, "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llamavid live: error:")


def test_killed_command_resumes_from_its_cache(tmp_path: Path) -> None:
    import re
    import selectors
    import signal
    import time

    import numpy as np

    from llamavid.inference import Engine
    from llamavid.inference.live import LiveSession

    video, marker, cache = tmp_path / "stream.ts", tmp_path / "stream.ts.end", tmp_path / "cache"
    video.touch()
    writer = subprocess.Popen(  # pauses after frame 60 until a line arrives on its stdin
        [sys.executable, "-c", WRITER, str(SEED), str(FRAMES), "60", str(video), "-1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    command = [sys.executable, "-m", "llamavid.cli.main", "live", str(video), "--end-marker", str(marker)]
    command += [
        "--session-id",
        "killed",
        "--cache-dir",
        str(cache),
        "--status-interval",
        "0.2",
        "--device",
        "cpu",
    ]
    live = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,  # kept open: no end of questions
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        # 40 answerable frames: the first chunk (32 frames) is on disk, since the reader stores it before it
        # encodes the next batch.
        selector = selectors.DefaultSelector()
        selector.register(live.stderr, selectors.EVENT_READ)
        deadline, frames, seen = time.monotonic() + TIMEOUT_S, 0, b""
        while frames < 40 and time.monotonic() < deadline and live.poll() is None:
            if selector.select(timeout=1.0):
                seen += os.read(live.stderr.fileno(), 4096)
                counts = re.findall(rb", (\d+) frames,", seen)
                frames = int(counts[-1]) if counts else 0
        assert frames >= 40, seen.decode(errors="replace")
        live.send_signal(signal.SIGKILL)
        live.wait(30)
    finally:
        live.kill()
        live.wait(30)
    assert writer.stdin is not None
    writer.stdin.write(b"go\n")
    writer.stdin.close()
    assert writer.wait(TIMEOUT_S) == 0
    marker.touch()
    engine = Engine.from_pretrained(None, device="cpu", feature_cache=cache)
    session = LiveSession(engine, video, session_id="killed", end_marker=marker)
    status = session.wait(timeout=TIMEOUT_S)
    assert status.state == "ended" and status.resumed_frames >= 32 and status.frames == FRAMES, status.line()
    assert np.array_equal(session.entry().timestamps, np.arange(FRAMES))
    answer = session.ask(QUESTION, temperature=0, max_new_tokens=8)
    assert answer.text.strip().lower() == COLOUR
