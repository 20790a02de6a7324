"""Feature cache: keys, round trip, atomic/resumable writes, validation. Uses a fake numpy encoder (no model)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from media_factory import frame_index, write_video

from llamavid.data.feature_cache import (
    CacheEntryError,
    CacheWriteError,
    FeatureCache,
    file_sha256,
    preprocessing_id,
)


class FakeEncoder:
    """Deterministic features from pixels: row 0 ('CLS') = frame index, rows 1.. = mean colour; counts calls."""

    def __init__(
        self, encoder_id: str = "enc-a", preprocessing: str = "pre-a", fail_after: int | None = None
    ):
        self.encoder_id = encoder_id
        self.preprocessing_id = preprocessing
        self.fail_after = fail_after
        self.calls = 0
        self.frames_seen: list[int] = []

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        indices = [frame_index(f) for f in frames]
        self.frames_seen.extend(indices)
        out = np.zeros((len(frames), 3, 4), np.float32)
        out[:, 0, :] = np.asarray(indices)[:, None]
        out[:, 1:, :3] = frames.reshape(len(frames), -1, 3).mean(axis=1)[:, None, :] / 255
        return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s at 2 fps = 40 frames; with chunk_frames=8 that is 5 chunks."""
    return write_video(tmp_path_factory.mktemp("fc") / "clip.mp4", rate=2, num_frames=40, size=(64, 64))


def test_round_trip_and_hit(tmp_path: Path, clip: Path) -> None:
    cache = FeatureCache(tmp_path, chunk_frames=8)
    encoder = FakeEncoder()
    report = cache.ingest(clip, encoder, fps=2, batch_size=3)
    assert not report.hit and report.encoded_chunks == 5
    entry = report.entry
    assert entry.num_frames == 40 and entry.feature_shape == (3, 4)
    np.testing.assert_allclose(entry.timestamps, np.arange(40) / 2)
    features = entry.load_features("np")
    assert features.dtype == np.float16 and features.shape == (40, 3, 4)
    np.testing.assert_array_equal(features[:, 0, 0], np.arange(40))  # CLS row kept, frames in order
    meta = json.loads((entry.path / "meta.json").read_text())
    assert meta["complete"] and meta["source"]["sha256"] == file_sha256(clip)
    assert all(len(c["sha256"]) == 64 and c["bytes"] > 0 for c in meta["chunks"])
    assert not (entry.path / "progress.json").exists()

    again = FakeEncoder()
    second = cache.ingest(clip, again, fps=2)
    assert second.hit and again.calls == 0
    assert [row["num_frames"] for row in cache.list_entries()] == [40]


def test_streaming_chunks_are_bounded(tmp_path: Path, clip: Path) -> None:
    entry = FeatureCache(tmp_path, chunk_frames=8).ingest(clip, FakeEncoder(), fps=2).entry
    sizes = [len(chunk) for chunk in entry.iter_chunks(framework="np")]
    assert sizes == [8] * 5


@pytest.mark.parametrize(
    "change",
    [dict(fps=1), dict(encoder_id="enc-b"), dict(preprocessing="pre-b"), dict(max_frames=10)],
)
def test_stale_key_misses(tmp_path: Path, clip: Path, change: dict) -> None:
    cache = FeatureCache(tmp_path, chunk_frames=8)
    base = cache.make_key(clip, FakeEncoder(), fps=2)
    cache.ingest(clip, FakeEncoder(), fps=2)
    encoder = FakeEncoder(change.get("encoder_id", "enc-a"), change.get("preprocessing", "pre-a"))
    key = cache.make_key(clip, encoder, fps=change.get("fps", 2), max_frames=change.get("max_frames"))
    assert key.digest != base.digest
    entry, reason = cache.lookup(key)
    assert entry is None and "no entry" in reason
    report = cache.ingest(clip, encoder, fps=change.get("fps", 2), max_frames=change.get("max_frames"))
    assert not report.hit and encoder.calls > 0


def test_content_hash_not_name(tmp_path: Path, clip: Path) -> None:
    other = write_video(tmp_path / "clip.mp4", rate=2, num_frames=41, size=(64, 64))
    cache = FeatureCache(tmp_path / "cache")
    assert cache.make_key(clip, FakeEncoder()).digest != cache.make_key(other, FakeEncoder()).digest


