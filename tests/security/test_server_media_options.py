"""Per-request media options (``mm_processor_kwargs``): bounded by the server's limits, never a way out of them."""

from __future__ import annotations

import base64
import json

import pytest
from security_helpers import ask, error_of, media_part

BAD_OPTIONS = [
    ({"fps": 0}, "fps"),
    ({"fps": -1}, "fps"),
    ({"fps": float("nan")}, "fps"),
    ({"fps": float("inf")}, "fps"),
    ({"fps": 1000}, "fps"),
    ({"fps": "fast"}, "fps"),
    ({"max_frames": 0}, "max_frames"),
    ({"max_frames": -3}, "max_frames"),
    ({"max_frames": 257}, "max_frames"),
    ({"max_frames": 10**12}, "max_frames"),
    ({"max_frames": 1.5}, "max_frames"),
    ({"num_frames": 4}, "num_frames"),
    ({"untrusted": False}, "untrusted"),
    ({"subtitles": 12}, "subtitles"),
    ({"subtitles": "no cue in here"}, "cue"),
    ({"subtitles": "data:text/html;base64,PGgxPg=="}, "subtitles"),
    ({"subtitles": "data:text/vtt;base64,@@@"}, "base64"),
    ({"subtitles": "file:///etc/passwd"}, "outside"),
    ({"subtitles": "file://{root}/frames"}, "not a subtitle file"),
    ({"subtitles": "file://{root}/../outside-root0/x.srt"}, "outside"),
]


@pytest.mark.parametrize(
    "options, words", BAD_OPTIONS, ids=[json.dumps(options) for options, _ in BAD_OPTIONS]
)
def test_bad_media_options_are_400(attacker, options, words):
    options = {
        key: value.format(root=attacker.root) if isinstance(value, str) else value
        for key, value in options.items()
    }
    body = ask(media_part(f"file://{attacker.root}/clip.mp4"), mm_processor_kwargs=options)
    response = attacker.post(content=json.dumps(body, allow_nan=True).encode())
    assert response.status_code in (400, 403), response.text
    assert words in error_of(response)


@pytest.mark.parametrize("scheme", ["http", "https", "ftp", "rtsp", "smb", "gopher"])
def test_remote_subtitles_are_refused_without_a_connection(attacker, decoy, scheme):
    options = {"subtitles": f"{scheme}://127.0.0.1:{decoy.port}/movie.srt"}
    response = attacker.post(ask(media_part(f"file://{attacker.root}/clip.mp4"), mm_processor_kwargs=options))
    assert response.status_code == 400 and "not fetched" in error_of(response)
    assert decoy.connections == 0


def test_subtitles_for_a_still_image_are_400(attacker):
    srt = base64.b64encode(b"1\n00:00:00,000 --> 00:00:01,000\nhi\n").decode()
    options = {"subtitles": f"data:application/x-subrip;base64,{srt}"}
    response = attacker.post(
        ask(media_part(f"file://{attacker.root}/still.png", "image_url"), mm_processor_kwargs=options)
    )
    assert response.status_code == 400 and "image" in error_of(response)
