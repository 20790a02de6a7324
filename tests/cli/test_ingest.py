"""``llamavid ingest``: exit codes, one-line errors, --json and --info, with a tiny seeded checkpoint on disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from media_factory import write_audio_only, write_video  # noqa: E402

from llamavid.cli.main import main  # noqa: E402


def _root_conftest():
    """tests/conftest.py as a module (a bare ``import conftest`` may resolve to tests/data/conftest.py)."""
    import importlib.util

    name = "_llamavid_tests_root_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "conftest.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


build_tiny_model = _root_conftest().build_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaTokenizer

    from llamavid import LlamaVidProcessor
    from llamavid.assets import DEMO_TOKENIZER_DIR

    folder = tmp_path_factory.mktemp("tiny_model")
    model = build_tiny_model(seed=0)
    model.save_pretrained(folder)
    LlamaVidProcessor.from_config(
        model.config, LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ingest_media")
    good = write_video(folder / "good.mp4", rate=2, num_frames=20, size=(64, 64))
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    srt = folder / "good.srt"
    srt.write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n")
    bad_srt = folder / "bad.srt"
    bad_srt.write_text("1\nnot a timestamp line\nhello\n")
    return {
        "good": good,
        "truncated": truncated,
        "empty": empty,
        "audio": write_audio_only(folder / "audio.wav"),
        "srt": srt,
        "bad_srt": bad_srt,
        "dir": folder,
        "missing": folder / "missing.mp4",
    }


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "llamavid.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_ingest_json_then_hit_then_info(tmp_path: Path, model_dir: Path, media: dict[str, Path]) -> None:
    cache = str(tmp_path / "cache")
    args = ["ingest", str(media["good"]), "--model", str(model_dir), "--fps", "2", "--cache-dir", cache]
    first = run_cli(*args, "--subtitles", str(media["srt"]), "--json", "--batch-size", "7")
    assert first.returncode == 0, first.stderr
    payload = json.loads(first.stdout)
    assert payload["frames"] == 20 and payload["visual_tokens"] == 40 and not payload["cache_hit"]
    assert payload["feature_shape"] == [17, 32] and payload["subtitled_frames"] == 1
    stages = payload["stages"]
    assert [stage["frames"] for stage in stages["stages"].values()] == [20] * 4
    assert stages["bound"] in stages["stages"] and stages["threaded"]

    second = run_cli(*args, "--json")
    assert second.returncode == 0 and json.loads(second.stdout)["cache_hit"] is True
    assert json.loads(second.stdout)["stages"] is None

    info = run_cli("ingest", "--info", "--json", "--cache-dir", cache)
    entries = json.loads(info.stdout)["entries"]
    assert info.returncode == 0 and [e["num_frames"] for e in entries] == [20]


def test_missing_file_subprocess(tmp_path: Path, model_dir: Path, media: dict[str, Path]) -> None:
    result = run_cli("ingest", str(media["missing"]), "--model", str(model_dir), "--cache-dir", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.mp4" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("video", "subtitles", "needle"),
    [
        ("missing", None, "missing.mp4"),
        ("dir", None, "ingest_media"),
        ("empty", None, "empty.mp4"),
        ("truncated", None, "truncated.mp4"),
        ("audio", None, "audio.wav"),
        ("good", "bad_srt", "bad.srt"),
    ],
)
def test_bad_inputs_one_line_exit_2(
    tmp_path: Path,
    model_dir: Path,
    media: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    video: str,
    subtitles: str | None,
    needle: str,
) -> None:
    cache = tmp_path / "cache"
    args = ["ingest", str(media[video]), "--model", str(model_dir), "--cache-dir", str(cache)]
    if subtitles:
        args += ["--subtitles", str(media[subtitles])]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and needle in err[0], err
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written


def test_ingest_uses_the_embedded_model_by_default(
    tmp_path: Path, media: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from llamavid.inference.loading import default_model_path

    assert default_model_path() is not None  # the package ships the tiny model
    code = main(["ingest", str(media["good"]), "--cache-dir", str(tmp_path), "--json", "--quiet"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["frames"] > 0 and not result["cache_hit"]
    # `ask` with default flags finds what `ingest` with default flags wrote.
    capsys.readouterr()
    code = main(["-v", "ask", str(media["good"]), "what?", "--cache-dir", str(tmp_path), "--json", "-q"])
    assert code == 0 and json.loads(capsys.readouterr().out)["feature_cache"] == result["digest"]


def test_ingest_prints_frames_per_second_of_each_stage(
    tmp_path: Path, media: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", str(media["good"]), "--cache-dir", str(tmp_path), "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("cached: ")
    assert re.fullmatch(
        r"decode [\d.]+ f/s · preprocess [\d.]+ f/s · encode [\d.]+ f/s · write [\d.]+ f/s — bound: "
        r"(decode|preprocess|encode|write)",
        lines[-1],
    ), lines


def test_info_on_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--info", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "0 entries" in capsys.readouterr().out


def test_ingest_trimmed_clip_with_late_subtitles_continues_without_them(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    srt = tmp_path / "film.srt"
    srt.write_text("1\n00:01:00,000 --> 00:01:02,000\nlater\n\n2\n00:02:00,000 --> 00:02:01,000\nend\n")
    cache = tmp_path / "cache"
    result = run_cli(
        "ingest",
        str(media["good"]),
        "--fps",
        "2",
        "--cache-dir",
        str(cache),
        "--subtitles",
        str(srt),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert "film.srt" in result.stderr and "2 of the 2 subtitle cues" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["subtitled_frames"] == 0


@pytest.fixture(scope="module")
def two_chunk_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 frames at 4 fps: two feature-cache chunks (64 + 8 frames) when ingested with --fps 4."""
    folder = tmp_path_factory.mktemp("two_chunks")
    return write_video(folder / "long.mp4", rate=4, num_frames=72, size=(64, 64))


