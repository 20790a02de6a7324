"""Speech-to-text for live sessions (the ``[asr]`` extra): the stream's own speech as timed cues.

`LiveTranscriber` receives a copy of the bytes a live session reads from its source (a container stream such as
MPEG-TS or Matroska), demuxes the audio stream on its own thread with PyAV, resamples it to 16 kHz mono signed
16-bit and runs pocketsphinx's offline recogniser (its en-us model ships inside the wheel, so nothing is
downloaded). pocketsphinx's endpointer splits the audio into utterances; each recognised utterance becomes one
`SubtitleCue` in stream time (the origin the video frames use: the container's start time), and the session
aligns those cues to frames exactly as it aligns a growing subtitle file's.

The copy is handed over through a bounded queue, so a recogniser that falls behind slows the reader instead of
growing memory; a recogniser that fails (or a stream without audio) drops the copy and says why in `note`.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from llamavid.errors import DependencyError, InvalidInputError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
_QUEUE_CHUNKS = 256  # queued reads of the source (64 KiB each): at most ~16 MiB waits for the recogniser
_POLL_S = 0.1


def load_recogniser() -> tuple[Any, Any]:
    """pocketsphinx's ``Decoder`` and ``Endpointer`` classes.

    Raises:
        DependencyError: pocketsphinx is not installed.
    """
    try:
        from pocketsphinx import Decoder, Endpointer
    except ImportError as error:
        raise DependencyError(
            "Speech-to-text for live sessions needs pocketsphinx, which is not installed. Install it with "
            '`pip install "llamavid[asr]"`, or pass a growing subtitle file instead (--subtitles).'
        ) from error
    return Decoder, Endpointer


class _QueueReader:
    """A file-like ``read(n)`` over the queued copy of the source bytes (PyAV demuxes through it)."""

    def __init__(self, chunks: queue.Queue[bytes | None], stop: threading.Event) -> None:
        self.chunks = chunks
        self.stop = stop
        self.rest = b""
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        while not self.rest and not self.ended:
            if self.stop.is_set():
                return b""
            try:
                chunk = self.chunks.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if chunk is None:
                self.ended = True
            else:
                self.rest = chunk
        size = size if size and size > 0 else len(self.rest)
        data, self.rest = self.rest[:size], self.rest[size:]
        return data

    def seekable(self) -> bool:
        return False


class LiveTranscriber:
    """Recognised utterances of a live container stream, as cues in stream time.

    Args:
        name: the source, for messages.

    Attributes:
        path: what `align_subtitles` names in its messages (``<speech-to-text: NAME>``).
        note: why no (more) cues come, or ``""``.

    Raises:
        DependencyError: pocketsphinx is not installed.
    """

    def __init__(self, name: str) -> None:
        self._decoder_class, self._endpointer_class = load_recogniser()
        self.name = name
        self.path = f"<speech-to-text: {name}>"
        self.note = ""
        self.offset = 0.0  # added to every cue (a resumed pipe continues after the stored frames)
        self._cues: list[Any] = []
        self._lock = threading.Lock()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._dropping = False
        self._thread = threading.Thread(target=self._run, name=f"llamavid-asr-{name}", daemon=True)
        self._thread.start()

    def cues(self) -> list[Any]:
        """The utterances recognised so far, sorted by start time."""
        with self._lock:
            return list(self._cues)

    def feed(self, data: bytes) -> None:
        """A copy of bytes just read from the source (blocks while the queue is full, unless stopped)."""
        while not self._dropping and not self._stop.is_set():
            try:
                self._chunks.put(data, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def finish(self, timeout: float = 30.0) -> None:
        """The source ended: recognise what is queued (at most `timeout` seconds), then stop."""
        self.feed_end()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.note = self.note or f"speech-to-text: still behind after {timeout:g} s at the end; stopped"
            self._stop.set()

    def feed_end(self) -> None:
        while not self._dropping and not self._stop.is_set():
            try:
                self._chunks.put(None, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Stop at once (the session closed)."""
        self._stop.set()
        self._thread.join(5.0)

    def wait(self, timeout: float) -> bool:
        """Whether recognition finished within `timeout` seconds (after `finish`)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # The recogniser thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        import av

        reader = _QueueReader(self._chunks, self._stop)
        container = None
        try:
            container = av.open(reader, mode="r")
            audio = next((stream for stream in container.streams if stream.type == "audio"), None)
            if audio is None:
                self.note = f"speech-to-text: {self.name} has no audio stream"
                return
            origin = container.start_time / 1_000_000 if container.start_time is not None else None
            if origin is None and audio.start_time is not None and audio.time_base is not None:
                origin = float(audio.start_time * audio.time_base)
            self._recognise(container, audio, origin or 0.0)
        except Exception as error:  # the video keeps going without speech
            if not self._stop.is_set():
                logger.warning("speech-to-text for %s stopped: %s", self.name, error)
                self.note = f"speech-to-text stopped: {error}"
        finally:
            self._dropping = True  # the reader never waits on a recogniser that has stopped
            if container is not None:
                container.close()

    def _recognise(self, container: Any, audio: Any, origin: float) -> None:
        import av

        decoder = self._decoder_class(samprate=SAMPLE_RATE, loglevel="FATAL")
        endpointer = self._endpointer_class(sample_rate=SAMPLE_RATE)
        size = endpointer.frame_bytes
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        start: float | None = None  # stream time of the first sample fed to the endpointer
        pending = b""

        def utterances(pcm: bytes, last: bool = False) -> None:
            nonlocal pending
            pending += pcm
            while len(pending) >= size or (last and pending):
                frame, pending = pending[:size], pending[size:]
                before = endpointer.in_speech
                last_frame = len(frame) < size
                speech = endpointer.end_stream(frame) if last_frame else endpointer.process(frame)
                if speech is None:
                    continue
                if not before:
                    decoder.start_utt()
                decoder.process_raw(speech)
                if not endpointer.in_speech:
                    self._end_utterance(decoder, endpointer, start or 0.0)
            if last and endpointer.in_speech:
                self._end_utterance(decoder, endpointer, start or 0.0)

        for packet in container.demux(audio):
            if self._stop.is_set():
                return
            for frame in packet.decode():
                if start is None:
                    start = max(0.0, (frame.time or 0.0) - origin)
                for out in resampler.resample(frame):
                    utterances(out.to_ndarray().tobytes())
        for out in resampler.resample(None):
            utterances(out.to_ndarray().tobytes())
        utterances(b"", last=True)

    def _end_utterance(self, decoder: Any, endpointer: Any, start: float) -> None:
        from llamavid.data.subtitles import SubtitleCue

        decoder.end_utt()
        hypothesis = decoder.hyp()
        text = " ".join((hypothesis.hypstr if hypothesis is not None else "").split())
        if not text:
            return
        begin = self.offset + start + float(endpointer.speech_start)
        end = max(begin + 0.01, self.offset + start + float(endpointer.speech_end))
        with self._lock:
            self._cues.append(SubtitleCue(begin, end, text))
            self._cues.sort(key=lambda cue: cue.start)


def check_source(raw: bool, camera: bool, name: str) -> None:
    """Refuse speech-to-text for sources that carry no audio (raw frames, V4L2 cameras)."""
    if raw or camera:
        what = "raw RGB frames" if raw else "a V4L2 camera"
        raise InvalidInputError(
            f"{name}: speech-to-text needs the audio of a container stream (MPEG-TS, Matroska), but this source "
            f"is {what}, which has no audio; drop --asr or pass captions with --subtitles."
        )
