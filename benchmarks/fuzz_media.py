"""Long fuzz campaign for media ingestion (not part of the test suite).

Feeds random and damaged containers to probe/decode and random text to the subtitle parsers, and reports
any exception that is not one of our clear ``MediaError`` subclasses. Container cases run through
``probe_video`` (a subprocess) and then in-process decoding, so a decoder crash is reported instead of
killing the campaign.

Run: PYTHONPATH=src python benchmarks/fuzz_media.py --examples 5000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from media_factory import write_video  # noqa: E402

from llamavid.data.errors import MediaError  # noqa: E402
from llamavid.data.subtitles import decode_subtitle_bytes, parse_srt, parse_webvtt  # noqa: E402
from llamavid.data.video import decode_video, probe_video  # noqa: E402

FAILURES: list[str] = []


def check(label: str, action) -> None:  # type: ignore[no-untyped-def]
    try:
        action()
    except MediaError:
        pass
    except Exception:
        FAILURES.append(f"{label}\n{traceback.format_exc()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args()
    campaign = settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck))
    folder = Path(tempfile.mkdtemp(prefix="fuzz_media_"))
    seeds = [
        write_video(folder / "seed.mp4", num_frames=12),
        write_video(folder / "seed.mkv", codec="mpeg4", rate=25, num_frames=30),
        write_video(folder / "seed.webm", codec="libvpx-vp9", num_frames=6, options={"deadline": "realtime"}),
    ]

    @campaign
    @given(
        st.sampled_from(seeds),
        st.floats(0, 1),
        st.lists(st.tuples(st.floats(0, 1), st.binary(1, 8)), max_size=16),
    )
    def damaged(seed: Path, cut: float, patches: list[tuple[float, bytes]]) -> None:
        data = bytearray(seed.read_bytes()[: max(1, int(seed.stat().st_size * cut))])
        for where, patch in patches:
            at = int(where * (len(data) - 1))
            data[at : at + len(patch)] = patch
        path = folder / f"case{seed.suffix}"
        path.write_bytes(bytes(data))
        check(f"probe {seed.name} cut={cut} patches={patches}", lambda: probe_video(path, timeout=10))
        check(f"decode {seed.name} cut={cut} patches={patches}", lambda: decode_video(path, fps=4.0))

    @campaign
    @given(st.text(max_size=2000), st.binary(max_size=2000))
    def subtitles(text: str, raw: bytes) -> None:
        check("srt", lambda: parse_srt(text))
        check("vtt", lambda: parse_webvtt("WEBVTT\n\n" + text))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check("bytes", lambda: parse_srt(decode_subtitle_bytes(raw)))

    damaged()
    subtitles()
    print(f"{len(FAILURES)} unexpected exception(s)")
    for failure in FAILURES[:20]:
        print(failure)
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
