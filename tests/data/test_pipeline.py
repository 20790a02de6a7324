"""The ingestion pipeline: same features as the sequential loop, per-stage statistics, clean ends on errors and
interrupts, bounded memory. The model tests use the tiny seeded model's real `FrameEncoder`."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from media_factory import write_video

from llamavid.data import decode_video
from llamavid.data.errors import VideoDecodeError
from llamavid.data.feature_cache import FeatureCache
from llamavid.data.pipeline import STAGES, PipelineItem, run_pipeline


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("llamavid-") and t.is_alive()]


@pytest.fixture(scope="module")
def encoder():
    from llamavid.inference.media import FrameEncoder
    from llamavid.testing import build_tiny_model, tiny_processor

    model = build_tiny_model(seed=0)
    return FrameEncoder(model, tiny_processor(model.config))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """26 frames at 2 fps; with chunk_frames 8 and batch_size 3: chunks 8, 8, 8, 2 cut into batches 3, 3, 2."""
    return write_video(tmp_path_factory.mktemp("pipe") / "clip.mp4", rate=2, num_frames=26, size=(80, 64))


def test_pipelined_features_equal_the_sequential_loop(tmp_path: Path, clip: Path, encoder) -> None:
    threaded = FeatureCache(tmp_path / "threaded", chunk_frames=8, queue_depth=1)
    report = threaded.ingest(clip, encoder, fps=2, batch_size=3)
    inline = FeatureCache(tmp_path / "inline", chunk_frames=8, pipelined=False)
    reference = inline.ingest(clip, encoder, fps=2, batch_size=3)
    assert report.stages is not None and report.stages.threaded
    assert reference.stages is not None and not reference.stages.threaded

    # The plain loop the pipeline replaces: decode everything, encode each chunk in batches from its start.
    frames = decode_video(clip, fps=2)
    expected = np.concatenate(
        [
            encoder(frames.frames[start : min(start + 3, chunk + 8)]).numpy()
            for chunk in range(0, len(frames), 8)
            for start in range(chunk, min(chunk + 8, len(frames)), 3)
        ]
    )
    features = report.entry.load_features("np")
    assert features.shape == (26, 17, 32) and features.dtype == np.float16
    np.testing.assert_array_equal(features, expected)
    np.testing.assert_array_equal(features, reference.entry.load_features("np"))
    assert report.entry.meta["timestamps"] == frames.timestamps.tolist()
    chunk_files = sorted(p.name for p in report.entry.path.glob("chunk_*"))
    assert chunk_files == [f"chunk_{i:05d}.safetensors" for i in range(4)]
    for name in chunk_files:  # byte for byte: the same entry whichever way it was run
        assert (report.entry.path / name).read_bytes() == (reference.entry.path / name).read_bytes()


def test_stage_statistics(tmp_path: Path, clip: Path, encoder) -> None:
    report = FeatureCache(tmp_path, chunk_frames=8).ingest(clip, encoder, fps=2, batch_size=4)
    stats = report.stages
    assert stats is not None and list(stats.stages) == list(STAGES)
    assert all(stage.frames == 26 and stage.seconds > 0 for stage in stats.stages.values())
    assert stats.bound in STAGES and stats.frames == 26 and stats.wall_seconds > 0
    line = stats.describe()
    assert (
        line.startswith("decode ")
        and " f/s · preprocess " in line
        and line.endswith(f"— bound: {stats.bound}")
    )
    as_dict = stats.to_dict()
    assert as_dict["bound"] == stats.bound and as_dict["stages"]["encode"]["frames_per_second"] > 0
    again = FeatureCache(tmp_path, chunk_frames=8).ingest(clip, encoder, fps=2)
    assert again.hit and again.stages is None


def test_decoder_error_mid_stream_keeps_finished_chunks(
    tmp_path: Path, clip: Path, encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyAV skips damaged packets, so the failure is injected where the decoder reports one."""
    import llamavid.data.feature_cache as feature_cache

    real_iter = feature_cache.iter_video_frames

    def corrupt_after_two_pieces(path, **kwargs):
        for number, piece in enumerate(real_iter(path, **kwargs)):
            if number == 5:  # pieces of 4 frames: chunks 0 and 1 are complete, chunk 2 half decoded
                raise VideoDecodeError(f"{path}: invalid data in packet at 10.0 s", str(path))
            yield piece

    cache = FeatureCache(tmp_path, chunk_frames=8, queue_depth=1)
    with monkeypatch.context() as patch:
        patch.setattr(feature_cache, "iter_video_frames", corrupt_after_two_pieces)
        with pytest.raises(VideoDecodeError, match="clip.mp4: invalid data"):
            cache.ingest(clip, encoder, fps=2, batch_size=4)
    assert not _pipeline_threads()
    key = cache.make_key(clip, encoder, fps=2)
    path = cache.entry_path(key)
    assert not (path / "meta.json").exists() and not list(path.glob(".*.tmp"))  # nothing half-written
    assert cache.begin_entry(key) and [row["finished_chunks"] for row in cache.list_entries()] == [2]
    report = cache.ingest(clip, encoder, fps=2, batch_size=4)  # the file reads again: resume
    assert (report.reused_chunks, report.encoded_chunks) == (2, 2) and cache.verify(key).ok
    assert report.stages is not None and report.stages.stages["encode"].frames == 10


def test_encoder_error_is_raised_after_earlier_batches_are_written() -> None:
    written: list[int] = []

    def encode(value: int) -> int:
        if value == 3:
            raise RuntimeError("encoder broke on batch 3")
        return value

    batches = (PipelineItem(2, value) for value in range(10))
    with pytest.raises(RuntimeError, match="batch 3"):
        run_pipeline(batches, lambda v: v, encode, lambda item: written.append(item.data), depth=1)
    assert written == [0, 1, 2] and not _pipeline_threads()


