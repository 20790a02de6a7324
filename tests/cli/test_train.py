"""``llamavid train``: help text, config errors as one line, bad data naming the record, a tiny real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamavid.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"


def test_help_lists_usage_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "CONFIG",
        "KEY=VALUE",
        "--resume",
        "tiny_debug",
        "torchrun",
        "optim.lr=",
        "loss_curve.png",
    ):
        assert needle in text


def test_config_errors_are_one_line(capsys):
    assert main(["train", "tiny_debug", "optim.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.learning_rate'" in err and "Traceback" not in err
    assert main(["train", "no_such_config"]) == 2
    assert "packaged config" in capsys.readouterr().err


def test_bad_data_names_the_record(tmp_path, capsys):
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"id": "q1", "conversations": [{"from": "human", "value": "hi"}]}]))
    code = main(
        [
            "train",
            "tiny_debug",
            f"train.output_dir={tmp_path / 'out'}",
            "data.synth={}",
            f"data.train_files=[{data}]",
        ]
    )
    assert code == 2
    assert "bad.json[0] (id='q1')" in capsys.readouterr().err


def test_tiny_debug_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        "-m",
        "llamavid.cli.main",
        "train",
        "tiny_debug",
        f"train.output_dir={out}",
        "train.max_steps=2",
        "train.save_steps=1",
        "train.per_device_batch_size=2",
        "data.synth.n=8",
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "trained 2 steps" in completed.stdout
    assert (out / "latest").read_text().strip() == "step_0000002"
    assert (out / "final" / "model.safetensors").is_file() and (out / "loss_curve.png").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (b"[" * 100_000 + b"]" * 100_000, ["nested", "levels"]),
        ('[{"id": "caf\u00e9", "conversations": []}]'.encode("latin-1"), ["UTF-8", "line 1"]),
        (b"[]", ["no records"]),
    ],
    ids=["deep", "latin1", "empty"],
)
def test_unusable_training_json_names_the_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    content: bytes,
    needles: list[str],
) -> None:
    data = tmp_path / "records.json"
    data.write_bytes(content)
    out = tmp_path / "out"
    args = ["train", "tiny_debug", f"train.output_dir={out}", "data.synth={}", f"data.train_files=[{data}]"]
    with caplog.at_level("INFO", logger="llamavid"):
        assert main(args) == 2
    assert not any("trainable" in record.getMessage() for record in caplog.records)  # no model was built
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-2000:]
    assert lines[0].startswith("llamavid train: error: ") and str(data) in lines[0], lines[0]
    assert all(needle in lines[0] for needle in needles), lines[0]
