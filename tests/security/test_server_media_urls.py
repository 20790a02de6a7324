"""Media URLs that try to leave the allowed root, or make the server (or FFmpeg inside it) connect somewhere.

A decoy listener on 127.0.0.1 stands in for the network: whatever the URL or the uploaded file names, the server
must refuse it without a single connection.
"""

from __future__ import annotations

import base64
import shutil

import pytest
from security_helpers import ask, error_of, media_part


@pytest.fixture(scope="module", autouse=True)
def sibling_of_root(attacker):
    """A folder next to the root whose name extends the root's (``allowed-root0-evil``), holding a clip."""
    sibling = attacker.root.parent / f"{attacker.root.name}-evil"
    sibling.mkdir(exist_ok=True)
    shutil.copy(attacker.root / "clip.mp4", sibling / "clip.mp4")
    return sibling


ESCAPES = [
    ("file:///etc/passwd", 403, "outside"),
    ("file://{root}/../outside-root0/secret.mp4", 403, "outside"),
    ("file://{root}/%2e%2e/%2e%2e/etc/passwd", 403, "outside"),
    ("file://{root}/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", 403, "outside"),
    ("file://{root}//..//..//etc/passwd", 403, "outside"),
    ("file:////etc/passwd", 403, "outside"),
    ("file://{root}/link.mp4", 403, "outside"),  # a symlink in the root pointing out of it
    ("file://{root}/linked-folder/secret.mp4", 403, "outside"),  # through a linked folder
    ("file://{root}-evil/clip.mp4", 403, "outside"),  # a sibling whose name starts with the root's
    ("file://~/.ssh/id_rsa", 400, "host"),
    ("file://{root}/clip.mp4%00.png", 400, "NUL"),
    ("file://{root}/clip.mp4/..", 400, "folder"),
    ("file://{root}/missing.mp4", 400, "no such file"),
    ("file://otherhost/etc/passwd", 400, "host"),
    ("file://127.0.0.1{root}/clip.mp4", 400, "host"),
    ("file://C:/Windows/win.ini", 400, "host"),
]


@pytest.mark.parametrize("url, status, words", ESCAPES, ids=[url for url, _, _ in ESCAPES])
def test_paths_out_of_the_root_are_refused(attacker, url, status, words):
    kind = "image_url" if "passwd" in url else "video_url"  # both part types go through one resolver
    response = attacker.post(ask(media_part(url.format(root=attacker.root), kind)))
    assert response.status_code == status, response.text
    assert words in error_of(response)


def test_normalised_paths_inside_the_root_still_work(attacker):
    root = attacker.root
    for url in (
        f"file://{root}/../{root.name}/clip.mp4",
        f"file://{root}//clip.mp4",
        f"file://localhost{root}/clip.mp4",
    ):
        assert attacker.post(ask(media_part(url))).status_code == 200, url


REMOTE = [
    "http://127.0.0.1:{port}/video.mp4",
    "HTTPS://127.0.0.1:{port}/video.mp4",
    "ftp://127.0.0.1:{port}/video.mp4",
    "gopher://127.0.0.1:{port}/_GET",
    "rtsp://127.0.0.1:{port}/live",
    "rtmp://127.0.0.1:{port}/live",
    "smb://127.0.0.1:{port}/share/video.mp4",
    "tcp://127.0.0.1:{port}",
    "file://127.0.0.1:{port}/video.mp4",
    "//127.0.0.1:{port}/video.mp4",
    "127.0.0.1:{port}/video.mp4",
]


@pytest.mark.parametrize("url", REMOTE)
def test_remote_urls_are_refused_without_a_connection(attacker, decoy, url):
    kind = "image_url" if url.startswith(("HTTPS", "gopher", "smb", "//")) else "video_url"
    response = attacker.post(ask(media_part(url.format(port=decoy.port), kind)))
    assert response.status_code == 400, response.text
    message = error_of(response)
    assert "data:" in message or "file:///" in message
    assert decoy.connections == 0


def playlists(port: int) -> dict[str, str]:
    """Text files FFmpeg would follow to the network or to other files, if it accepted them as video."""
    return {
        "HLS playlist": f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nhttp://127.0.0.1:{port}/0.ts\n#EXT-X-ENDLIST\n",
        "concat list": f"ffconcat version 1.0\nfile http://127.0.0.1:{port}/a.mp4\nfile /etc/passwd\n",
        "DASH manifest": (
            '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
            'mediaPresentationDuration="PT4S"><Period><AdaptationSet><Representation id="1" bandwidth="1" '
            f'mimeType="video/mp4"><BaseURL>http://127.0.0.1:{port}/v.mp4</BaseURL></Representation>'
            "</AdaptationSet></Period></MPD>"
        ),
    }


@pytest.mark.parametrize("mime", ["video/mp4", "video/x-matroska"])
@pytest.mark.parametrize("name", ["HLS playlist", "concat list", "DASH manifest"])
def test_uploaded_playlists_do_not_reach_the_network(attacker, decoy, mime, name):
    text = playlists(decoy.port)[name]
    url = f"data:{mime};base64,{base64.b64encode(text.encode()).decode()}"
    response = attacker.post(ask(media_part(url)))
    assert response.status_code == 400 and "uploaded media" in error_of(response)
    assert decoy.connections == 0


def test_playlist_under_the_root_does_not_reach_the_network(attacker, decoy):
    path = attacker.root / f"playlist-{decoy.port}.m3u8"
    path.write_text(playlists(decoy.port)["HLS playlist"])
    try:
        response = attacker.post(ask(media_part(f"file://{path}")))
    finally:
        path.unlink()
    assert response.status_code == 400
    assert decoy.connections == 0