def test_full_disk_is_one_line_keeps_finished_chunks_and_resumes(
    tmp_path: Path, two_chunk_video: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    import llamavid.data.feature_cache as feature_cache

    real_write = feature_cache.atomic_write_bytes

    def disk_full_after_first_chunk(path: Path, data: bytes) -> None:
        if path.name.startswith("chunk_") and path.name != "chunk_00000.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    cache = tmp_path / "cache"
    args = ["ingest", str(two_chunk_video), "--fps", "4", "--cache-dir", str(cache), "--json", "-q"]
    with monkeypatch.context() as patch:
        patch.setattr(feature_cache, "atomic_write_bytes", disk_full_after_first_chunk)
        assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err and not captured.out, captured.err
    message = lines[0]
    assert message.startswith("llamavid ingest: error: ") and str(cache) in message
    assert "no space left" in message.lower() and "bytes" in message
    assert "free" in message and "--cache-dir" in message and "resume" in message
    (entry,) = list(cache.iterdir())
    progress = json.loads((entry / "progress.json").read_text())
    assert [chunk["file"] for chunk in progress["chunks"]] == ["chunk_00000.safetensors"]
    assert not (entry / "meta.json").exists() and not list(entry.glob(".*.tmp"))

    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["frames"], result["reused_chunks"], result["encoded_chunks"]) == (72, 1, 1)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _info(cache: Path, *flags: str, capsys: pytest.CaptureFixture[str]) -> tuple[list[dict], str]:
    assert main(["ingest", "--info", "--cache-dir", str(cache), "--json", *flags]) == 0
    rows = json.loads(capsys.readouterr().out)["entries"]
    assert main(["ingest", "--info", "--cache-dir", str(cache), *flags]) == 0
    return rows, capsys.readouterr().out


