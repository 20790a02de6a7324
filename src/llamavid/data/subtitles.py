"""Subtitles: read them (SRT, WebVTT, streams embedded in MKV/MP4, or speech-to-text) and align them to frames.

LLaMA-VID's long-video format (docs/architecture.md §4) interleaves every sampled frame with the subtitle text spoken
around it: ``"<image>sub_0<image>sub_1…"``. This module produces that interleaving as data, a list of
``(timestamp, text)`` pairs keyed by frame timestamps; the processor turns it into tokens.

The SRT/WebVTT parser is our own: the PyPI parsers we tried accept malformed timestamps silently
(``srt`` 3.5.3 reads ``00:00:0x,000`` as 0 s, ``webvtt-py`` 0.6.0 drops the cue), while a user needs the line
number of the mistake. Both formats are small enough to parse carefully in a few dozen lines.
"""

from __future__ import annotations

import codecs
import html
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llamavid.errors import InvalidInputError

from .errors import BackendUnavailableError, MediaError, SubtitleError

__all__ = [
    "SubtitleCue",
    "SubtitleTrack",
    "align_subtitles",
    "decode_subtitle_bytes",
    "interleave_subtitles",
    "parse_srt",
    "parse_webvtt",
    "read_embedded_subtitles",
    "read_subtitles",
    "transcribe",
]

logger = logging.getLogger(__name__)

