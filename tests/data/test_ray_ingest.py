"""Corpus ingestion on a local Ray cluster (started here, 2 CPUs): same entries as one process; a killed encoder
worker loses nothing (the rerun completes and every entry verifies). Both tests share one cluster to keep the
start-up cost (Ray, then torch in each actor) to one round."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from media_factory import write_video

from llamavid.cli.main import main as cli_main
from llamavid.data.feature_cache import FeatureCache
from llamavid.inference.corpus import ingest_corpus, read_manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("corpus")
    return [
        write_video(folder / f"clip{i}.mp4", rate=4, num_frames=8 + 4 * i, size=(48, 32)) for i in range(6)
    ]


@pytest.fixture(scope="module")
def reference(corpus: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Entries written by single-process ingest (Engine.ingest, video by video)."""
    root = tmp_path_factory.mktemp("cache_one")
    report = ingest_corpus(corpus, cache_dir=root)
    assert not report.failed and len(report.completed) == 6
    return root


@pytest.fixture(scope="module")
def local_ray() -> Any:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _entries(root: Path) -> dict[str, dict[str, Any]]:
    """Per entry: the sidecar without its creation time, and the bytes of every chunk file."""
    found = {}
    for entry in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = json.loads((entry / "meta.json").read_text())
        meta.pop("created")
        chunks = {p.name: p.read_bytes() for p in sorted(entry.glob("chunk_*.safetensors"))}
        found[entry.name] = {"meta": meta, "chunks": chunks}
    return found


def test_manifest_in_one_process_reports_failures_and_retries_them(
    corpus: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    manifest = tmp_path / "list.txt"
    manifest.write_text(f'{corpus[0]}\n\n# comment\nmissing.mp4\n{{"video": "{corpus[1]}"}}\n')
    assert read_manifest(manifest) == [str(corpus[0]), str(tmp_path / "missing.mp4"), str(corpus[1])]
    assert cli_main(["ingest", "--manifest", str(manifest), "--cache-dir", str(cache), "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["completed"], result["failed"]) == (2, 1)
    summary = json.loads((cache / "ingest-summary.json").read_text())
    assert summary["failed"][0]["video"] == str(tmp_path / "missing.mp4")
    assert "file not found" in summary["failed"][0]["message"]
    # --retry-failed reruns only the failed video; once it exists it is ingested.
    (tmp_path / "missing.mp4").write_bytes(corpus[2].read_bytes())
    assert cli_main(["ingest", "--manifest", str(manifest), "--cache-dir", str(cache), "--retry-failed",
                     "--json", "-q"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["videos"], result["completed"], result["failed"]) == (1, 1, 0)
    assert cli_main(["ingest", "--manifest", str(tmp_path / "nope.txt"), "--cache-dir", str(cache)]) == 2
    assert "cannot read the manifest" in capsys.readouterr().err


def _all_verify(root: Path, digests: list[str]) -> bool:
    cache = FeatureCache(root)
    return all(cache.verify(digest, checksums=True).ok for digest in digests)


@pytest.mark.timeout(240)
def test_ray_ingest_matches_single_process(
    corpus: list[Path], reference: Path, local_ray: Any, tmp_path: Path
) -> None:
    report = ingest_corpus(corpus, cache_dir=tmp_path / "cache", ray_address="auto", encoders=2)
    assert not report.failed and {row["status"] for row in report.completed} == {"encoded"}
    assert _entries(tmp_path / "cache") == _entries(reference)
    summary = json.loads((tmp_path / "cache" / "ingest-summary.json").read_text())
    assert summary["mode"] == "ray" and len(summary["completed"]) == 6 and summary["failed"] == []
    # A rerun skips every complete entry.
    again = ingest_corpus(corpus, cache_dir=tmp_path / "cache", ray_address="auto", encoders=2)
    assert {row["status"] for row in again.completed} == {"cached"} and again.frames_encoded == 0


@pytest.mark.timeout(240)
def test_killed_worker_then_rerun_completes_and_verifies(
    corpus: list[Path], reference: Path, local_ray: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    broken = tmp_path / "not_a_video.mp4"
    broken.write_bytes(b"this is not a video file")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join([str(p) for p in corpus] + ["# a comment", "not_a_video.mp4"]) + "\n")
    killed: list[int] = []

    def kill_first_worker(event: dict[str, Any]) -> None:
        if event["status"] == "chunk" and not killed:
            killed.append(event["worker"])
            os.kill(event["worker"], signal.SIGKILL)

    first = ingest_corpus(
        [*corpus, broken], cache_dir=cache, ray_address="auto", encoders=2, progress=kill_first_worker
    )
    assert killed
    assert str(broken) in {row["video"] for row in first.failed}  # a bad video is reported, not fatal
    # The rerun goes through the command line: failures only are retried, every entry then verifies.
    code = cli_main(["ingest", "--manifest", str(manifest), "--ray", "auto", "--cache-dir", str(cache),
                     "--retry-failed", "--json", "-q"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["failed"] == 1  # the broken file, still
    summary = json.loads((cache / "ingest-summary.json").read_text())
    assert [row["video"] for row in summary["failed"]] == [str(broken)]
    assert summary["failed"][0]["error"] in ("VideoDecodeError", "MediaError")
    reference_entries = _entries(reference)
    assert _all_verify(cache, list(reference_entries))
    assert _entries(cache) == reference_entries
