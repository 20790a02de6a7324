"""``llamavid sample`` and ``llamavid demo`` through the console script: media a new user can try commands on."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

LLAMAVID = Path(sys.executable).with_name("llamavid")


def llamavid(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    command = [str(LLAMAVID)] if LLAMAVID.exists() else [sys.executable, "-m", "llamavid.cli.main"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout)


def read_questions(path: Path) -> list[dict[str, str]]:
    """questions.txt: ``#`` comments, then one ``media<TAB>question<TAB>answer[<TAB>subtitles]`` per line."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        assert len(fields) in (3, 4), line
        rows.append(
            {
                "media": fields[0],
                "question": fields[1],
                "answer": fields[2],
                "subtitles": (fields[3:] or [""])[0],
            }
        )
    return rows


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample") / "samples"
    result = llamavid("sample", str(folder))
    return folder, result


def test_sample_writes_a_clip_a_movie_with_subtitles_and_questions(sample):
    folder, result = sample
    assert result.returncode == 0, result.stderr
    for name in ("clip.mp4", "movie.mp4", "movie.srt", "questions.txt"):
        assert (folder / name).stat().st_size > 0, name
        assert str(folder / name) in result.stdout, f"{name} is not printed"
    srt = (folder / "movie.srt").read_text(encoding="utf-8")
    assert "-->" in srt and "secret number" in srt
    questions = read_questions(folder / "questions.txt")
    assert {row["media"] for row in questions} == {"clip.mp4", "movie.mp4"}
    assert all(row["subtitles"] == "movie.srt" for row in questions if row["media"] == "movie.mp4")


def test_sample_videos_decode_at_their_length(sample):
    from llamavid.data import decode_video

    folder, _ = sample
    clip = decode_video(folder / "clip.mp4", fps=1.0)
    movie = decode_video(folder / "movie.mp4", fps=1.0)
    assert 8 <= len(clip) <= 60 and clip.frames.shape[1:] == (256, 256, 3)
    assert len(movie) == 600


# A secret digit the committed tiny model is known to misread, mapped to its answer: the sample keeps printing the
# world's answer and this test pins the model's, so a change in either is seen. v5.1 and v5.2 read the sample
# movie's secret 6 as 8 (their miss on the digits 6 and 7); v5.3 reads it right (docs/tiny-model.md, "v5.3 on the
# sealed seed").
KNOWN_MISSES: dict[str, str] = {}


@pytest.mark.slow
def test_printed_example_commands_run_and_answer_as_expected(sample):
    """Every `llamavid ask` line the command prints runs as written and gives the expected answer (or, for the
    subtitle needle, the documented miss)."""
    folder, result = sample
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    asks = [line for line in lines if line.startswith("llamavid ask ")]
    assert len(asks) >= 2, result.stdout
    right = 0
    for line in asks:
        command, _, comment = line.partition("  # expected: ")
        assert comment, f"no expected answer printed for {line!r}"
        argv = shlex.split(command)
        assert "--temperature" in argv  # reproducible: greedy
        answer = llamavid(*argv[1:], "--quiet")
        assert answer.returncode == 0, answer.stderr
        expected, words = comment.strip().lower(), answer.stdout.lower().split()
        if "secret number" in command:
            assert KNOWN_MISSES.get(expected, expected) in words, (line, answer.stdout)
        else:
            assert expected in words, (line, answer.stdout)
        right += expected in words
    assert right >= len(asks) - 1


def test_sample_into_a_file_is_a_one_line_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    result = llamavid("sample", str(target))
    assert result.returncode == 2
    assert (
        result.stderr.startswith("llamavid sample: error:") and len(result.stderr.strip().splitlines()) == 1
    )


def test_demo_keeps_its_clip_where_it_says(tmp_path):
    result = llamavid("demo", "--out", str(tmp_path / "demo"), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    clip = Path(payload["path"])
    assert clip.parent == tmp_path / "demo" and clip.stat().st_size > 0
    assert payload["expected"] in payload["answer"].lower().split()


def test_demo_without_out_names_the_folder_it_keeps():
    result = llamavid("demo")
    assert result.returncode == 0, result.stderr
    printed = [word for line in result.stdout.splitlines() for word in line.split() if word.endswith(".mp4")]
    assert printed and Path(printed[0]).is_file(), result.stdout
    Path(printed[0]).unlink()
    Path(printed[0]).parent.rmdir()