def test_preprocessing_id_tracks_settings() -> None:
    class Proc:
        def __init__(self, size: int) -> None:
            self.size = size

        def to_dict(self) -> dict:
            return {"size": self.size}

    assert preprocessing_id(Proc(224)) == preprocessing_id(Proc(224)) != preprocessing_id(Proc(336))


def test_killed_ingestion_resumes(tmp_path: Path, clip: Path) -> None:
    cache = FeatureCache(tmp_path / "resumed", chunk_frames=8)
    dying = FakeEncoder(fail_after=2)  # batch_size 8 -> one call per chunk: dies while encoding chunk 3
    with pytest.raises(KeyboardInterrupt):
        cache.ingest(clip, dying, fps=2, batch_size=8)
    key = cache.make_key(clip, dying, fps=2)
    entry, reason = cache.lookup(key)
    assert entry is None and "unfinished ingestion" in reason
    assert any("finished_chunks" in row and row["finished_chunks"] == 2 for row in cache.list_entries())
    with pytest.raises(CacheEntryError, match="unfinished"):
        cache.open(key)

    rerun = FakeEncoder()
    report = cache.ingest(clip, rerun, fps=2, batch_size=8)
    assert (report.reused_chunks, report.encoded_chunks) == (2, 3)
    assert rerun.frames_seen == list(range(16, 40))  # only the remaining frames were encoded

    fresh = FeatureCache(tmp_path / "fresh", chunk_frames=8).ingest(clip, FakeEncoder(), fps=2).entry
    np.testing.assert_array_equal(report.entry.load_features("np"), fresh.load_features("np"))
    assert report.entry.meta["timestamps"] == fresh.meta["timestamps"]


def test_resume_reencodes_corrupted_finished_chunk(tmp_path: Path, clip: Path) -> None:
    cache = FeatureCache(tmp_path, chunk_frames=8)
    with pytest.raises(KeyboardInterrupt):
        cache.ingest(clip, FakeEncoder(fail_after=3), fps=2, batch_size=8)
    path = cache.entry_path(cache.make_key(clip, FakeEncoder(), fps=2))
    (path / "chunk_00001.safetensors").write_bytes(b"garbage")
    rerun = FakeEncoder()
    report = cache.ingest(clip, rerun, fps=2, batch_size=8)
    assert report.reused_chunks == 1 and rerun.frames_seen == list(range(8, 40))


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete", "incomplete", "garbled_meta"])
def test_corrupted_entry_is_rejected(tmp_path: Path, clip: Path, damage: str) -> None:
    cache = FeatureCache(tmp_path, chunk_frames=8)
    entry = cache.ingest(clip, FakeEncoder(), fps=2).entry
    chunk = entry.path / "chunk_00002.safetensors"
    meta_path = entry.path / "meta.json"
    if damage == "flip_byte":
        data = bytearray(chunk.read_bytes())
        data[-5] ^= 0xFF
        chunk.write_bytes(bytes(data))
        expected = "checksum"
    elif damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:-10])
        expected = "bytes"
    elif damage == "delete":
        chunk.unlink()
        expected = "missing"
    elif damage == "incomplete":
        meta = json.loads(meta_path.read_text())
        meta["complete"] = False
        meta_path.write_text(json.dumps(meta))
        expected = "incomplete"
    else:
        meta_path.write_text("{not json")
        expected = "cannot read"
    key = cache.make_key(clip, FakeEncoder(), fps=2)
    hit, reason = cache.lookup(key)
    assert hit is None and expected in reason
    with pytest.raises(CacheEntryError, match=expected):
        cache.open(key)
    # Re-ingesting repairs the entry: a bad chunk of a sound sidecar alone, else everything.
    encoder = FakeEncoder()
    repaired = cache.ingest(clip, encoder, fps=2)
    assert not repaired.hit and cache.open(key).num_frames == 40
    chunk_damage = damage in ("flip_byte", "truncate", "delete")
    assert repaired.encoded_chunks == (1 if chunk_damage else 5)
    assert encoder.frames_seen == (list(range(16, 24)) if chunk_damage else list(range(40)))


def test_corruption_after_open_is_caught_while_streaming(tmp_path: Path, clip: Path) -> None:
    cache = FeatureCache(tmp_path, chunk_frames=8)
    key = cache.make_key(clip, FakeEncoder(), fps=2)
    cache.ingest(clip, FakeEncoder(), fps=2)
    entry = cache.open(key, verify_checksums=False)
    chunk = entry.path / "chunk_00003.safetensors"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(CacheEntryError, match="chunk_00003"):
        list(entry.iter_chunks(framework="np"))


