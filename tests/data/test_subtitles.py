"""Tests for llamavid.data.subtitles: parsing, encodings, embedded streams, alignment (spec §5.4)."""

from __future__ import annotations

import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from media_factory import write_video

from llamavid.data.errors import BackendUnavailableError, SubtitleError
from llamavid.data.subtitles import (
    SubtitleCue,
    SubtitleTrack,
    align_subtitles,
    decode_subtitle_bytes,
    interleave_subtitles,
    parse_srt,
    parse_webvtt,
    read_embedded_subtitles,
    read_subtitles,
    transcribe,
)

SRT = """1
00:00:00,500 --> 00:00:01,500
Hello <i>world</i>

2
00:00:02,000 --> 00:00:03,250
Second line
café &amp; crème

3
00:00:03,300 --> 00:00:03,900
{\\an8}Top
"""

VTT = """WEBVTT - a title

NOTE this is a comment
spanning lines

STYLE
::cue { color: red }

intro
00:00.500 --> 00:01.500 align:start position:10%
Hello <c.yellow>world</c>

00:00:02.000 --> 00:00:03.250
Second line
café &amp; crème
"""


def test_parse_srt_and_webvtt_agree() -> None:
    expected = [
        SubtitleCue(0.5, 1.5, "Hello world"),
        SubtitleCue(2.0, 3.25, "Second line café & crème"),
    ]
    assert parse_srt(SRT)[:2] == expected
    assert parse_srt(SRT)[2] == SubtitleCue(3.3, 3.9, "Top")
    assert parse_webvtt(VTT) == expected


def test_srt_tolerates_crlf_dot_separator_and_blank_line_in_text() -> None:
    text = "1\r\n00:00:01.000 --> 00:00:02,000\r\nfirst\r\n\r\nstill first\r\n\r\n2\r\n00:00:03,000 --> 00:00:04,000\r\nb\r\n"
    assert parse_srt(text) == [SubtitleCue(1.0, 2.0, "first still first"), SubtitleCue(3.0, 4.0, "b")]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("1\n00:00:01,000 --> 00:00:0x,000\nhi\n", 2, "malformed timestamp '00:00:0x,000'"),
        ("1\n00:00:01,000 --> 00:00:02,000\nhi\n\n2\n00:01:70,000 --> 00:01:72,000\nbye\n", 6, "malformed"),
        ("1\n00:00:05,000 --> 00:00:02,000\nhi\n", 2, "cue ends .* before it starts"),
        ("garbage without timing\n", 1, "expected a timing line"),
    ],
)
def test_srt_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(SubtitleError, match=rf"<srt>, line {line}: {message}"):
        parse_srt(text)


