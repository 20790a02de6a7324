"""Tests for llamavid.data.video: sampling exactness, odd inputs, both backends, streaming memory."""

from __future__ import annotations

import io
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from media_factory import (
    frame_index,
    index_colour,
    require_encoder,
    require_module,
    write_audio_only,
    write_video,
)
from PIL import Image

from llamavid.data import video as video_module
from llamavid.data.errors import BackendUnavailableError, MediaError, NoVideoStreamError, VideoDecodeError
from llamavid.data.video import (
    decode_video,
    inspect_video,
    iter_video_frames,
    load_image,
    load_image_folder,
    load_media,
    probe_video,
)


def indices(frames: np.ndarray) -> list[int]:
    return [frame_index(frame) for frame in frames]


# --- sampling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "expected_times", "expected_indices"),
    [
        (
            "h264_2fps.mp4",
            {"rate": 2, "num_frames": 20},
            [float(t) for t in range(10)],
            list(range(0, 20, 2)),
        ),
        ("mpeg4_25fps.mkv", {"codec": "mpeg4", "rate": 25, "num_frames": 75}, [0.0, 1.0, 2.0], [0, 25, 50]),
        (
            "ntsc.mp4",
            {"rate": Fraction(30000, 1001), "num_frames": 95},
            [0.0, 1.001, 2.002, 3.003],
            [0, 30, 60, 90],
        ),
        ("hfr_120.mp4", {"rate": 120, "num_frames": 300}, [0.0, 1.0, 2.0], [0, 120, 240]),
        ("vp9.webm", {"codec": "libvpx-vp9", "rate": 2, "num_frames": 6}, [0.0, 1.0, 2.0], [0, 2, 4]),
    ],
)
def test_one_fps_picks_first_frame_at_or_after_each_second(
    media_dir: Path, name: str, kwargs: dict, expected_times: list[float], expected_indices: list[int]
) -> None:
    options = {"deadline": "realtime", "cpu-used": "8"} if kwargs.get("codec") == "libvpx-vp9" else None
    if kwargs.get("codec") == "mpeg4":
        options = {"qscale": "2"}
    path = write_video(media_dir / name, options=options, **kwargs)
    frames = decode_video(path)
    np.testing.assert_allclose(frames.timestamps, expected_times, atol=1e-6)
    assert indices(frames.frames) == expected_indices
    assert frames.frames.dtype == np.uint8 and frames.frames.shape[1:] == (32, 32, 3)
    assert frames.fps == 1.0


def test_pixels_match_source_colour(h264_mp4: Path) -> None:
    frames = decode_video(h264_mp4, fps=2.0)
    for i, frame in enumerate(frames.frames):
        assert np.abs(frame.astype(int) - index_colour(i)).max() <= 6


def test_variable_frame_rate_uses_real_timestamps(media_dir: Path) -> None:
    pts = [0, 100, 900, 1000, 1500, 3100, 3200, 4000]  # ms; a gap from 1.5 s to 3.1 s
    path = write_video(media_dir / "vfr.mkv", rate=1000, time_base=Fraction(1, 1000), pts=pts, num_frames=8)
    frames = decode_video(path)
    # Target 2 s and 3 s both fall in the gap: frame 5 (3.1 s) is kept once, not duplicated.
    np.testing.assert_allclose(frames.timestamps, [0.0, 1.0, 3.1, 4.0])
    assert indices(frames.frames) == [0, 3, 5, 7]


def test_uniform_and_max_frames(media_dir: Path) -> None:
    path = write_video(media_dir / "uniform_10fps.mp4", rate=10, num_frames=100)
    uniform = decode_video(path, num_frames=4)
    np.testing.assert_allclose(uniform.timestamps, [0.0, 2.5, 5.0, 7.5])
    assert uniform.fps is None
    # 10 frames at 1 fps exceed the cap of 5: sample 5 uniformly over the whole video instead of cutting it.
    capped = decode_video(path, max_frames=5)
    np.testing.assert_allclose(capped.timestamps, [0.0, 2.0, 4.0, 6.0, 8.0])
    assert len(decode_video(path, num_frames=1000)) == 100  # each decoded frame at most once