# Whisper segments below this mean log-probability are mostly hallucinated; the official feature-extraction
# script drops them with the same threshold (docs/architecture.md §4).
WHISPER_MIN_AVG_LOGPROB = -2.0
# Subtitle files larger than this are not subtitles (a feature film's SRT is ~100 KB).
MAX_SUBTITLE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class SubtitleCue:
    """One subtitle: shown from ``start`` to ``end`` seconds, plain text on one line."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class SubtitleTrack:
    """The cues of one subtitle file and the file they came from.

    The CLI reads the file once, before the model loads and with the encoding the user gave, then hands this on:
    alignment, the feature-cache sidecar and messages use the same cues and name the same file.

    Attributes:
        path: the file as given.
        cues: sorted by start time (as :func:`read_subtitles` returns them).
        encoding: the encoding given explicitly, or None when it was detected.
    """

    path: str
    cues: tuple[SubtitleCue, ...]
    encoding: str | None = None

    @classmethod
    def read(cls, path: str | os.PathLike[str], *, encoding: str | None = None) -> SubtitleTrack:
        """Read and parse a file with :func:`read_subtitles`; raises `SubtitleError` naming the file."""
        return cls(os.fspath(path), tuple(read_subtitles(path, encoding=encoding)), encoding)


# ---------------------------------------------------------------------------------------------------------
# Text encodings.

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


# Legacy subtitles are most often Western European; when the detector rates one of these as good as any other
# candidate it is taken. Latin-1 text reads the same in cp1252, which differs only in the C1 control range.
_WESTERN_ENCODINGS = ("cp1252", "latin_1", "iso8859_15")
# Candidates whose chaos (mess) and coherence (language fit) scores are this close count as equally good.
_SCORE_TIE = 0.01


def decode_subtitle_bytes(data: bytes, *, source: str = "<bytes>", encoding: str | None = None) -> str:
    """Decode subtitle bytes: explicit encoding, else BOM, else UTF-8, else UTF-16 by NUL pattern, else detected.

    Other encodings (GB2312, Big5, Shift-JIS, Windows-1251, Windows-1252, ...) are detected with
    charset-normalizer and logged as a warning. When several encodings fit equally well but read differently
    (a file with a handful of non-ASCII characters), guessing would feed the model garbled text, so the file is
    refused and the message asks for the encoding.

    Raises:
        SubtitleError: ``encoding`` was given and does not decode the data, or no encoding was given and none
            can be told with confidence.
    """
    if encoding is not None:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError) as error:
            raise SubtitleError(
                f"{source}: cannot decode as {encoding} ({error}). Pass the file's real encoding "
                "(--subtitle-encoding, encoding= in Python), or omit it to detect the encoding.",
                None if source.startswith("<") else source,
            ) from error
    for bom, name in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(name, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if len(data) >= 4 and data.count(b"\x00") * 3 >= len(data):
        # BOM-less UTF-16: ASCII characters leave a NUL in every other byte.
        name = "utf-16-le" if data[1::2].count(b"\x00") > data[0::2].count(b"\x00") else "utf-16-be"
        return data.decode(name, errors="replace")
    name = _detect_encoding(data, source)
    logger.warning(
        "%s: not UTF-8; decoded as %s (detected). If the text looks wrong, pass the file's encoding with "
        "--subtitle-encoding (encoding= in Python) or convert the file to UTF-8.",
        source,
        name,
    )
    return data.decode(name, errors="replace")


def _detect_encoding(data: bytes, source: str) -> str:
    """The encoding charset-normalizer finds for non-Unicode bytes; refuses a tie between different readings."""
    from charset_normalizer import from_bytes

    path = None if source.startswith("<") else source
    matches = list(from_bytes(data))
    if not matches:
        raise SubtitleError(
            f"{source}: neither UTF-8 nor UTF-16, and no known encoding reads it as text. If this is a subtitle "
            "file, pass its encoding with --subtitle-encoding (encoding= in Python) or convert it to UTF-8.",
            path,
        )
    least_chaos = min(match.chaos for match in matches)
    best = [match for match in matches if match.chaos <= least_chaos + _SCORE_TIE]
    most_coherent = max(match.coherence for match in best)
    best = [match for match in best if match.coherence >= most_coherent - _SCORE_TIE]
    names = [match.encoding for match in best]
    for western in _WESTERN_ENCODINGS:
        if western in names:
            return western
    if len({str(match) for match in best}) == 1:  # str(match) is the text decoded with that encoding
        return best[0].encoding
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise SubtitleError(
        f"{source}: not UTF-8, and its encoding cannot be told with confidence ({len(names)} encodings fit "
        f"equally well but read differently: {shown}). Pass the right one with --subtitle-encoding ENCODING "
        "(encoding= in Python), e.g. gb2312, big5, shift_jis, euc_kr, cp1251 or cp1252, or convert the file "
        "to UTF-8.",
        path,
    )


# ---------------------------------------------------------------------------------------------------------
# SRT and WebVTT parsing.

_TIMING_LINE = re.compile(r"^\s*(?P<start>\S+)\s*-->\s*(?P<end>\S+)(?P<settings>.*)$")
# Hours are optional (WebVTT); a comma or a dot before the milliseconds (both occur in real SRT files).
_TIMESTAMP = re.compile(r"^(?:(?P<h>\d{1,3}):)?(?P<m>\d{1,2}):(?P<s>\d{1,2})[,.](?P<ms>\d{1,3})$")
_MARKUP = re.compile(r"<[^>\n]*>|\{\\[^}\n]*\}")  # HTML-like tags (<i>, <c.red>) and ASS overrides ({\an8})
_SPACES = re.compile(r"\s+")


def _parse_timestamp(value: str, *, source: str, line: int, example: str) -> float:
    match = _TIMESTAMP.match(value)
    if match is None or int(match["m"]) >= 60 or int(match["s"]) >= 60:
        raise SubtitleError(
            f"{source}, line {line}: malformed timestamp {value!r}; expected HH:MM:SS{example[8]}mmm "
            f"(e.g. {example}). Fix that line or re-export the subtitles.",
            None if source.startswith("<") else source,
        )
    hours = int(match["h"] or 0)
    fraction = int(match["ms"].ljust(3, "0")) / 1000
    return hours * 3600 + int(match["m"]) * 60 + int(match["s"]) + fraction


def _clean_text(lines: Sequence[str]) -> str:
    """Drop styling markup and join lines with spaces: the language model reads speech, not layout."""
    text = " ".join(lines)
    text = html.unescape(_MARKUP.sub("", text))
    return _SPACES.sub(" ", text).strip()


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Split into blank-line separated blocks, each with its first line number (1-based)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 1
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line.rstrip())
        elif current:
            blocks.append((start, current))
            current = []
    if current:
        blocks.append((start, current))
    return blocks


def _parse_cues(text: str, *, source: str, webvtt: bool) -> list[SubtitleCue]:
    example = "00:01:02.500" if webvtt else "00:01:02,500"
    blocks = _blocks(text.lstrip("\ufeff"))
    if webvtt:
        if not blocks or not blocks[0][1][0].startswith("WEBVTT"):
            raise SubtitleError(
                f"{source}, line 1: a WebVTT file must start with 'WEBVTT'. Add that header, or use the .srt "
                "extension if this is an SRT file.",
                None if source.startswith("<") else source,
            )
        blocks = blocks[1:]
    cues: list[SubtitleCue] = []
    for first_line, lines in blocks:
        if webvtt and lines[0].split(" ", 1)[0].split("\t", 1)[0] in ("NOTE", "STYLE", "REGION"):
            continue
        timing_at = next((i for i, line in enumerate(lines[:2]) if "-->" in line), None)
        if timing_at is None:
            if cues and not webvtt and not lines[0].strip().isdigit():
                # A blank line inside an SRT cue's text: keep the text with the cue it belongs to.
                previous = cues[-1]
                cues[-1] = SubtitleCue(previous.start, previous.end, _clean_text([previous.text, *lines]))
                continue
            raise SubtitleError(
                f"{source}, line {first_line}: expected a timing line like '{example} --> {example}' "
                f"but found {lines[0][:60]!r}. Check the cue starting at that line.",
                None if source.startswith("<") else source,
            )
        line_number = first_line + timing_at
        match = _TIMING_LINE.match(lines[timing_at])
        if match is None:
            raise SubtitleError(
                f"{source}, line {line_number}: malformed timing line {lines[timing_at][:60]!r}; expected "
                f"'{example} --> {example}'.",
                None if source.startswith("<") else source,
            )
        start = _parse_timestamp(match["start"], source=source, line=line_number, example=example)
        end = _parse_timestamp(match["end"], source=source, line=line_number, example=example)
        if end < start:
            raise SubtitleError(
                f"{source}, line {line_number}: cue ends ({match['end']}) before it starts ({match['start']}). "
                "Swap or fix the two timestamps.",
                None if source.startswith("<") else source,
            )
        content = _clean_text(lines[timing_at + 1 :])
        if content:
            cues.append(SubtitleCue(start, end, content))
    return cues


def parse_srt(text: str, *, source: str = "<srt>") -> list[SubtitleCue]:
    """Parse SubRip text into cues in file order (empty cues dropped, markup removed).

    Raises:
        SubtitleError: Malformed timestamp or cue, naming ``source`` and the line number.
    """
    return _parse_cues(text, source=source, webvtt=False)


def parse_webvtt(text: str, *, source: str = "<webvtt>") -> list[SubtitleCue]:
    """Parse WebVTT text into cues (NOTE/STYLE/REGION blocks and cue settings ignored, markup removed).

    Raises:
        SubtitleError: Missing ``WEBVTT`` header or malformed cue, naming ``source`` and the line number.
    """
    return _parse_cues(text, source=source, webvtt=True)


def read_subtitles(path: str | os.PathLike[str], *, encoding: str | None = None) -> list[SubtitleCue]:
    """Read an ``.srt`` or ``.vtt`` file (format chosen by extension, else by a ``WEBVTT`` header).

    Args:
        path: Subtitle file.
        encoding: Text encoding (``--subtitle-encoding``); detected when ``None`` (see
            :func:`decode_subtitle_bytes`).

    Returns:
        Cues sorted by start time.

    Raises:
        SubtitleError: Unreadable, of an encoding that cannot be told, malformed, or holding no cue at all
            (usually the wrong file).
    """
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "not found"
        raise SubtitleError(f"{p}: subtitle file {what}. Expected an .srt or .vtt file.", p)
    size = p.stat().st_size
    if size == 0:
        raise SubtitleError(f"{p}: subtitle file is empty (0 bytes). Export the subtitles again.", p)
    if size > MAX_SUBTITLE_BYTES:
        raise SubtitleError(
            f"{p}: {size / 2**20:.0f} MB is too large for a subtitle file (limit "
            f"{MAX_SUBTITLE_BYTES // 2**20} MB); is this the video instead of its subtitles?",
            p,
        )
    text = decode_subtitle_bytes(p.read_bytes(), source=str(p), encoding=encoding)
    is_vtt = p.suffix.lower() == ".vtt" or (
        p.suffix.lower() != ".srt" and text.lstrip("\ufeff").startswith("WEBVTT")
    )
    cues = parse_webvtt(text, source=str(p)) if is_vtt else parse_srt(text, source=str(p))
    if not cues:
        raise SubtitleError(
            f"{p}: no subtitle cue found; expected blocks like '1 / 00:00:01,000 --> 00:00:02,000 / text'. "
            "Check that this is the right file.",
            p,
        )
    return sorted(cues, key=lambda cue: (cue.start, cue.end))


def read_embedded_subtitles(
    path: str | os.PathLike[str], *, stream_index: int | None = None
) -> list[SubtitleCue]:
    """Read a text subtitle stream embedded in a container (SRT/ASS in MKV, mov_text in MP4).

    Times are relative to the container start, like :func:`~llamavid.data.video.decode_video`'s
    timestamps, so both align without an offset.

    Args:
        path: Video container.
        stream_index: Container index of the subtitle stream; the first subtitle stream when ``None``.

    Raises:
        SubtitleError: No (such) subtitle stream, a bitmap-only stream (DVD/Blu-ray: needs OCR), or no cue.
        MediaError: The container cannot be opened.
    """
    import av

    from .video import _check_path

    p = _check_path(path)
    try:
        container = av.open(str(p), metadata_errors="replace")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise MediaError(f"{p}: cannot open as a media container ({error}).", p) from error
    with container:
        streams = list(container.streams.subtitles)
        if stream_index is not None:
            streams = [s for s in streams if s.index == stream_index]
        if not streams:
            available = [s.index for s in container.streams.subtitles]
            raise SubtitleError(
                f"{p}: no subtitle stream{'' if stream_index is None else f' with index {stream_index}'} "
                f"(subtitle streams: {available or 'none'}). Pass a .srt/.vtt file instead.",
                p,
            )
        stream = streams[0]
        origin = container.start_time / 1_000_000 if container.start_time is not None else 0.0
        cues: list[SubtitleCue] = []
        bitmap_only = False
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.time_base is None:
                    continue
                start = float(packet.pts * packet.time_base) - origin
                length = float(packet.duration * packet.time_base) if packet.duration else 0.0
                for subtitle in packet.decode():
                    text, is_bitmap = _subtitle_text(subtitle)
                    bitmap_only = bitmap_only or is_bitmap
                    if text:
                        cues.append(SubtitleCue(start, start + length, text))
        except (av.FFmpegError, ValueError) as error:
            raise SubtitleError(
                f"{p}: subtitle stream {stream.index} cannot be decoded ({error}).", p
            ) from error
    if not cues:
        hint = " It holds pictures of text (DVD/Blu-ray style), which would need OCR." if bitmap_only else ""
        raise SubtitleError(
            f"{p}: subtitle stream {stream.index} has no text cue.{hint} Pass a .srt file.", p
        )
    return sorted(cues, key=lambda cue: (cue.start, cue.end))


def _subtitle_text(subtitle: Any) -> tuple[str, bool]:
    """Text of one decoded subtitle rect, and whether it was a bitmap."""
    dialogue = getattr(subtitle, "dialogue", None)
    if dialogue:
        raw = bytes(dialogue).decode("utf-8", "replace")
        return _clean_text(raw.replace("\\N", "\n").splitlines()), False
    text = getattr(subtitle, "text", None)
    if text:
        raw = bytes(text).decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        return _clean_text(raw.splitlines()), False
    return "", getattr(subtitle, "type", None) not in (None, b"text", b"ass", "text", "ass")


# ---------------------------------------------------------------------------------------------------------
# Alignment to frames (docs/architecture.md §4).


def align_subtitles(
    cues: Sequence[SubtitleCue],
    timestamps: Sequence[float] | np.ndarray,
    *,
    duration: float | None = None,
    source: str = "<subtitles>",
) -> list[str]:
    """Assign each cue to one sampled frame, the way LLaMA-VID's long-video data was built.

    For each cue in order, a pointer advances over the frames while ``frame_time < cue.end``, and the cue
    goes to the frame just before the pointer: the last frame shown before the cue ends. The pointer never
    moves back, so cues must be in time order. Unlike the official script, a cue ending at or before the
    first frame goes to the **first** frame (the original indexes ``-1`` and wraps to the last frame; spec
    §5.4 and §11 quirk 16).

    Cues starting at or after the end of the video (``duration``) are dropped with a logged warning, since they
    describe something the frames do not show; a cue running past the end stays on the last frame. A trimmed
    clip with the subtitles of the whole film is normal, so even when no cue is left this is a warning (every
    frame then gets ``""``), not an error.

    Args:
        cues: Cues in time order (as :func:`read_subtitles` returns them).
        timestamps: Frame timestamps in seconds, increasing (``Frames.timestamps``).
        duration: Length of the video; when ``None``, the last timestamp plus one median frame step.
        source: Name used in messages.

    Returns:
        One string per frame: the texts of its cues joined by spaces (``""`` for frames without speech).

    Raises:
        ValueError: No frames, or timestamps not increasing.
    """
    times = np.asarray(timestamps, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise InvalidInputError(f"timestamps must be a non-empty 1-D sequence, got shape {times.shape}.")
    if times.size > 1 and not np.all(np.diff(times) > 0):
        raise InvalidInputError("timestamps must be strictly increasing (pass Frames.timestamps unchanged).")
    if duration is None:
        step = float(np.median(np.diff(times))) if times.size > 1 else 1.0
        duration = float(times[-1]) + step
    texts: list[list[str]] = [[] for _ in range(times.size)]
    kept = dropped = 0
    pointer = 0
    for cue in cues:
        if cue.start >= duration:
            dropped += 1
            continue
        while pointer < times.size and times[pointer] < cue.end:
            pointer += 1
        texts[max(pointer - 1, 0)].append(cue.text)
        kept += 1
    if dropped:
        outcome = (
            "no cue is left, so the clip is used without subtitles"
            if kept == 0
            else f"the {kept} earlier cue(s) are kept"
        )
        logger.warning(
            "%s: %d of the %d subtitle cues start after the clip ends (clip length %.1f s, first dropped cue at "
            "%.1f s) and were dropped; %s. If these are the subtitles of this video, they may need a time offset.",
            source,
            dropped,
            kept + dropped,
            duration,
            min(c.start for c in cues if c.start >= duration),
            outcome,
        )
    return [" ".join(parts) for parts in texts]


def interleave_subtitles(
    cues: Sequence[SubtitleCue],
    timestamps: Sequence[float] | np.ndarray,
    *,
    duration: float | None = None,
    source: str = "<subtitles>",
) -> list[tuple[float, str]]:
    """The long-video interleaving as data: ``[(frame_time, text_after_that_frame), …]``.

    The processor writes it as ``"<image>" + text`` per pair, giving the ``"<image>sub_0<image>sub_1…"``
    string of docs/architecture.md §4. Arguments and errors as :func:`align_subtitles`.
    """
    texts = align_subtitles(cues, timestamps, duration=duration, source=source)
    return [(float(t), text) for t, text in zip(np.asarray(timestamps, dtype=np.float64), texts, strict=True)]


# ---------------------------------------------------------------------------------------------------------
# Speech to text (optional extra).


def transcribe(
    path: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    *,
    device: str = "cpu",
    compute_type: str = "int8",
    language: str | None = None,
    min_avg_logprob: float = WHISPER_MIN_AVG_LOGPROB,
) -> list[SubtitleCue]:
    """Transcribe a media file's speech into cues with faster-whisper (the ``[asr]`` extra).

    Mirrors the official custom-video script: segments with mean log-probability below ``-2`` are dropped
    and leading spaces stripped. Only a local model directory is accepted, never a size name such as
    ``"large-v3"``, because a name would make faster-whisper download weights at run time.

    Args:
        path: Video or audio file.
        model_dir: Folder holding a CTranslate2 Whisper model (``model.bin``, ``config.json``, tokenizer).
        device: ``"cpu"`` or ``"cuda"``.
        compute_type: CTranslate2 compute type (``int8`` is fast on CPU).
        language: Spoken language code, or ``None`` to detect it.
        min_avg_logprob: Segments below this mean log-probability are discarded.

    Raises:
        BackendUnavailableError: faster-whisper is not installed.
        SubtitleError: ``model_dir`` is not a model folder.
    """
    folder = Path(model_dir)
    if not (folder.is_dir() and (folder / "model.bin").is_file()):
        raise SubtitleError(
            f"{folder}: not a faster-whisper model folder (expected a directory with model.bin). Pass the path "
            "of a CTranslate2 Whisper model on disk (model names are not accepted: nothing is downloaded), or "
            "supply subtitles as an .srt/.vtt file instead.",
            folder,
        )
    try:
        from faster_whisper import WhisperModel
    except ImportError as error:
        raise BackendUnavailableError(
            "Speech-to-text needs faster-whisper, which is not installed. Install it with "
            "`pip install 'llamavid[asr]'`, or supply subtitles as an .srt/.vtt file instead."
        ) from error
    from .video import _check_path

    media = _check_path(path)
    model = WhisperModel(str(folder), device=device, compute_type=compute_type, local_files_only=True)
    segments, _ = model.transcribe(str(media), language=language)
    cues = [
        SubtitleCue(float(s.start), float(s.end), s.text.lstrip())
        for s in segments
        if s.avg_logprob >= min_avg_logprob and s.text.strip() and math.isfinite(s.start)
    ]
    logger.info("%s: transcribed %d segments with %s.", media, len(cues), folder)
    return cues
