"""``llamavid serve --backend vllm``: finding vLLM's Python and mapping our flags, without starting vLLM.

The server itself, started through this command, is tested in tests/serve/test_vllm_server.py (.venv-vllm).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llamavid.cli import CommandError
from llamavid.cli.main import build_parser, main
from llamavid.cli.serve import find_vllm_python, vllm_command


def _args(*flags: str):
    return build_parser().parse_args(["serve", "--backend", "vllm", *flags])


def test_flags_map_to_vllms(tmp_path: Path):
    args = _args(
        "--host", "0.0.0.0", "--port", "9000", "--api-key", "k", "--dtype", "float32", "--fps", "2",
        "--max-fps", "4", "--max-frames", "64", "--allowed-root", str(tmp_path), "--max-batch-size", "3",
        "--cache-dir", str(tmp_path / "cache"), "--vllm-args", "--max-model-len 1024 --enforce-eager",
    )  # fmt: skip
    command, env = vllm_command(args, Path("/py"))
    assert command[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert [value(flag) for flag in ("--host", "--port", "--api-key", "--dtype")] == [
        "0.0.0.0",
        "9000",
        "k",
        "float32",
    ]
    assert value("--allowed-local-media-path") == str(tmp_path.resolve())
    assert value("--max-num-seqs") == "3"
    assert json.loads(value("--mm-processor-kwargs")) == {
        "fps": 2.0,
        "max_fps": 4.0,
        "max_frames": 64,
    }
    assert json.loads(value("--media-io-kwargs")) == {"video": {"video_backend": "llamavid"}}
    assert "--trust-request-mm-kwargs" in command
    assert command[-3:] == ["--max-model-len", "1024", "--enforce-eager"]
    assert env["LLAMAVID_CACHE"] == str((tmp_path / "cache").resolve())
    model = Path(value("--model"))
    assert (model / "config.json").is_file()  # the embedded tiny model by default
    served = command.index("--served-model-name")
    assert command[served + 1 : served + 3] == [model.name, str(model)]


def test_two_allowed_roots_are_refused(tmp_path: Path):
    with pytest.raises(CommandError, match="one --allowed-root"):
        vllm_command(_args("--allowed-root", str(tmp_path), "--allowed-root", str(tmp_path)), Path("/py"))


def test_a_python_without_vllm_says_how_to_build_one(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("LLAMAVID_VLLM_PYTHON", raising=False)
    with pytest.raises(CommandError, match="no vLLM; build one with `make vllm-venv`"):
        find_vllm_python(Path(sys.executable))  # the test venv has llamavid but no vLLM
    with pytest.raises(CommandError, match="no such file; build one with `make vllm-venv`"):
        find_vllm_python(tmp_path / "missing" / "python")
    monkeypatch.setenv("LLAMAVID_VLLM_PYTHON", str(tmp_path / "nope"))
    assert main(["serve", "--backend", "vllm"]) == 2  # one-line error, no traceback