def test_webvtt_errors() -> None:
    with pytest.raises(SubtitleError, match="line 1: a WebVTT file must start with 'WEBVTT'"):
        parse_webvtt("00:01.000 --> 00:02.000\nhi\n")
    with pytest.raises(SubtitleError, match=r"line 3: malformed timestamp '00:0x.500'.*00:01:02\.500"):
        parse_webvtt("WEBVTT\n\n00:01.000 --> 00:0x.500\nhi\n")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_unicode_encodings_are_detected(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "sub.srt"
    path.write_bytes(SRT.encode(encoding))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cues = read_subtitles(path)
    assert cues[1].text == "Second line café & crème"


def test_legacy_encoding_is_detected_with_a_logged_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "legacy.srt"
    path.write_bytes(SRT.encode("cp1252"))
    with caplog.at_level("WARNING", logger="llamavid.data.subtitles"):
        cues = read_subtitles(path)
    assert cues[1].text == "Second line café & crème"
    assert any("legacy.srt: not UTF-8; decoded as cp1252" in r.getMessage() for r in caplog.records)
    assert read_subtitles(path, encoding="cp1252")[1].text == "Second line café & crème"
    with pytest.raises(SubtitleError, match="cannot decode as utf-8.*--subtitle-encoding"):
        decode_subtitle_bytes("é".encode("cp1252"), source="x.srt", encoding="utf-8")
    with pytest.raises(SubtitleError, match="cannot decode as no-such-codec"):
        read_subtitles(path, encoding="no-such-codec")


CHINESE = ["你好，世界！今天天气很好。", "我们去公园散步吧。", "这部电影讲的是一个小女孩和她的狗。"]
FRENCH = ["Café crème, s'il vous plaît.", "Ça coûte « cinq » euros — merci.", "Où est la gare ?"]
SPANISH = ["¿Dónde está la estación?", "¡Sí, señor! Mañana, a las ocho.", "El niño comió piñones."]


def _srt(texts: list[str]) -> str:
    return "".join(
        f"{i + 1}\n00:00:0{i + 1},000 --> 00:00:0{i + 1},900\n{text}\n\n" for i, text in enumerate(texts)
    )


@pytest.mark.parametrize(
    ("texts", "encoding", "detected"),
    [(CHINESE, "gb2312", "gb18030"), (FRENCH, "cp1252", "cp1252"), (SPANISH, "latin-1", "cp1252")],
    ids=["gb2312", "cp1252", "latin-1"],
)
def test_legacy_encodings_are_detected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, texts: list[str], encoding: str, detected: str
) -> None:
    path = tmp_path / f"{encoding}.srt"
    path.write_bytes(_srt(texts).encode(encoding))
    with caplog.at_level("WARNING", logger="llamavid.data.subtitles"):
        cues = read_subtitles(path)
    assert [cue.text for cue in cues] == texts
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"{encoding}.srt: not UTF-8; decoded as {detected}" in message and "--subtitle-encoding" in message


def test_an_encoding_that_cannot_be_told_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.srt"
    path.write_bytes(_srt(["你好", "再见"]).encode("gb2312"))  # two characters: GB2312, EUC-KR or EUC-JP?
    with pytest.raises(
        SubtitleError, match=r"short.srt: not UTF-8, .*cannot be told.*--subtitle-encoding"
    ) as caught:
        read_subtitles(path)
    assert caught.value.path == str(path) and "gb18030" in str(caught.value)
    assert [cue.text for cue in read_subtitles(path, encoding="gb2312")] == ["你好", "再见"]
    track = SubtitleTrack.read(path, encoding="gb2312")
    assert track.path == str(path) and track.encoding == "gb2312" and track.cues[1].text == "再见"


def test_read_subtitles_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SubtitleError, match="not found"):
        read_subtitles(tmp_path / "none.srt")
    (tmp_path / "empty.srt").touch()
    with pytest.raises(SubtitleError, match="empty"):
        read_subtitles(tmp_path / "empty.srt")
    (tmp_path / "blank.vtt").write_text("WEBVTT\n\n")
    with pytest.raises(SubtitleError, match="no subtitle cue found"):
        read_subtitles(tmp_path / "blank.vtt")
    (tmp_path / "bad.srt").write_text("1\n00:00:01,000 --> 1s\nx\n")
    with pytest.raises(SubtitleError, match=r"bad.srt, line 2: malformed timestamp '1s'"):
        read_subtitles(tmp_path / "bad.srt")


def test_embedded_subtitle_stream_in_mkv(tmp_path: Path) -> None:
    video = write_video(tmp_path / "plain.mp4", num_frames=8)
    srt = tmp_path / "cues.srt"
    srt.write_text(SRT)
    muxed = tmp_path / "with_subs.mkv"
    with av.open(str(video)) as video_in, av.open(str(srt)) as subs_in, av.open(str(muxed), "w") as out:
        video_out = out.add_stream_from_template(video_in.streams.video[0])
        subs_out = out.add_stream_from_template(subs_in.streams.subtitles[0])
        for source, target in ((video_in, video_out), (subs_in, subs_out)):
            for packet in source.demux(source.streams[0]):
                if packet.dts is not None:
                    packet.stream = target
                    out.mux(packet)
    cues = read_embedded_subtitles(muxed)
    assert [(c.start, c.end, c.text) for c in cues[:2]] == [
        (0.5, 1.5, "Hello world"),
        (2.0, 3.25, "Second line café & crème"),
    ]
    with pytest.raises(SubtitleError, match="no subtitle stream"):
        read_embedded_subtitles(video)