def test_subtitles_stored_and_aligned(tmp_path: Path, clip: Path) -> None:
    srt = tmp_path / "clip.srt"
    srt.write_text("1\n00:00:01,000 --> 00:00:02,200\nhello there\n\n2\n00:00:10,000 --> 00:00:11,000\nbye\n")
    cache = FeatureCache(tmp_path / "cache", chunk_frames=8)
    entry = cache.ingest(clip, FakeEncoder(), fps=2, subtitles=srt).entry
    texts = entry.frame_texts
    assert len(texts) == 40 and texts[4] == "hello there" and texts[21] == "bye"
    assert sum(bool(t) for t in texts) == 2
    assert entry.meta["subtitles"]["cues"][0]["text"] == "hello there"


def test_default_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMAVID_CACHE", str(tmp_path / "c"))
    assert FeatureCache().root == tmp_path / "c"


def test_module_does_not_import_the_model() -> None:
    import subprocess
    import sys

    code = "import sys, llamavid.data.feature_cache; print('llamavid.model' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("code", "needles"),
    [
        (
            errno.ENOSPC,
            ["no space left", "chunk_00002.safetensors", "bytes needed", "MiB more", "--cache-dir"],
        ),
        (errno.EROFS, ["cannot write", "chunk_00002.safetensors", "--cache-dir"]),
    ],
)
def test_write_failure_names_the_cache_and_keeps_finished_chunks(
    tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch, code: int, needles: list[str]
) -> None:
    import llamavid.data.feature_cache as feature_cache

    real_write = feature_cache.atomic_write_bytes

    def failing(path: Path, data: bytes) -> None:
        if path.name == "chunk_00002.safetensors":
            raise OSError(code, os.strerror(code))
        real_write(path, data)

    cache = FeatureCache(tmp_path, chunk_frames=8)
    with monkeypatch.context() as patch:
        patch.setattr(feature_cache, "atomic_write_bytes", failing)
        with pytest.raises(CacheWriteError) as caught:
            cache.ingest(clip, FakeEncoder(), fps=2)
    message = str(caught.value)
    assert isinstance(caught.value, OSError) and caught.value.errno == code
    assert message.startswith(f"feature cache {tmp_path}: ") and all(n in message for n in needles), message
    rerun = FakeEncoder()
    report = cache.ingest(clip, rerun, fps=2)
    assert (report.reused_chunks, report.encoded_chunks) == (2, 3) and rerun.frames_seen == list(
        range(16, 40)
    )


def _damage(path: Path, how: str) -> None:
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.unlink()


def test_verify_reports_every_bad_chunk(tmp_path: Path, clip: Path) -> None:
    cache = FeatureCache(tmp_path, chunk_frames=8)
    entry = cache.ingest(clip, FakeEncoder(), fps=2).entry
    assert cache.verify(entry.digest).ok
    _damage(entry.path / "chunk_00001.safetensors", "flip")
    _damage(entry.path / "chunk_00003.safetensors", "delete")
    cheap = cache.verify(entry.digest, checksums=False)
    assert [bad.index for bad in cheap.bad_chunks] == [3] and "missing" in cheap.bad_chunks[0].problem
    full = cache.verify(cache.make_key(clip, FakeEncoder(), fps=2))
    assert [(bad.index, bad.file) for bad in full.bad_chunks] == [
        (1, "chunk_00001.safetensors"),
        (3, "chunk_00003.safetensors"),
    ]
    assert "checksum" in full.bad_chunks[0].problem and full.repairable and not full.ok
    other_key = cache.make_key(clip, FakeEncoder("enc-b"), fps=2)
    assert cache.verify(other_key).problem is not None and not cache.verify(other_key).repairable
    states = {row["digest"]: row for row in cache.list_entries(checksums=True)}
    assert states[entry.digest]["state"] == "corrupted"
    assert states[entry.digest]["bad_chunks"] == ["chunk_00001.safetensors", "chunk_00003.safetensors"]
    assert cache.list_entries()[0]["bad_chunks"] == ["chunk_00003.safetensors"]  # sizes only


