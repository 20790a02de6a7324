"""Bugs the fuzz corpus (benchmarks/fuzz_media.py, tests/security/test_fuzz_media.py) found, each as the user step.

``llamavid train`` runs in-process through its console entry point (`llamavid.cli.main.main`): one line on stderr,
exit code 2, naming the training file, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamavid.cli.main import main


def _train(tmp_path: Path, records: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    code = main(["train", "tiny_debug", f"data.train_files=[{data}]", f"train.output_dir={tmp_path / 'run'}"])
    return code, capsys.readouterr().err


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_train_refuses_a_lone_surrogate_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # JSON may spell half a UTF-16 pair ("\ud800"); Python keeps it as a lone surrogate no tokenizer accepts.
    code, err = _train(tmp_path, [{"id": "s", "conversations": _turns("hi \ud800", "ok")}], capsys)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "train.json[0] (id='s')" in err and "surrogate" in err


def test_train_refuses_an_overlong_media_path_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [{"id": "long", "image": "x" * 5000 + ".png", "conversations": _turns("<image>\nWhat?", "A.")}]
    code, err = _train(tmp_path, records, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "train.json[0] (id='long')" in err
    assert len(err) < 1000  # the 5000-character name is shortened


def test_ask_names_the_subtitles_that_overflow_the_context(
    tmp_path: Path, demo_video_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fuzz corpus's 40000-cue file: every cue falls inside the 4-s clip, so all of it enters the prompt.
    cues = "".join(
        f"{n + 1}\n00:00:0{n % 4},000 --> 00:00:0{n % 4},500\nline {n} of a very long subtitle file\n\n"
        for n in range(3000)
    )
    subtitles = tmp_path / "huge.srt"
    subtitles.write_text(cues, encoding="utf-8")
    arguments = ["ask", str(demo_video_path), "What happens?", "--subtitles", str(subtitles)]
    code = main([*arguments, "--max-new-tokens", "2", "--cache-dir", str(tmp_path / "cache"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "model's context" in err and str(subtitles) in err and demo_video_path.name in err