# --- alignment ------------------------------------------------------------------------------------------


def official_assignment(cues: list[SubtitleCue], times: list[float]) -> list[list[str]]:
    """The official loop (spec §5.4), wrap-around included, written out to compare against."""
    texts: list[list[str]] = [[] for _ in times]
    pointer = 0
    for cue in cues:
        while pointer < len(times) and times[pointer] < cue.end:
            pointer += 1
        texts[pointer - 1].append(cue.text)
    return texts


def test_alignment_matches_official_loop_when_no_cue_precedes_first_frame() -> None:
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    cues = [
        SubtitleCue(0.0, 0.5, "a"),  # ends between frames 0 and 1 -> frame 0
        SubtitleCue(0.6, 1.0, "b"),  # ends exactly at frame 1: frame 1 is not < end -> frame 0
        SubtitleCue(1.2, 2.5, "c"),
        SubtitleCue(2.6, 2.9, "d"),  # same frame as c: joined with a space
        SubtitleCue(3.5, 9.0, "e"),  # runs past the last frame -> last frame
    ]
    aligned = align_subtitles(cues, times, duration=5.0)
    assert aligned == [" ".join(t) for t in official_assignment(cues, times)]
    assert aligned == ["a b", "", "c d", "", "e"]
    assert interleave_subtitles(cues, times, duration=5.0)[2] == (2.0, "c d")


def test_cue_before_first_frame_goes_to_first_frame_not_last() -> None:
    times = [1.0, 2.0, 3.0]
    cues = [SubtitleCue(0.1, 0.4, "early"), SubtitleCue(2.2, 2.8, "late")]
    assert official_assignment(cues, times)[-1] == ["early"]  # the official wrap-around bug
    assert align_subtitles(cues, times) == ["early", "late", ""]


def test_cues_beyond_the_video_are_dropped_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    cues = [SubtitleCue(0.5, 1.5, "in"), SubtitleCue(9.0, 10.0, "after the end")]
    with caplog.at_level("WARNING", logger="llamavid.data.subtitles"):
        aligned = align_subtitles(cues, [0.0, 1.0, 2.0], duration=3.0, source="film.srt")
    assert aligned == ["", "in", ""]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "film.srt: 1 of the 2 subtitle cues" in message and "clip length 3.0 s" in message
    assert "first dropped cue at 9.0 s" in message and "1 earlier cue(s) are kept" in message


def test_cues_all_after_a_trimmed_clip_are_a_warning_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    cues = [SubtitleCue(100.0, 101.0, "x"), SubtitleCue(200.0, 201.0, "y")]
    with caplog.at_level("WARNING", logger="llamavid.data.subtitles"):
        aligned = align_subtitles(cues, [0.0, 1.0, 2.0], source="movie.srt")
    assert aligned == ["", "", ""]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "movie.srt: 2 of the 2 subtitle cues" in message and "without subtitles" in message


def test_subtitles_for_frames_without_any_cue_inside_is_no_subtitles(tmp_path: Path) -> None:
    from llamavid.inference.media import subtitles_for_frames

    late = tmp_path / "late.srt"
    late.write_text("1\n00:00:10,000 --> 00:00:11,000\nlater\n")
    times = np.array([0.0, 1.0, 2.0])
    assert subtitles_for_frames(times, 3.0, late, is_image=False) is None
    early = tmp_path / "early.srt"
    early.write_text("1\n00:00:01,000 --> 00:00:01,500\nnow\n\n2\n00:00:10,000 --> 00:00:11,000\nlater\n")
    assert subtitles_for_frames(times, 3.0, early, is_image=False) == ["", "now", ""]
    track = SubtitleTrack.read(early)
    assert subtitles_for_frames(times, 3.0, track, is_image=False) == ["", "now", ""]