def test_ensure_reencodes_only_bad_chunks_and_decodes_no_further(
    tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llamavid.data.feature_cache as feature_cache

    srt = tmp_path / "clip.srt"
    srt.write_text("1\n00:00:01,000 --> 00:00:02,200\nhello there\n")
    cache = FeatureCache(tmp_path / "cache", chunk_frames=8)
    entry = cache.ingest(clip, FakeEncoder(), fps=2, subtitles=srt).entry
    reference = entry.load_features("np")
    _damage(entry.path / "chunk_00001.safetensors", "flip")
    _damage(entry.path / "chunk_00002.safetensors", "delete")
    decoded: list[int] = []
    real_iter = feature_cache.iter_video_frames

    def counting(*args, **kwargs):
        for frames in real_iter(*args, **kwargs):
            decoded.append(len(frames))
            yield frames

    monkeypatch.setattr(feature_cache, "iter_video_frames", counting)
    encoder = FakeEncoder()
    report = cache.ensure(clip, encoder, fps=2, batch_size=8)
    assert not report.hit and (report.encoded_chunks, report.reused_chunks) == (2, 3)
    assert encoder.frames_seen == list(range(8, 24)) and decoded == [8, 8, 8]  # chunks 3 and 4 not decoded
    assert "2 bad chunk(s)" in report.miss_reason
    assert cache.verify(entry.digest).ok and report.entry.frame_texts[4] == "hello there"
    np.testing.assert_array_equal(cache.open(entry.digest).load_features("np"), reference)
    again = FakeEncoder()
    assert cache.ensure(clip, again, fps=2).hit and again.calls == 0


def test_interrupted_repair_leaves_a_valid_entry_and_carries_on(tmp_path: Path, clip: Path) -> None:
    cache = FeatureCache(tmp_path, chunk_frames=8)
    entry = cache.ingest(clip, FakeEncoder(), fps=2).entry
    _damage(entry.path / "chunk_00000.safetensors", "flip")
    _damage(entry.path / "chunk_00004.safetensors", "flip")
    with pytest.raises(KeyboardInterrupt):
        cache.ensure(clip, FakeEncoder(fail_after=1), fps=2, batch_size=8)
    assert [bad.index for bad in cache.verify(entry.digest).bad_chunks] == [4]
    rerun = FakeEncoder()
    report = cache.ensure(clip, rerun, fps=2, batch_size=8)
    assert report.encoded_chunks == 1 and rerun.frames_seen == list(range(32, 40))
    assert cache.verify(entry.digest).ok


def test_public_write_steps_make_an_entry_readers_accept(tmp_path: Path, clip: Path) -> None:
    """begin_entry → write_chunk → write_progress → finish_entry, as Ray actors and live sessions write."""
    from llamavid.errors import InvalidInputError

    cache = FeatureCache(tmp_path, chunk_frames=8)
    key = cache.make_key(clip, FakeEncoder(), fps=2)
    assert cache.begin_entry(key) == []
    source = {"path": str(clip), "sha256": key.video_sha256, "bytes": clip.stat().st_size}
    features = np.arange(10 * 3 * 4, dtype=np.float32).reshape(10, 3, 4)
    first = cache.write_chunk(key, 0, features[:6], np.arange(6) / 2)
    cache.write_progress(key, source, [first])
    assert cache.lookup(key)[0] is None and cache.begin_entry(key) == [first]  # unfinished, resumable
    second = cache.write_chunk(key.digest, 1, features[6:], np.arange(6, 10) / 2)
    entry = cache.finish_entry(key, source, [first, second], duration=20.0)
    opened = cache.open(key)
    assert opened.num_frames == entry.num_frames == 10 and not (entry.path / "progress.json").exists()
    np.testing.assert_array_equal(opened.load_features("np"), features.astype(np.float16))
    assert cache.read_sidecar(key) == opened.meta and "timestamps" not in opened.meta["chunks"][0]
    cache.write_sidecar(key.digest, {**opened.meta, "subtitles": None, "note": "kept"})
    assert cache.read_sidecar(key.digest)["note"] == "kept" and cache.verify(key).ok
    with pytest.raises(InvalidInputError, match="one feature row per timestamp"):
        cache.write_chunk(key, 2, features[:3], np.arange(4))
    with pytest.raises(CacheEntryError, match="cannot read"):
        cache.read_sidecar("no-such-entry")
