"""Session-scoped media fixtures for tests/data (generators live in media_factory.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from media_factory import write_video


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def h264_mp4(media_dir: Path) -> Path:
    """10 s of H.264 in MP4 at 2 fps (20 frames), the common case."""
    return write_video(media_dir / "h264_2fps.mp4", rate=2, num_frames=20)


@pytest.fixture(scope="session")
def mpeg4_mkv(media_dir: Path) -> Path:
    """25 fps MPEG-4 Part 2 in Matroska (1 ms time base), 3 s."""
    return write_video(
        media_dir / "mpeg4_25fps.mkv", codec="mpeg4", rate=25, num_frames=75, options={"qscale": "2"}
    )