def test_alignment_rejects_bad_timestamps() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        align_subtitles([], [])
    with pytest.raises(ValueError, match="strictly increasing"):
        align_subtitles([], [0.0, 2.0, 1.0])
    assert align_subtitles([], [0.0, 1.0]) == ["", ""]


# --- speech to text -------------------------------------------------------------------------------------


def test_transcribe_requires_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(SubtitleError, match="model names are not accepted"):
        transcribe(tmp_path / "clip.mp4", "large-v3")


def test_transcribe_without_faster_whisper_says_how_to_install(tmp_path: Path) -> None:
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("faster-whisper is installed; the missing-package message cannot be observed")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.bin").write_bytes(b"\0")
    with pytest.raises(BackendUnavailableError, match=r"pip install 'llamavid\[asr\]'.*\.srt/\.vtt"):
        transcribe(tmp_path / "clip.mp4", tmp_path / "model")


# --- fuzzing (derandomised, so CI is reproducible) ------------------------------------------------------


FUZZ = settings(
    derandomize=True, max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _only_clean_errors(parse, text: str) -> None:
    try:
        cues = parse(text)
    except SubtitleError as error:
        assert "line " in str(error)
        return
    for cue in cues:
        assert 0 <= cue.start <= cue.end and cue.text == cue.text.strip() and cue.text


@FUZZ
@given(st.text(alphabet=st.sampled_from("0123456789:,.-> \n\rWEBVTabc<>{}\\&;"), max_size=300))
def test_fuzz_parsers_on_subtitle_like_text(text: str) -> None:
    _only_clean_errors(parse_srt, text)
    _only_clean_errors(parse_webvtt, "WEBVTT\n\n" + text)


@FUZZ
@given(st.integers(0, len(SRT)), st.integers(0, 8), st.text(max_size=6))
def test_fuzz_parsers_on_mutated_files(position: int, cut: int, insert: str) -> None:
    _only_clean_errors(parse_srt, SRT[:position] + insert + SRT[position + cut :])
    _only_clean_errors(parse_webvtt, VTT[:position] + insert + VTT[position + cut :])


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_decoding_arbitrary_bytes_gives_text_or_a_clean_error(data: bytes) -> None:
    try:
        assert isinstance(decode_subtitle_bytes(data, source="fuzz.srt"), str)
    except SubtitleError as error:
        assert "fuzz.srt" in str(error) and "--subtitle-encoding" in str(error)


# --- a trimmed clip with the subtitles of the whole video, through `llamavid ask` -------------------------

LATE_SRT = "1\n00:00:01,000 --> 00:00:02,000\nhello\n\n2\n00:00:10,000 --> 00:00:11,000\nlater\n\n3\n00:00:12,000 --> 00:00:13,000\nend\n"
ALL_LATE_SRT = "1\n00:00:10,000 --> 00:00:12,000\nlater\n\n2\n00:00:20,000 --> 00:00:21,000\nend\n"


def _ask_with_subtitles(video: Path, srt: Path, cache: Path) -> int:
    from llamavid.cli.main import main

    args = ["ask", str(video), "what happens?", "--subtitles", str(srt), "--cache-dir", str(cache)]
    return main([*args, "--json", "-q", "--max-new-tokens", "2", "--temperature", "0"])


@pytest.mark.parametrize(
    ("text", "dropped", "total"), [(LATE_SRT, 2, 3), (ALL_LATE_SRT, 2, 2)], ids=["some_late", "all_late"]
)
def test_ask_on_a_trimmed_clip_drops_late_cues_with_a_logged_warning(
    tmp_path: Path,
    demo_video_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    text: str,
    dropped: int,
    total: int,
) -> None:
    srt = tmp_path / "whole_film.srt"
    srt.write_text(text)
    with caplog.at_level("WARNING", logger="llamavid"):
        code = _ask_with_subtitles(demo_video_path, srt, tmp_path / "cache")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings_logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "whole_film.srt" in m and f"{dropped} of the {total} subtitle cues" in m and "4.0 s" in m
        for m in warnings_logged
    ), warnings_logged