def test_sparse_sampling_seeks_but_matches_sequential_decode(
    media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_video(
        media_dir / "gop.mkv", rate=10, num_frames=600, options={"g": "10", "keyint_min": "10"}
    )
    seeks: list[float] = []
    real_seek = video_module._seek_before
    monkeypatch.setattr(
        video_module,
        "_seek_before",
        lambda opened, target, last: seeks.append(target) or real_seek(opened, target, last),
    )
    seeking = decode_video(path, num_frames=5, workers=1)
    assert seeks == [12.0, 24.0, 36.0, 48.0]  # 1 s keyframe interval: each 12 s gap is skipped by a seek
    parallel = decode_video(path, num_frames=5, workers=2)  # segments without a sample are never read
    np.testing.assert_array_equal(parallel.frames, seeking.frames)
    with open(path, "rb") as handle:
        sequential = decode_video(_NonSeekable(handle.read()), num_frames=5)
    np.testing.assert_allclose(seeking.timestamps, [0.0, 12.0, 24.0, 36.0, 48.0])
    np.testing.assert_array_equal(seeking.timestamps, sequential.timestamps)
    assert indices(seeking.frames) == indices(sequential.frames) == [0, 120, 240, 360, 480]


@pytest.mark.parametrize("fps", [1.0, 3.0])
def test_gop_skipping_keeps_exact_frames_with_b_frames(media_dir: Path, fps: float) -> None:
    # Keyframe every 0.5 s and 3 B-frames: whole GOPs before each target are never decoded.
    path = media_dir / "bframes.mp4"
    if not path.exists():
        write_video(
            path, rate=10, num_frames=40, options={"preset": "medium", "tune": "film", "g": "5", "bf": "3"}
        )
    frames = decode_video(path, fps=fps)
    expected = [next(i for i in range(40) if i / 10 >= k / fps - 1e-9) for k in range(int(3.9 * fps) + 1)]
    assert indices(frames.frames) == expected
    np.testing.assert_allclose(frames.timestamps, [i / 10 for i in expected])


class _NonSeekable(io.RawIOBase):
    """A pipe-like reader: bytes in order, no seeking."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        data = self._buffer.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def test_non_seekable_stream_decodes_sequentially(mpeg4_mkv: Path) -> None:
    frames = decode_video(_NonSeekable(mpeg4_mkv.read_bytes()))
    assert indices(frames.frames) == [0, 25, 50]


def test_chunks_concatenate_to_full_decode(h264_mp4: Path) -> None:
    chunks = list(iter_video_frames(h264_mp4, fps=2.0, chunk_size=6))
    assert [len(c) for c in chunks] == [6, 6, 6, 2]
    full = decode_video(h264_mp4, fps=2.0)
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), full.frames)
    np.testing.assert_array_equal(np.concatenate([c.timestamps for c in chunks]), full.timestamps)


def test_missing_timestamps_fall_back_to_rate(media_dir: Path) -> None:
    # A raw H.264 elementary stream carries no timestamps at all.
    path = write_video(media_dir / "raw.h264", rate=25, num_frames=60)
    frames = decode_video(path)
    np.testing.assert_allclose(frames.timestamps, [0.0, 1.0, 2.0], atol=1e-9)
    assert indices(frames.frames) == [0, 25, 50]


# --- geometry and pixel formats -------------------------------------------------------------------------


def _quadrant_picture(index: int, width: int, height: int) -> np.ndarray:
    picture = np.zeros((height, width, 3), np.uint8)
    picture[: height // 2, : width // 2] = (255, 0, 0)  # red top-left marks the orientation
    return picture


@pytest.mark.parametrize(("rotation", "red_corner"), [(90, (1, 0)), (180, (1, 1)), (270, (0, 1))])
def test_rotation_metadata_is_applied(media_dir: Path, rotation: int, red_corner: tuple[int, int]) -> None:
    path = write_video(
        media_dir / f"rot{rotation}.mp4",
        rotation=rotation,
        size=(32, 16),
        num_frames=2,
        picture=_quadrant_picture,
    )
    frame = decode_video(path).frames[0]
    assert frame.shape[:2] == ((16, 32) if rotation == 180 else (32, 16))
    h, w = frame.shape[:2]
    # Counter-clockwise rotation (FFmpeg's display-matrix convention) moves top-left red accordingly.
    row, col = red_corner
    corner = frame[row * (h - 2) : row * (h - 2) + 2, col * (w - 2) : col * (w - 2) + 2]
    assert corner[..., 0].min() > 200 and corner[..., 2].max() < 60
    assert inspect_video(path).rotation == rotation


def test_non_square_pixels_give_display_size(media_dir: Path) -> None:
    path = write_video(
        media_dir / "sar2.mp4", size=(32, 16), sample_aspect_ratio=Fraction(2, 1), num_frames=2
    )
    info = inspect_video(path)
    assert (info.width, info.height, info.sample_aspect_ratio) == (64, 16, 2.0)
    assert decode_video(path).frames.shape[1:] == (16, 64, 3)


def test_odd_size_and_ten_bit(media_dir: Path) -> None:
    odd = write_video(media_dir / "odd.mp4", size=(33, 17), pix_fmt="yuv444p", num_frames=2)
    assert decode_video(odd).frames.shape == (1, 17, 33, 3)
    ten_bit = write_video(media_dir / "tenbit.mp4", pix_fmt="yuv420p10le", num_frames=4)
    assert inspect_video(ten_bit).pix_fmt == "yuv420p10le"
    frames = decode_video(ten_bit)
    assert frames.frames.dtype == np.uint8 and indices(frames.frames) == [0, 2]


def test_audio_track_is_ignored(media_dir: Path) -> None:
    path = write_video(media_dir / "with_audio.mp4", audio=True, num_frames=4)
    assert inspect_video(path).has_audio
    assert indices(decode_video(path).frames) == [0, 2]


# --- torchcodec parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["h264_2fps.mp4", "mpeg4_25fps.mkv", "rot90.mp4", "vfr.mkv", "sar2.mp4"])
def test_torchcodec_matches_pyav(media_dir: Path, h264_mp4: Path, mpeg4_mkv: Path, name: str) -> None:
    require_module("torchcodec.decoders")
    path = media_dir / name
    if not path.exists():
        write_video(path, rotation=90, size=(32, 16), num_frames=2, picture=_quadrant_picture)
    if name == "vfr.mkv":
        pts = [0, 100, 900, 1000, 1500, 3100, 3200, 4000]
        write_video(path, rate=1000, time_base=Fraction(1, 1000), pts=pts, num_frames=8)
    if name == "sar2.mp4":
        write_video(path, size=(32, 16), sample_aspect_ratio=Fraction(2, 1), num_frames=2)
    pyav = decode_video(path, backend="pyav")
    torchcodec = decode_video(path, backend="torchcodec", chunk_size=2)
    np.testing.assert_allclose(torchcodec.timestamps, pyav.timestamps, atol=1e-6)
    assert torchcodec.frames.shape == pyav.frames.shape
    assert np.abs(torchcodec.frames.astype(int) - pyav.frames.astype(int)).max() <= 2


def test_unknown_backend_is_rejected(h264_mp4: Path) -> None:
    with pytest.raises(ValueError, match="backend must be"):
        decode_video(h264_mp4, backend="decord")


# --- images and folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "mode"), [(".jpg", "RGB"), (".png", "L"), (".webp", "RGB"), (".png", "RGBA")]
)
def test_images_load_as_one_rgb_frame(tmp_path: Path, suffix: str, mode: str) -> None:
    path = tmp_path / f"image{suffix}"
    Image.new(mode, (20, 10), 128 if mode == "L" else (200, 100, 50, 255)[: len(mode)]).save(path)
    frames = load_media(path)
    assert frames.frames.shape == (1, 10, 20, 3) and frames.timestamps.tolist() == [0.0]


def test_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    first.save(path, save_all=True, append_images=[second], duration=100)
    frame = load_image(path).frames[0]
    assert frame[..., 0].min() > 200 and frame[..., 2].max() < 50


def test_frame_folder_is_sorted_naturally(tmp_path: Path) -> None:
    for i in range(12):
        Image.new("RGB", (8, 8), index_colour(i)).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = load_media(tmp_path, fps=0.5)
    assert indices(frames.frames) == [0, 2, 4, 6, 8, 10]
    np.testing.assert_allclose(frames.timestamps, [0, 2, 4, 6, 8, 10])
    at_two_fps = load_image_folder(tmp_path, frame_rate=2.0)
    np.testing.assert_allclose(at_two_fps.timestamps, [0, 1, 2, 3, 4, 5])
    assert indices(at_two_fps.frames) == [0, 2, 4, 6, 8, 10]
    assert len(load_image_folder(tmp_path, num_frames=3)) == 3


# --- errors ---------------------------------------------------------------------------------------------


def test_clear_errors_for_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="file not found"):
        decode_video(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="is a directory"):
        decode_video(tmp_path)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(MediaError, match=r"empty \(0 bytes\)"):
        decode_video(empty)
    with pytest.raises(MediaError, match="no image files"):
        load_media(tmp_path)


def test_clear_errors_for_bad_content(tmp_path: Path, h264_mp4: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 50)
    with pytest.raises(VideoDecodeError, match="garbage.mp4: cannot open"):
        decode_video(garbage)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(h264_mp4.read_bytes()[:300])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        decode_video(truncated)
    with pytest.raises(NoVideoStreamError, match="has audio but no video"):
        decode_video(write_audio_only(tmp_path / "speech.wav"))
    unknown = tmp_path / "unknown_codec.mp4"
    unknown.write_bytes(h264_mp4.read_bytes().replace(b"avc1", b"zzzz"))
    with pytest.raises(VideoDecodeError, match="unknown_codec.mp4"):
        decode_video(unknown)
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(MediaError, match="cannot read as an image"):
        load_media(broken_image)


def test_absurd_resolution_is_rejected(
    tmp_path: Path, h264_mp4: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writing a real 16385 px video would take too long; lower the limit instead (checked at call time).
    monkeypatch.setattr(video_module, "MAX_DIMENSION", 16)
    with pytest.raises(VideoDecodeError, match=r"32x32 is outside the supported range 1..16"):
        inspect_video(h264_mp4)
    with pytest.raises(VideoDecodeError, match="outside the supported range"):
        decode_video(h264_mp4)
    monkeypatch.undo()
    big_image = tmp_path / "big.png"
    Image.new("L", (16385, 1)).save(big_image)
    with pytest.raises(MediaError, match="16385x1 is outside the supported range"):
        load_image(big_image)


@pytest.mark.parametrize("kwargs", [{"fps": 0}, {"fps": None}, {"num_frames": 0}, {"max_frames": -1}])
def test_bad_sampling_arguments(h264_mp4: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        decode_video(h264_mp4, **kwargs)


# --- long video: streaming keeps memory flat ------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


@pytest.mark.slow
def test_thirty_minute_video_streams_with_flat_memory(media_dir: Path) -> None:
    pytest.importorskip("resource")
    if not Path("/proc/self/statm").exists():
        pytest.skip("RSS measured through /proc (Linux only)")
    started = time.perf_counter()
    path = write_video(
        media_dir / "thirty_minutes.mp4", rate=2, num_frames=30 * 60 * 2, size=(64, 64), options={"g": "60"}
    )
    generated = time.perf_counter() - started
    baseline = peak = _rss_bytes()
    count, last = 0, None
    for chunk in iter_video_frames(path, fps=1.0, chunk_size=32):
        count += len(chunk)
        last = chunk
        peak = max(peak, _rss_bytes())
    all_frames_bytes = 1800 * 64 * 64 * 3  # 22 MB if everything were kept
    assert count == 1800 and last is not None and last.timestamps[-1] == 1799.0
    assert frame_index(last.frames[-1]) == 3598
    assert peak - baseline < all_frames_bytes / 2, (peak - baseline, generated)


# --- probing untrusted files in a subprocess ------------------------------------------------------------


def test_probe_video_in_subprocess(h264_mp4: Path, tmp_path: Path) -> None:
    info = probe_video(h264_mp4)
    assert (info.width, info.height, info.fps, info.duration, info.codec) == (32, 32, 2.0, 10.0, "h264")
    assert info.source == str(h264_mp4)
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(VideoDecodeError, match="garbage.mkv: cannot open"):
        probe_video(garbage)
    with pytest.raises(NoVideoStreamError, match="has audio but no video"):
        probe_video(write_audio_only(tmp_path / "a.wav"))
    with pytest.raises(VideoDecodeError, match="probing took longer than 0.001 s"):
        probe_video(h264_mp4, timeout=0.001)


def test_probe_reports_a_crashing_decoder(h264_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand in for a decoder segfault: the child kills itself with SIGSEGV.
    monkeypatch.setattr(video_module.sys, "executable", "/bin/sh")
    monkeypatch.setattr(
        video_module.subprocess,
        "run",
        _run_as(["/bin/sh", "-c", "kill -SEGV $$"], video_module.subprocess.run),
    )
    with pytest.raises(VideoDecodeError, match=r"decoder crashed while probing \(signal 11\)"):
        probe_video(h264_mp4)


def _run_as(command: list[str], real_run):  # type: ignore[no-untyped-def]
    return lambda _command, **kwargs: real_run(command, **kwargs)


# --- fuzzing: hostile bytes give our errors, never a crash ----------------------------------------------


FUZZ = settings(
    derandomize=True,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _decode_or_clean_error(path: Path) -> None:
    try:
        frames = decode_video(path, fps=2.0)
    except MediaError as error:
        assert str(path) in str(error)
        return
    assert frames.frames.dtype == np.uint8 and np.all(np.diff(frames.timestamps) > 0)


@FUZZ
@given(data=st.binary(min_size=1, max_size=4096))
def test_fuzz_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.mp4"
    path.write_bytes(data)
    _decode_or_clean_error(path)


@FUZZ
@given(
    cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8)
)
@pytest.mark.parametrize("fixture", ["h264_mp4", "mpeg4_mkv"])
def test_fuzz_truncated_and_corrupted_files(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, cut: float, flips: list[tuple[float, int]]
) -> None:
    original = request.getfixturevalue(fixture).read_bytes()
    data = bytearray(original[: max(1, int(len(original) * cut))])
    for where, value in flips:
        data[min(int(where * len(data)), len(data) - 1)] = value
    path = tmp_path / f"damaged{Path(fixture).suffix or '.bin'}"
    path.write_bytes(bytes(data))
    _decode_or_clean_error(path)


# --- non-reference frame skipping ------------------------------------------------------------------------


def _moving_picture(index: int, width: int, height: int) -> np.ndarray:
    """The index colour with a bar moving across it, so encoders make real B-frames (motion, not copies)."""
    picture = np.broadcast_to(np.array(index_colour(index), np.uint8), (height, width, 3)).copy()
    x = (index * 3) % width
    picture[height // 3 : height // 3 + 4, x : x + 6] = 255 - picture[0, 0]
    return picture


_SKIP_CASES = {
    # name: (write_video arguments, decode_video arguments)
    "h264_bframes": (
        {"rate": 25, "num_frames": 150, "size": (64, 48), "options": {"preset": "veryfast", "tune": "film", "g": "50"}},
        {},
    ),
    "h264_uniform": (
        {"rate": 25, "num_frames": 150, "size": (64, 48), "options": {"preset": "veryfast", "tune": "film", "g": "50"}},
        {"num_frames": 4},
    ),
    "h264_2fps_cap": (
        {"rate": 30, "num_frames": 120, "size": (64, 48), "options": {"preset": "medium", "tune": "film", "g": "30"}},
        {"fps": 2.0, "max_frames": 5},
    ),
    "mpeg4_bframes": (
        {"codec": "mpeg4", "rate": 25, "num_frames": 100, "size": (64, 48), "options": {"qscale": "3", "bf": "2", "g": "25"}},
        {},
    ),
    "vp9": (
        {"codec": "libvpx-vp9", "rate": 10, "num_frames": 40, "size": (64, 48), "options": {"deadline": "realtime", "cpu-used": "8", "g": "10"}},
        {},
    ),
    "vfr_mkv": (
        {
            "rate": 1000,
            "time_base": Fraction(1, 1000),
            "pts": [0, 40, 80, 120, 900, 1000, 1040, 1500, 3100, 3140, 3180, 3200, 3240, 4000, 4040, 4080],
            "num_frames": 16,
            "size": (64, 48),
            "options": {"preset": "veryfast", "tune": "film", "g": "4"},
        },
        {},
    ),
    "rotated_90": (
        {"rate": 25, "num_frames": 75, "size": (64, 48), "rotation": 90, "options": {"preset": "veryfast", "tune": "film", "g": "25"}},
        {},
    ),
    # x265 cuts open GOPs by default: frames shown before a keyframe are decoded after it (leading frames).
    "hevc_open_gop": (
        {"codec": "libx265", "rate": 25, "num_frames": 100, "size": (64, 48),
         "options": {"preset": "fast", "tune": "grain", "x265-params": "keyint=25:min-keyint=25:bframes=3:log-level=error"}},
        {"fps": 3.0},
    ),
    "av1": (
        {"codec": "libsvtav1", "rate": 25, "num_frames": 75, "size": (64, 48), "options": {"preset": "12", "svtav1-params": "keyint=25"}},
        {},
    ),
}  # fmt: skip


def _skip_case(media_dir: Path, name: str) -> tuple[Path, dict]:
    write_args, decode_args = _SKIP_CASES[name]
    codec = write_args.get("codec")
    if codec in ("libx265", "libsvtav1"):
        require_encoder(codec)
    suffix = ".webm" if codec == "libvpx-vp9" else ".mkv" if "vfr" in name or codec == "libsvtav1" else ".mp4"
    path = media_dir / f"skip_{name}{suffix}"
    if not path.exists():
        write_video(path, picture=_moving_picture, **write_args)
    return path, decode_args


@pytest.mark.parametrize("name", sorted(_SKIP_CASES))
def test_nonreference_skipping_returns_the_same_frames(
    media_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path, decode_args = _skip_case(media_dir, name)
    decode_args = {**decode_args, "workers": 1}
    switches: list[str] = []
    real_before = video_module._NonReferenceSkipper.before

    def spy(self: video_module._NonReferenceSkipper, packet, selector, reliable) -> None:  # type: ignore[no-untyped-def]
        real_before(self, packet, selector, reliable)
        switches.append(self._context.skip_frame)

    monkeypatch.setattr(video_module._NonReferenceSkipper, "before", spy)
    skipping = decode_video(path, **decode_args)
    monkeypatch.setattr(video_module, "_SKIP_NONREFERENCE", False)
    full = decode_video(path, **decode_args)
    np.testing.assert_array_equal(skipping.timestamps, full.timestamps)
    np.testing.assert_array_equal(skipping.frames, full.frames)  # bit-identical pixels
    if name.startswith(("h264", "mpeg4", "rotated", "hevc")):
        assert "NONREF" in {str(s) for s in switches}, "the skipping never engaged on this clip"


# --- segment-parallel decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_SKIP_CASES))
def test_segment_parallel_decoding_returns_the_same_frames(
    media_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path, decode_args = _skip_case(media_dir, name)
    decoded: list[float] = []
    real_decode = video_module._SegmentDecoder.decode

    def spy(self, segment, selector):  # type: ignore[no-untyped-def]
        decoded.append(segment.low)
        return real_decode(self, segment, selector)

    monkeypatch.setattr(video_module._SegmentDecoder, "decode", spy)
    parallel = decode_video(path, workers=3, **decode_args)
    assert len(decoded) >= 2, "the video was not decoded in segments"
    monkeypatch.setattr(video_module, "_SKIP_NONREFERENCE", False)
    one = decode_video(path, workers=1, **decode_args)  # one decoder, every frame decoded
    np.testing.assert_array_equal(parallel.timestamps, one.timestamps)
    np.testing.assert_array_equal(parallel.frames, one.frames)  # bit-identical pixels
    if name == "hevc_open_gop":
        segments = video_module._plan_segments(video_module._open_video(path), str(path))
        assert segments is not None
        assert any(a.stop > b.start for a, b in zip(segments, segments[1:], strict=False)), (
            "no leading frames to hand over"
        )


def test_segment_parallel_streaming_and_early_stop(media_dir: Path) -> None:
    path, _ = _skip_case(media_dir, "h264_bframes")
    one = decode_video(path, fps=5.0, workers=1)
    chunks = list(iter_video_frames(path, fps=5.0, workers=2, chunk_size=3))
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), one.frames)
    np.testing.assert_array_equal(np.concatenate([c.timestamps for c in chunks]), one.timestamps)
    stream = iter_video_frames(path, fps=5.0, workers=2, chunk_size=2)
    first = next(stream)
    stream.close()  # abandoning the iterator stops the workers and closes their files
    np.testing.assert_array_equal(first.frames, one.frames[:2])


def test_file_objects_and_bad_worker_counts(h264_mp4: Path) -> None:
    expected = decode_video(h264_mp4, workers=1)
    from_bytes = decode_video(io.BytesIO(h264_mp4.read_bytes()), workers=4)  # one decoder for file objects
    np.testing.assert_array_equal(from_bytes.frames, expected.frames)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be"):
            decode_video(h264_mp4, workers=bad)  # type: ignore[arg-type]


# --- fast resize in FFmpeg's scaler ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write_args", "size", "crop"),
    [
        ({"size": (96, 64)}, 32, None),
        ({"size": (64, 96), "rotation": 90}, 24, 20),  # rotated: the resize follows the displayed shape
        ({"size": (48, 32), "sample_aspect_ratio": Fraction(2, 1)}, 16, None),  # shown 96x32
    ],
)
def test_fast_resize_follows_the_processor_geometry(
    tmp_path: Path, write_args: dict, size: int, crop: int | None
) -> None:
    from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor

    path = write_video(tmp_path / "clip.mp4", rate=4, num_frames=12, picture=_quadrant_picture, **write_args)
    full = decode_video(path, fps=2.0)
    fast = decode_video(path, fps=2.0, size=size, crop_size=crop, workers=1)
    side = crop or size
    assert fast.frames.shape == (len(full), side, side, 3)
    np.testing.assert_array_equal(fast.timestamps, full.timestamps)
    processor = LlamaVidImageProcessor(size=size, crop_size=crop)
    reference = np.stack([processor._resize_and_crop(Image.fromarray(frame)) for frame in full.frames])
    difference = np.abs(fast.frames.astype(int) - reference.astype(int))
    # Same geometry (a flipped or shifted picture would differ by ~255 over whole quadrants); only the filters
    # differ, at the colour edges.
    assert difference.mean() < 6, difference.mean()
    assert np.median(difference) <= 2
    # Already at the processor's size: its resize and crop leave the frames as they are.
    processor_input = LlamaVidImageProcessor(size=side)(fast.frames, is_video=True)
    expected = (fast.frames.astype(np.float32) / 255 - np.float32(processor.image_mean)) / np.float32(
        processor.image_std
    )
    np.testing.assert_allclose(processor_input.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)
    parallel = decode_video(path, fps=2.0, size=size, crop_size=crop, workers=2)
    np.testing.assert_array_equal(parallel.frames, fast.frames)


def test_fast_resize_arguments_are_checked(h264_mp4: Path) -> None:
    for kwargs, message in [
        ({"size": 0}, "size must be"),
        ({"size": 16, "crop_size": 24}, "larger than size"),
        ({"crop_size": 16}, "needs size"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode_video(h264_mp4, **kwargs)
    require_module("torchcodec.decoders")
    with pytest.raises(ValueError, match="PyAV's scaler"):
        decode_video(h264_mp4, size=16, backend="torchcodec")


# --- CUDA decoding -----------------------------------------------------------------------------------------


def test_cuda_device_needs_cuda_and_torchcodec(h264_mp4: Path) -> None:
    import torch

    with pytest.raises(ValueError, match="needs backend='torchcodec'"):
        decode_video(h264_mp4, device="cuda", backend="pyav")
    with pytest.raises(ValueError, match="device must be"):
        decode_video(h264_mp4, device="tpu")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: test_cuda_decoding_matches_cpu covers it")
    require_module("torchcodec.decoders")
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        decode_video(h264_mp4, device="cuda")


@pytest.mark.gpu
def test_cuda_decoding_matches_cpu(h264_mp4: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    require_module("torchcodec.decoders")
    cpu = decode_video(h264_mp4, fps=2.0)
    gpu = decode_video(h264_mp4, fps=2.0, device="cuda")
    np.testing.assert_allclose(gpu.timestamps, cpu.timestamps, atol=1e-6)
    assert gpu.frames.shape == cpu.frames.shape
    # NVDEC output is converted to RGB on the GPU: close to, not bit-identical with, FFmpeg's CPU conversion.
    assert np.abs(gpu.frames.astype(int) - cpu.frames.astype(int)).mean() < 3


def test_pixel_limit_holds_in_decoding_threads(media_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _skip_case(media_dir, "h264_bframes")
    seen: list[tuple[str, int]] = []
    real_check = video_module._check_picture

    def spy(width: int, height: int, sar: float, source: str) -> None:
        seen.append((threading.current_thread().name, video_module.current_max_pixels()))
        real_check(width, height, sar, source)

    monkeypatch.setattr(video_module, "_check_picture", spy)
    with video_module.pixel_limit(64 * 48):
        decode_video(path, workers=2)
    in_workers = [limit for name, limit in seen if name.startswith("llamavid-decode")]
    assert in_workers and set(in_workers) == {64 * 48}