def test_corrupted_chunk_is_listed_and_reingest_repairs_only_it(
    tmp_path: Path, two_chunk_video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    args = ["ingest", str(two_chunk_video), "--fps", "4", "--cache-dir", str(cache), "--json", "-q"]
    assert main(args) == 0
    entry = Path(json.loads(capsys.readouterr().out)["entry"])
    first, second = entry / "chunk_00000.safetensors", entry / "chunk_00001.safetensors"
    untouched = first.stat()

    second.write_bytes(second.read_bytes()[:-3])  # truncated: the cheap size check sees it
    rows, text = _info(cache, capsys=capsys)
    assert rows[0]["state"] == "corrupted" and rows[0]["bad_chunks"] == ["chunk_00001.safetensors"]
    assert "corrupted" in text and "chunk_00001" in text and "llamavid ingest" in text

    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["cache_hit"], report["reused_chunks"], report["encoded_chunks"]) == (False, 1, 1)
    assert first.stat().st_mtime_ns == untouched.st_mtime_ns and first.stat().st_ino == untouched.st_ino

    _flip_last_byte(second)  # same size: only the checksums of --verify see it
    assert _info(cache, capsys=capsys)[0][0]["state"] == "complete"
    rows, text = _info(cache, "--verify", capsys=capsys)
    assert rows[0]["state"] == "corrupted" and "checksum" in text

    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["reused_chunks"], report["encoded_chunks"], report["frames"]) == (1, 1, 72)
    assert _info(cache, "--verify", capsys=capsys)[0][0]["state"] == "complete"
    assert first.stat().st_ino == untouched.st_ino


def test_ask_reencodes_a_corrupted_chunk(
    tmp_path: Path, two_chunk_video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    assert (
        main(["ingest", str(two_chunk_video), "--fps", "4", "--cache-dir", str(cache), "--json", "-q"]) == 0
    )
    entry = Path(json.loads(capsys.readouterr().out)["entry"])
    _flip_last_byte(entry / "chunk_00000.safetensors")
    ask = ["ask", str(two_chunk_video), "what?", "--fps", "4", "--cache-dir", str(cache), "--json", "-q"]
    code = main([*ask, "--max-new-tokens", "2", "--temperature", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["feature_cache"] == entry.name
    assert _info(cache, "--verify", capsys=capsys)[0][0]["state"] == "complete"


CHINESE_CUES = [
    "你好，世界！今天天气很好。",
    "我们去公园散步吧。",
    "这部电影讲的是一个小女孩和她的狗。",
    "他们一起走过了很多地方，看到了很多风景。",
]


def _chinese_srt(cues: list[str]) -> str:
    return "".join(
        f"{i + 1}\n00:00:0{i + 1},000 --> 00:00:0{i + 1},900\n{text}\n\n" for i, text in enumerate(cues)
    )


def test_ingest_reads_gb2312_subtitles_or_asks_for_their_encoding(
    tmp_path: Path, media: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    args = ["ingest", str(media["good"]), "--fps", "2", "--cache-dir", str(cache), "--json", "-q"]
    detected = tmp_path / "film.zh.srt"
    detected.write_bytes(_chinese_srt(CHINESE_CUES).encode("gb2312"))
    assert main([*args, "--subtitles", str(detected)]) == 0
    entry = Path(json.loads(capsys.readouterr().out)["entry"])
    stored = json.loads((entry / "meta.json").read_text(encoding="utf-8"))["subtitles"]
    assert [cue["text"] for cue in stored["cues"]] == CHINESE_CUES

    # Two characters cannot tell GB2312 from EUC-KR or EUC-JP: refuse, naming the file and the flag.
    short = tmp_path / "short.srt"
    short.write_bytes(_chinese_srt(["你好", "再见"]).encode("gb2312"))
    assert main([*args, "--subtitles", str(short)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "short.srt" in lines[0] and "--subtitle-encoding" in lines[0], lines
    assert main([*args, "--subtitles", str(short), "--subtitle-encoding", "gb2312"]) == 0
    capsys.readouterr()
    stored = json.loads((entry / "meta.json").read_text(encoding="utf-8"))["subtitles"]
    assert [cue["text"] for cue in stored["cues"]] == ["你好", "再见"]


def test_subtitle_encoding_needs_subtitles(
    media: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", str(media["good"]), "--subtitle-encoding", "gb2312"]) == 2
    assert "--subtitle-encoding needs --subtitles" in capsys.readouterr().err
