"""Fixtures of the security suite: one live server on 127.0.0.1 (API key, allowed root) shared by every module.

Bodies are built once per module and counts stay small, so the whole suite runs in seconds on 2 cores.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from security_helpers import API_KEY, Attacker, Decoy

from testing_utils import require_module


@pytest.fixture(scope="package")
def media_root(tmp_path_factory: pytest.TempPathFactory, demo_video_path: Path) -> Path:
    """The allowed root: a clip, a still, a symlink pointing out of the root, a FIFO and a folder of frames."""
    from PIL import Image

    root = tmp_path_factory.mktemp("allowed-root")
    shutil.copy(demo_video_path, root / "clip.mp4")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "still.png")
    outside = tmp_path_factory.mktemp("outside-root")
    (outside / "secret.mp4").write_bytes(demo_video_path.read_bytes())
    os.symlink(outside / "secret.mp4", root / "link.mp4")
    os.symlink(outside, root / "linked-folder")
    os.mkfifo(root / "pipe.mp4")
    frames = root / "frames"
    frames.mkdir()
    for index in range(3):
        Image.new("RGB", (32, 32), (index * 80, 0, 0)).save(frames / f"{index:04d}.png")
    return root


@pytest.fixture(scope="package")
def attacker(serving_engine: object, media_root: Path) -> Iterator[Attacker]:
    app_module = require_module("llamavid.serve.app")
    config = app_module.ServerConfig(
        allowed_roots=(media_root,), api_key=API_KEY, max_batch_size=4, batch_wait_ms=5, probe_timeout=20
    )
    running = app_module.RunningServer(app_module.create_app(serving_engine, config))
    try:
        yield Attacker(running, media_root)
    finally:
        running.stop()


@pytest.fixture
def decoy() -> Iterator[Decoy]:
    listener = Decoy()
    try:
        yield listener
    finally:
        listener.stop()