def test_interrupt_in_the_writer_stops_every_stage() -> None:
    produced: list[int] = []

    def source():
        for value in range(10_000):
            produced.append(value)
            yield PipelineItem(1, value)

    def write(item: PipelineItem) -> None:
        if item.data == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(source(), lambda v: v, lambda v: v, write, depth=2)
    assert not _pipeline_threads() and len(produced) <= 2 + (3 * 2 + 4) + 1  # the decoder stopped, too


def test_queues_bound_the_frames_in_flight() -> None:
    """A fast decoder and a stalled encoder: the decoder must wait, not read the whole video ahead."""
    depth, batch = 1, 4
    bound = (3 * depth + 4) * batch
    produced, written, most_ahead = 0, 0, 0
    ahead = threading.Event()

    def source():
        nonlocal produced, most_ahead
        for _ in range(60):
            produced += batch
            most_ahead = max(most_ahead, produced - written)
            if produced - written > bound:
                ahead.set()  # only reachable when the queues do not hold the decoder back
            yield PipelineItem(batch, np.zeros((batch, 8, 8, 3), np.uint8))

    stalled = []

    def encode(frames: np.ndarray) -> np.ndarray:
        if not stalled:
            stalled.append(True)
            ahead.wait(timeout=1.0)  # stalls the first batch; with bounded queues nothing sets the event
        return frames

    def write(item: PipelineItem) -> None:
        nonlocal written
        written += item.frames

    stats = run_pipeline(source(), lambda f: f, encode, write, depth=depth)
    assert stats.frames == written == 240 and not ahead.is_set()
    assert most_ahead <= bound and 0 < stats.peak_frames_in_flight <= bound


def test_batches_follow_chunk_boundaries_and_picture_size_changes() -> None:
    """Chunks end every `chunk_frames` frames or where the size changes; batches restart at each chunk."""
    from llamavid.data import Frames
    from llamavid.data.feature_cache import _batched, _Decoded

    sizes = [(8, 8)] * 10 + [(6, 10)] * 7

    def pieces(piece: int):
        for start in range(0, len(sizes), piece):
            part = [s for s in sizes[start : start + piece] if s == sizes[start]]
            frames = np.stack([np.full((*sizes[start], 3), start + i, np.uint8) for i in range(len(part))])
            yield Frames(frames, np.arange(start, start + len(part), dtype=np.float64), 1.0, 17.0, "x")
            if len(part) < len(
                sizes[start : start + piece]
            ):  # the decoder cuts a piece where the size changes
                rest = sizes[start + len(part) : start + piece]
                frames = np.stack(
                    [np.full((*s, 3), start + len(part) + i, np.uint8) for i, s in enumerate(rest)]
                )
                times = np.arange(start + len(part), start + piece, dtype=np.float64)
                yield Frames(frames, times, 1.0, 17.0, "x")

    for piece in (1, 3, 4):
        decoded = _Decoded()
        got = [(index, len(times), last) for index, _, times, last in _batched(pieces(piece), 3, 4, decoded)]
        assert got == [
            (0, 3, False), (0, 1, True), (1, 3, False), (1, 1, True), (2, 2, True),
            (3, 3, False), (3, 1, True), (4, 3, True),
        ], piece  # fmt: skip
        assert decoded.frames == 17 and decoded.duration == 17.0


def test_interrupt_does_not_wait_for_a_long_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the encoder is inside a long batch returns at once; the batch finishes unwritten."""
    import time

    import llamavid.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_INTERRUPT_JOIN_SECONDS", 0.2)
    release, inside = threading.Event(), threading.Event()
    written: list[int] = []

    def encode(value: int) -> int:
        if value == 1:
            inside.set()
            release.wait(timeout=30)  # a batch that takes long (released by the test below)
        return value

    def write(item: PipelineItem) -> None:
        written.append(item.data)
        assert inside.wait(timeout=10)
        raise KeyboardInterrupt

    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline((PipelineItem(1, value) for value in range(5)), lambda v: v, encode, write, depth=1)
    assert time.perf_counter() - started < 10 and written == [0]
    release.set()
    for thread in _pipeline_threads():
        thread.join(timeout=10)
    assert not _pipeline_threads() and written == [0]


@pytest.mark.gpu
def test_on_cuda_pixels_are_pinned_and_a_float32_tower_runs_in_bf16(clip: Path, tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run `make test-gpu` on a GPU machine)")
    from llamavid.inference.media import FrameEncoder
    from llamavid.testing import build_tiny_model, tiny_processor

    model = build_tiny_model(seed=0)
    cpu = FrameEncoder(model, tiny_processor(model.config), encoder_id="tiny")
    frames = decode_video(clip, fps=2).frames[:8]
    reference = cpu(frames).float()
    gpu = FrameEncoder(build_tiny_model(seed=0).to("cuda"), tiny_processor(model.config), encoder_id="tiny")
    assert gpu.autocast_dtype in (torch.bfloat16, torch.float16) and gpu.preprocess(frames).is_pinned()
    features = gpu(frames)
    assert features.device.type == "cpu" and features.dtype == torch.float16
    similarity = torch.nn.functional.cosine_similarity(features.float().flatten(), reference.flatten(), dim=0)
    assert similarity > 0.99, f"bf16 features drifted from fp32 (cosine {similarity:.4f})"
    report = FeatureCache(tmp_path, chunk_frames=8).ingest(clip, gpu, fps=2, batch_size=4)
    assert report.stages is not None and report.stages.frames == 26
