"""Web UI (Gradio 6): upload a video or image (+ subtitles), watch it, chat about it, see which frames mattered.

Holds no model logic: loading, chat turns, streaming and relevance all go through `Engine` and `ChatSession`.
Runs in one process, with analytics off and no request to any CDN (system fonts only), so it works
offline and leaks nothing about what users upload.

Uploads live on the server only until they are encoded: the features go to the feature cache, the file is then
deleted, and the page plays the user's own copy of the file (a browser-local object URL). Gradio refuses files
over ``max_upload_mb`` before they are stored. Model work (encoding, answering) runs one request at a time.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import filecmp
import html
import io
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from llamavid.data.subtitles import SubtitleTrack  # noqa: E402
from llamavid.inference.engine import Engine  # noqa: E402
from llamavid.inference.media import PreparedMedia, subtitles_for_frames  # noqa: E402
from llamavid.inference.results import AttentionResult  # noqa: E402
from llamavid.inference.session import ChatSession  # noqa: E402

logger = logging.getLogger(__name__)

MEDIA_TYPES = [".mp4", ".mkv", ".webm", ".mov", ".avi", ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"]
IMAGE_TYPES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
DEFAULT_MAX_UPLOAD_MB = 200.0
TOP_FRAMES = 5
# Gradio's default theme pulls Google Fonts; system font stacks keep the page free of third-party requests.
_SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "monospace"]
# Model work shares one queue: a question asked while its video is still being encoded waits for it instead
# of finding no video, and one engine never runs two requests at once.
_ENGINE_QUEUE = "llamavid-engine"

_PLAYER_HTML = """
<div class="llv-player">
  <video controls playsinline preload="metadata" hidden></video>
  <img alt="the uploaded image" hidden>
  <p class="llv-note">Upload a video or an image to watch it here.</p>
</div>
"""
_PLAYER_CSS = """
.llv-player { background: var(--block-background-fill); border: 1px solid var(--block-border-color);
  border-radius: var(--block-radius); padding: 6px; }
.llv-player video, .llv-player img { display: block; width: 100%; max-height: 360px; object-fit: contain;
  background: #111; border-radius: 4px; }
.llv-player [hidden] { display: none; }
.llv-note { margin: 4px 2px; font-size: 0.85em; color: var(--body-text-color-subdued); }
"""
# Plays the file the user picked from the browser's own copy (the server deletes its copy once encoded), or the
# URL the server sends for files it keeps (the built-in example). `value` is {state, name, kind, url}.
_PLAYER_JS = """
const UNPLAYABLE = 'This browser cannot play this format; the model still sees its frames.';
let local = null;
let pending = false;
let broken = null;
const video = element.querySelector('video');
const image = element.querySelector('img');
const note = element.querySelector('.llv-note');
function show(kind, url, text) {
  video.hidden = kind !== 'video' || url === broken;
  image.hidden = kind !== 'image';
  if (kind === 'video' && video.getAttribute('src') !== url) { video.setAttribute('src', url); video.load(); }
  if (kind === 'image' && image.getAttribute('src') !== url) { image.setAttribute('src', url); }
  if (kind !== 'video') { video.pause(); }
  if (kind === 'video' && url === broken) { text = UNPLAYABLE; }
  note.textContent = text || '';
  note.hidden = !text;
}
function pick(file) {
  if (!file) { return; }
  if (local) { URL.revokeObjectURL(local.url); }
  const kind = file.type.startsWith('image/') ? 'image' : 'video';
  local = { name: file.name, kind: kind, url: URL.createObjectURL(file) };
  pending = true;
  show(kind, local.url, 'Encoding the frames…');
}
function render() {
  const value = props.value || {};
  if (value.state !== 'ready') {
    if (!pending) { show(null, null, 'Upload a video or an image to watch it here.'); }
    return;
  }
  pending = false;
  if (value.url) { show(value.kind, value.url, value.caption); }
  else if (local && local.name === value.name) { show(local.kind, local.url, value.caption); }
  else { show(null, null, 'No preview: the file was not picked in this page.'); }
}
video.addEventListener('error', () => {
  broken = video.getAttribute('src');
  video.hidden = true;
  note.textContent = UNPLAYABLE;
  note.hidden = false;
});
document.addEventListener('change', (event) => {
  const input = event.target;
  if (input instanceof HTMLInputElement && input.type === 'file' && input.closest('#media-upload')) {
    pick(input.files && input.files[0]);
  }
}, true);
document.addEventListener('drop', (event) => {
  if (event.target instanceof Element && event.target.closest('#media-upload') && event.dataTransfer) {
    pick(event.dataTransfer.files[0]);
  }
}, true);
watch('value', render);
render();
"""
_TIMELINE_CSS = """
.llv-timeline { font-size: 0.85em; }
.llv-timeline h4 { margin: 4px 0; font-size: 1em; font-weight: 600; }
.llv-timeline svg { display: block; width: 100%; height: 88px; background: var(--block-background-fill);
  border: 1px solid var(--block-border-color); border-radius: 4px; cursor: pointer; }
.llv-timeline rect.llv-bar { fill: #3b6fd8; }
.llv-timeline rect.llv-bar.llv-top { fill: #e4572e; }
.llv-timeline rect.llv-hit { fill: transparent; }
.llv-timeline rect.llv-hit:hover { fill: rgba(0, 0, 0, 0.08); }
.llv-timeline line.llv-cursor { stroke: #111; stroke-width: 2; vector-effect: non-scaling-stroke; }
.llv-axis { display: flex; justify-content: space-between; color: var(--body-text-color-subdued);
  margin: 2px 0 8px; font-variant-numeric: tabular-nums; }
.llv-top-frames { display: flex; flex-wrap: wrap; gap: 6px; }
.llv-top-frames button { display: flex; flex-direction: column; align-items: center; gap: 2px; padding: 3px;
  border: 1px solid var(--block-border-color); border-radius: 4px; background: var(--block-background-fill);
  cursor: pointer; font: inherit; font-variant-numeric: tabular-nums; }
.llv-top-frames button:hover { border-color: #e4572e; }
.llv-top-frames img { width: 72px; height: 72px; image-rendering: pixelated; }
.llv-timeline img.llv-heat { width: 192px; height: 192px; image-rendering: pixelated; }
"""
# A click on a bar or a top frame seeks the player to that frame; the cursor follows playback.
_TIMELINE_JS = """
function player() { return document.querySelector('#player video'); }
element.addEventListener('click', (event) => {
  const target = event.target instanceof Element ? event.target.closest('[data-t]') : null;
  const video = player();
  if (!target || !video || video.hidden) { return; }
  video.pause();
  video.currentTime = parseFloat(target.getAttribute('data-t'));
});
document.addEventListener('timeupdate', (event) => {
  const cursor = element.querySelector('line.llv-cursor');
  const svg = element.querySelector('svg[data-duration]');
  if (!cursor || !svg || event.target !== player()) { return; }
  const x = 1000 * event.target.currentTime / parseFloat(svg.getAttribute('data-duration'));
  cursor.setAttribute('x1', x);
  cursor.setAttribute('x2', x);
}, true);
"""


@dataclasses.dataclass
class _Loaded:
    """What one browser tab holds: the upload's name, its encoded media without subtitles, the chat about it."""

    name: str
    base: PreparedMedia
    session: ChatSession


def _clock(seconds: float) -> str:
    """``75.0`` -> ``"1:15"``, ``2.5`` -> ``"0:02.5"``, ``3725`` -> ``"1:02:05"`` (tenths only when not whole)."""
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    tenths = int(round((seconds - whole) * 10))
    return f"{text}.{tenths}" if 0 < tenths < 10 else text


def describe_sampling(media: PreparedMedia, name: str, max_frames: int | None) -> str:
    """The status line: what the model sees of the upload, with the sampling it really got."""
    if media.is_image:
        return f"**Ready:** {name} (an image). Ask a question."
    frames = media.num_frames
    tokens = "" if media.features is None else f", {frames * 2} visual tokens"
    rate = media.sampled_fps
    sampled = f"{frames} frame{'s' if frames != 1 else ''}"
    if rate is not None:
        sampled += f" at {rate:.2g} fps"
    sampled += f" from {_clock(media.duration)}"
    if media.frames_capped:
        sampled += f" (spread evenly: at most {max_frames} frames per video)"
    subtitles = " with subtitles" if media.subtitles is not None else ""
    return f"**Ready:** {name}: {sampled}{tokens}{subtitles}. Ask a question."


def _percent(share: float) -> str:
    return f"{share:.1%}" if share < 0.1 else f"{share:.0%}"


def _png_data_url(picture: Any) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def relevance_html(result: AttentionResult, duration: float, is_image: bool = False) -> str:
    """A clickable timeline of frame relevance: one bar per sampled frame at its time, and the top frames.

    Bars are placed by timestamp on a 0..1000 axis (so uneven sampling shows as uneven spacing); every bar and
    top-frame button carries ``data-t`` (seconds) for the page script to seek the player with. An image has no
    timeline: it gets its patch attention only.
    """
    question = html.escape(result.question)
    if is_image:
        picture = _frame_picture(result, 0)
        return (
            f'<div class="llv-timeline"><h4>Where the context token looked for “{question}”</h4>'
            f'<img class="llv-heat" src="{_png_data_url(picture)}" alt="patch attention"></div>'
        )
    timestamps = np.asarray(result.timestamps, dtype=np.float64)
    relevance = np.asarray(result.relevance, dtype=np.float64)
    count = len(relevance)
    span = max(float(duration), float(timestamps[-1]) + 1.0 if count else 1.0)
    peak = float(relevance.max()) if count else 1.0
    top = [int(index) for index in np.argsort(-relevance, kind="stable")[: min(TOP_FRAMES, count)]]
    width = max(1000.0 / max(count, 1) * 0.8, 1.5)
    bars, hits = [], []
    for index in range(count):
        x = 1000.0 * float(timestamps[index]) / span
        height = 80.0 * float(relevance[index]) / (peak or 1.0)
        label = f"frame {index + 1} at {_clock(timestamps[index])}: {_percent(relevance[index])}"
        css = "llv-bar llv-top" if index in top else "llv-bar"
        bars.append(
            f'<rect class="{css}" x="{x:.2f}" y="{84 - height:.2f}" width="{width:.2f}" height="{height:.2f}" '
            f'data-t="{timestamps[index]:.3f}"><title>{label}</title></rect>'
        )
        hits.append(
            f'<rect class="llv-hit" x="{x - width / 2:.2f}" y="0" width="{2 * width:.2f}" height="88" '
            f'data-t="{timestamps[index]:.3f}"><title>{label}</title></rect>'
        )
    ticks = "".join(f"<span>{_clock(span * fraction)}</span>" for fraction in (0, 0.25, 0.5, 0.75, 1))
    buttons = []
    for index in top:
        picture = _frame_picture(result, index)
        buttons.append(
            f'<button type="button" data-t="{timestamps[index]:.3f}" title="play from {_clock(timestamps[index])}">'
            f'<img src="{_png_data_url(picture)}" alt="frame {index + 1}">'
            f"<span>{_clock(timestamps[index])} · {_percent(relevance[index])}</span></button>"
        )
    return (
        '<div class="llv-timeline">'
        f"<h4>Frame relevance for “{question}”: {count} frames, the top {len(top)} in red; click to play</h4>"
        f'<svg viewBox="0 0 1000 88" preserveAspectRatio="none" data-duration="{span:.3f}" role="img" '
        f'aria-label="frame relevance over time">{"".join(bars)}{"".join(hits)}'
        '<line class="llv-cursor" x1="0" x2="0" y1="0" y2="88"></line></svg>'
        f'<div class="llv-axis">{ticks}</div>'
        f'<div class="llv-top-frames">{"".join(buttons)}</div></div>'
    )


def _frame_picture(result: AttentionResult, index: int) -> Any:
    """The frame's thumbnail with its patch attention overlaid (the strip's tile for that one frame)."""
    one = AttentionResult(
        question=result.question,
        timestamps=result.timestamps[index : index + 1],
        relevance=result.relevance[index : index + 1],
        weights=result.weights[index : index + 1],
        thumbnails=result.thumbnails[index : index + 1],
    )
    strip = one.strip()
    side = strip.width
    return strip.crop((0, 0, side, side))


def _upload_folder() -> Path:
    """Where Gradio stores uploads (what `gradio.utils.get_upload_folder` reads)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def _private_upload_folder() -> None:
    """Give this process its own upload folder, removed at exit, unless ``GRADIO_TEMP_DIR`` already names one.

    Gradio names an upload's folder after its content, so in a shared folder two servers (or two tabs) given
    the same file share one path, and deleting it after encoding would pull it from under the other.
    """
    if not os.environ.get("GRADIO_TEMP_DIR"):
        folder = tempfile.mkdtemp(prefix="llamavid-webui-uploads-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["GRADIO_TEMP_DIR"] = folder


def discard_upload(path: str | os.PathLike[str] | None) -> None:
    """Delete an uploaded file (and its folder, when empty) from Gradio's upload folder; other paths are kept."""
    if not path:
        return
    file = Path(path).resolve()
    folder = _upload_folder()
    if folder not in file.parents:
        return
    file.unlink(missing_ok=True)
    if file.parent != folder:
        with contextlib.suppress(OSError):  # not empty: Gradio keeps other files there
            file.parent.rmdir()


def _example(engine: Engine) -> tuple[Path, str]:
    """Write the example clip once per process (removed at exit) and return ``(path, question)``.

    A trained model gets a held-out clip of the synthetic world it learned, so its answer can be right; the
    random fallback gets the moving-square clip. Both are H.264 MP4s, which every browser plays.
    """
    from llamavid.demo import SAMPLE_FRAME_SIZE, encode_mp4, synthetic_question_clip, write_demo_video

    folder = Path(tempfile.mkdtemp(prefix="llamavid-webui-examples-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    if engine.is_random:
        return write_demo_video(folder / "red_square.mp4", seconds=6), "Which way does the red square move?"
    frames, question, _ = synthetic_question_clip(seed=1, size=SAMPLE_FRAME_SIZE)
    return encode_mp4(frames, folder / "synthetic_clip.mp4"), question


_LIVE_TIMELINE_CSS = """
.llv-live-timeline svg { display: block; width: 100%; height: 64px; background: var(--block-background-fill);
  border: 1px solid var(--block-border-color); border-radius: 4px; }
.llv-live-timeline rect { fill: #3b6fd8; }
.llv-live-timeline rect.llv-top { fill: #e4572e; }
.llv-live-timeline h4 { margin: 4px 0; font-size: 0.9em; font-weight: 600; }
.llv-live-timeline .llv-axis { display: flex; justify-content: space-between; font-size: 0.85em;
  color: var(--body-text-color-subdued); font-variant-numeric: tabular-nums; }
"""


def live_timeline_html(question: str, timestamps: np.ndarray, relevance: np.ndarray) -> str:
    """Frame relevance of a live stream so far for `question`: one bar per frame at its stream time, the top
    frames in red (an SVG that needs no script; the stream has no player to seek)."""
    count = len(relevance)
    if not count:
        return ""
    span = float(timestamps[-1]) + 1.0
    peak = float(relevance.max()) or 1.0
    top = set(np.argsort(-relevance, kind="stable")[: min(TOP_FRAMES, count)].tolist())
    step = max(1, count // 1000)  # at most about 1,000 bars (the strongest of each group of frames)
    width = max(1000.0 / max(count / step, 1) * 0.8, 1.0)
    bars = []
    for first in range(0, count, step):
        index = first + int(np.argmax(relevance[first : first + step]))
        x = 1000.0 * float(timestamps[index]) / span
        height = 60.0 * float(relevance[index]) / peak
        css = ' class="llv-top"' if index in top else ""
        label = f"{_clock(float(timestamps[index]))}: {_percent(float(relevance[index]))}"
        bars.append(
            f'<rect{css} x="{x:.2f}" y="{62 - height:.2f}" width="{width:.2f}" height="{height:.2f}">'
            f"<title>{label}</title></rect>"
        )
    best = ", ".join(_clock(float(timestamps[index])) for index in sorted(top, key=lambda i: -relevance[i]))
    ticks = "".join(f"<span>{_clock(span * fraction)}</span>" for fraction in (0, 0.25, 0.5, 0.75, 1))
    return (
        '<div class="llv-live-timeline">'
        f"<h4>Relevance so far for “{html.escape(question)}”: {count} frames; most relevant at {best}</h4>"
        f'<svg viewBox="0 0 1000 64" preserveAspectRatio="none" role="img" aria-label="frame relevance">'
        f'{"".join(bars)}</svg><div class="llv-axis">{ticks}</div></div>'
    )


class LiveTab:
    """What the web UI's Live tab does, one method per control (the callbacks hold no other logic).

    Sessions are opened through a `LiveRegistry` with the server's rules: sources are files or FIFOs under
    `allowed_roots` (symlinks resolved), never stdin or a network URL, at most `max_sessions` at once.

    Args:
        engine: the loaded engine.
        allowed_roots: folders whose files and FIFOs may be watched (none: the tab only says how to allow some).
        fps: frames sampled per second of stream.
        max_sessions: live sessions open at once over all browser tabs.
        max_new_tokens: answer length limit (default: the engine's).
    """

    def __init__(
        self,
        engine: Engine,
        allowed_roots: list[str] | tuple[str, ...] = (),
        fps: float = 1.0,
        max_sessions: int = 2,
        max_new_tokens: int | None = None,
    ) -> None:
        from llamavid.serve.app import ServerConfig
        from llamavid.serve.live_routes import LiveRegistry

        self.engine = engine
        self.max_new_tokens = max_new_tokens
        config = ServerConfig(allowed_roots=tuple(Path(root) for root in allowed_roots), fps=fps)
        self.registry = LiveRegistry(engine, config, max_sessions=max_sessions)

    @property
    def enabled(self) -> bool:
        return bool(self.registry.roots)

    def start(self, source: str, raw_size: str, previous: str | None) -> tuple[str, str]:
        """Open a session on `source` (a path under an allowed root; ``raw_size`` ``"WxH"`` for raw RGB frames);
        the tab's previous session is closed first. Returns ``(session id, status line)``."""
        from llamavid.serve.app import APIError
        from llamavid.serve.live_routes import LiveSessionRequest

        self.stop(previous)
        if not source or not source.strip():
            raise gr.Error("Give the path of a growing video file or a FIFO to watch.")
        try:
            request = LiveSessionRequest(source=source.strip(), raw_size=raw_size.strip() or None)
            status = self.registry.create(request)
        except APIError as error:
            raise gr.Error(error.message) from None
        except ValueError as error:  # MediaError and bad options from the session itself
            raise gr.Error(str(error)) from None
        return str(status["session_id"]), self.status_line(str(status["session_id"]))

    def _session(self, session_id: str | None) -> Any:
        from llamavid.serve.app import APIError

        if not session_id:
            return None
        try:
            return self.registry.get(session_id)
        except APIError:
            return None

    def status_line(self, session_id: str | None) -> str:
        """Position, lag, frames/s and what happened (a stall, the end, damaged data), in one line."""
        session = self._session(session_id)
        if session is None:
            return "No live session. Start one from a growing file or a FIFO."
        return f"`{session.status.line()}`"

    def refresh(self, session_id: str | None, question: str | None) -> tuple[Any, str, Any]:
        """What the timer shows: ``(newest frame, status line, relevance timeline of the last question)``."""
        session = self._session(session_id)
        if session is None:
            return None, self.status_line(None), gr.skip()
        timeline: Any = gr.skip()
        if question and session.status.frames:
            times, relevance = session.relevance(question)  # scores of stored chunks are kept: cheap
            timeline = live_timeline_html(question, times, relevance)
        return session.latest_frame(), self.status_line(session_id), timeline

    def ask(
        self, message: str, window: str, history: list[dict[str, Any]], session_id: str | None
    ) -> tuple[list[dict[str, Any]], str, str, Any]:
        """Answer about the stream so far (or the last `window`): ``(chat, cleared box, question, timeline)``."""
        session = self._session(session_id)
        if session is None:
            raise gr.Error("Start a live session first.")
        if not message.strip():
            raise gr.Error("Type a question.")
        try:
            answer = session.ask(message, window=window.strip() or None, max_new_tokens=self.max_new_tokens)
            times, relevance = session.relevance(message, window=window.strip() or None)
        except ValueError as error:  # no frame yet, a bad window, the context budget
            raise gr.Error(str(error)) from None
        where = _clock(answer.position)
        shown = (
            f"{answer.frames_used} of {answer.frames_seen} frames" if answer.policy != "all" else "all frames"
        )
        reply = f"{answer.text}\n\n*(at {where}, {shown})*"
        history = [*history, {"role": "user", "content": message}, {"role": "assistant", "content": reply}]
        return history, "", message, live_timeline_html(message, times, relevance)

    def close(self, session_id: str | None) -> None:
        """Stop a page's session when Gradio deletes the page's state (the page was closed)."""
        self.stop(session_id)

    def stop(self, session_id: str | None) -> str:
        """Stop reading (the cache entry stays); returns the status line."""
        if self._session(session_id) is not None:
            assert session_id is not None
            self.registry.delete(session_id)
        return self.status_line(None)


def build_ui(
    engine: Engine,
    fps: float = 1.0,
    max_frames: int | None = 256,
    max_new_tokens: int | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    live_roots: list[str] | tuple[str, ...] = (),
    max_live_sessions: int = 2,
) -> gr.Blocks:
    """Build the Gradio app around a loaded engine. Launch it with `launch` (or ``demo.launch(...)``).

    Args:
        engine: the loaded engine; every answer comes from it.
        fps / max_frames: sampling of uploads (1 fps as trained; the cap bounds memory and context).
        max_new_tokens: answer length limit (default: the engine's).
        max_upload_mb: larger files are refused before they are stored (applied by `launch`).
        live_roots / max_live_sessions: the Live tab watches growing files and FIFOs under these folders only
            (`LiveTab`); without any it says how to allow some.
    """
    live = LiveTab(engine, live_roots, fps=fps, max_sessions=max_live_sessions, max_new_tokens=max_new_tokens)
    example_path, example_question = _example(engine)
    no_media = {"state": "empty"}
    # Identical uploads from two tabs share one path (named after the content): the second finds the file gone
    # once the first is encoded, so it takes the first's frames, for as long as some tab still holds them.
    encoded: weakref.WeakValueDictionary[str, PreparedMedia] = weakref.WeakValueDictionary()

    def is_example(path: str) -> bool:
        """Gradio hands the example over as a copy: recognise it by name and content (it is kept and served)."""
        return Path(path).name == example_path.name and filecmp.cmp(path, example_path, shallow=False)

    def player_value(name: str, kind: str, served: bool, caption: str = "") -> dict[str, Any]:
        url = f"gradio_api/file={example_path}" if served else None
        return {"state": "ready", "name": name, "kind": kind, "url": url, "caption": caption}

    def start_chat(name: str, base: PreparedMedia, track: SubtitleTrack | None) -> tuple[_Loaded, str]:
        """A new chat about the encoded frames with these subtitles (or none), and the status line."""
        media, note = base, ""
        if track is not None:
            try:
                texts = subtitles_for_frames(media.timestamps, media.duration, track, media.is_image)
            except ValueError as error:  # subtitles for an image, or cues that do not fit: say so, go on
                texts, note = None, f" (Subtitles unused: {error})"
            if texts is None and not note:
                note = f" ({track.path} has no cue inside this video: subtitles unused.)"
            media = dataclasses.replace(media, subtitles=texts)
        session = engine.chat(media, max_new_tokens=max_new_tokens)
        status = describe_sampling(media, name, max_frames)
        if media.subtitles is not None and track is not None:
            status = status.replace(" with subtitles", f" with subtitles from {track.path}")
        if engine.is_random:
            note += " Random weights: answers are noise."
        return _Loaded(name, base, session), status + note

    def load(
        media_file: str | None,
        track: SubtitleTrack | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        """Decode the upload and encode its frames once (then delete the upload); the chat reuses them."""
        if not media_file:
            return None, "Upload a video or an image to start.", [], "", no_media
        name = Path(media_file).name
        example = is_example(media_file)
        progress(0.1, desc="Decoding and encoding frames")
        try:
            media = encoded.get(media_file) or engine.load_media(
                media_file, fps=fps, max_frames=max_frames, untrusted=True
            )
            loaded, status = start_chat(name, media, track)
        except ValueError as error:  # MediaError included: say what is wrong with the upload
            discard_upload(media_file)
            reason = str(error).replace(str(media_file), name)
            gr.Warning(reason)
            # The state remembers why there is no media, so a question gets that answer, not "upload first".
            return (
                f"{name} could not be used: {reason}",
                f"**Could not use** {name}: {reason}",
                [],
                "",
                no_media,
            )
        encoded[media_file] = media
        if not example:
            discard_upload(media_file)  # the features are in memory and in the feature cache
        progress(1.0, desc="Ready")
        kind = "image" if media.is_image else "video"
        return loaded, status, [], "", player_value(name, kind, example)

    def change_subtitles(subtitle_file: str | None, loaded: _Loaded | str | None) -> tuple[Any, ...]:
        """Read the subtitles once (the upload is then deleted) and attach them to the loaded video, if any."""
        track = None
        if subtitle_file:
            name = Path(subtitle_file).name
            try:
                track = dataclasses.replace(SubtitleTrack.read(subtitle_file), path=name)
            except ValueError as error:  # SubtitleError: unreadable file
                raise gr.Error(str(error).replace(str(subtitle_file), name)) from None
            finally:
                discard_upload(subtitle_file)
        if not isinstance(loaded, _Loaded):  # no video yet: `load` attaches the subtitles when it comes
            note = (
                "Subtitles read; now upload the video." if track else "Upload a video or an image to start."
            )
            return track, gr.skip(), note, gr.skip(), gr.skip()
        try:
            loaded, status = start_chat(loaded.name, loaded.base, track)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        return track, loaded, status, [], ""

    def respond(
        message: str, history: list[dict[str, Any]], loaded: _Loaded | str | None
    ) -> Iterator[tuple[list[dict[str, Any]], str, Any]]:
        """Stream one answer into the chat, then draw the relevance timeline of that question."""
        if isinstance(loaded, str):  # the last upload failed: say why
            raise gr.Error(f"{loaded} Upload another file.")
        if loaded is None:
            raise gr.Error("Upload a video or an image first.")
        if not message.strip():
            raise gr.Error("Type a question.")
        session = loaded.session
        history = [*history, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        try:
            for piece in session.stream(message):
                history[-1]["content"] += piece
                yield history, "", gr.skip()
        except ValueError as error:
            raise gr.Error(str(error)) from None
        history[-1]["content"] = session.history[-1][1] if session.history else history[-1]["content"]
        yield history, "", relevance_html(session.attention(), loaded.base.duration, loaded.base.is_image)

    def reset(loaded: _Loaded | str | None) -> tuple[list, str]:
        if isinstance(loaded, _Loaded):
            loaded.session.reset()
        return [], ""

    limit = f"{max_upload_mb:g} MB"
    with gr.Blocks(title="LLaMA-VID", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"## LLaMA-VID: chat with a video\nModel **{engine.name}** on {engine.device}. Each frame becomes two "
            "tokens: a *context* token that follows your question and a *content* token."
        )
        state = gr.State(None)
        subtitles_state = gr.State(None)
        with gr.Tab("Video or image", elem_id="file-tab"), gr.Row():
            with gr.Column(scale=5):
                with gr.Row():
                    media_input = gr.File(
                        label=f"Video or image (up to {limit})",
                        file_types=MEDIA_TYPES,
                        elem_id="media-upload",
                        height=140,
                    )
                    subtitle_input = gr.File(
                        label="Subtitles (.srt/.vtt, optional)",
                        file_types=[".srt", ".vtt"],
                        elem_id="subtitle-upload",
                        height=140,
                    )
                status = gr.Markdown("Upload a video or an image to start.", elem_id="status")
                player = gr.HTML(
                    no_media,
                    html_template=_PLAYER_HTML,
                    css_template=_PLAYER_CSS,
                    js_on_load=_PLAYER_JS,
                    elem_id="player",
                )
                relevance = gr.HTML(
                    "",
                    css_template=_TIMELINE_CSS,
                    js_on_load=_TIMELINE_JS,
                    elem_id="relevance",
                    min_height=20,
                )
            with gr.Column(scale=6):
                chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=420)
                question = gr.Textbox(
                    label="Question", placeholder="What happens in the video?", elem_id="question"
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("New conversation", elem_id="reset")
                gr.Examples(examples=[[str(example_path), example_question]], inputs=[media_input, question])
        with gr.Tab("Live", elem_id="live-tab"):
            live_id = gr.State(None, delete_callback=live.close)  # the page's session stops when it closes
            live_question = gr.State(None)
            if live.enabled:
                roots = ", ".join(live.registry.roots)
                gr.Markdown(
                    f"Watch a stream while it plays: a video file that is still being written (MPEG-TS or "
                    f"Matroska) or a FIFO, under {roots}. Questions are about everything seen so far, or the "
                    "last *window* (e.g. 10m)."
                )
            else:
                gr.Markdown(
                    "Live streams are off: start the web UI with `--allowed-root DIR` to watch growing files "
                    "and FIFOs in DIR."
                )
            with gr.Row():
                with gr.Column(scale=5):
                    with gr.Row():
                        live_source = gr.Textbox(
                            label="Source (path of a growing file or FIFO)", elem_id="live-source", scale=4
                        )
                        live_raw = gr.Textbox(
                            label="Raw RGB frames WxH (optional)", elem_id="live-raw", scale=1
                        )
                    with gr.Row():
                        live_start = gr.Button("Start", variant="primary", elem_id="live-start")
                        live_stop = gr.Button("Stop", elem_id="live-stop")
                    live_status = gr.Markdown(live.status_line(None), elem_id="live-status")
                    live_frame = gr.Image(label="Current frame", elem_id="live-frame", height=300)
                    live_timeline = gr.HTML("", css_template=_LIVE_TIMELINE_CSS, elem_id="live-relevance")
                with gr.Column(scale=6):
                    live_chat = gr.Chatbot(
                        label="Questions about the stream", elem_id="live-chat", height=380
                    )
                    with gr.Row():
                        live_message = gr.Textbox(label="Question", elem_id="live-question", scale=4)
                        live_window = gr.Textbox(label="Window (e.g. 10m)", elem_id="live-window", scale=1)
                    live_send = gr.Button("Ask", variant="primary", elem_id="live-send")
            timer = gr.Timer(1.0, active=live.enabled)
        media_input.change(
            load,
            [media_input, subtitles_state],
            [state, status, chatbot, relevance, player],
            concurrency_id=_ENGINE_QUEUE,
            concurrency_limit=1,
        )
        subtitle_input.change(
            change_subtitles,
            [subtitle_input, state],
            [subtitles_state, state, status, chatbot, relevance],
            concurrency_id=_ENGINE_QUEUE,
            concurrency_limit=1,
        )
        for event in (question.submit, send.click):
            event(
                respond,
                [question, chatbot, state],
                [chatbot, question, relevance],
                concurrency_id=_ENGINE_QUEUE,
                concurrency_limit=1,
            )
        clear.click(reset, [state], [chatbot, relevance])
        live_start.click(
            live.start, [live_source, live_raw, live_id], [live_id, live_status], concurrency_id=_ENGINE_QUEUE
        )
        live_stop.click(live.stop, [live_id], [live_status])
        timer.tick(
            live.refresh,
            [live_id, live_question],
            [live_frame, live_status, live_timeline],
            concurrency_id=_ENGINE_QUEUE,
            show_progress="hidden",
        )
        for event in (live_message.submit, live_send.click):
            event(
                live.ask,
                [live_message, live_window, live_chat, live_id],
                [live_chat, live_message, live_question, live_timeline],
                concurrency_id=_ENGINE_QUEUE,
                concurrency_limit=1,
            )
    demo.llamavid_examples = example_path.parent  # type: ignore[attr-defined]
    demo.llamavid_max_upload_mb = max_upload_mb  # type: ignore[attr-defined]
    demo.llamavid_live = live  # type: ignore[attr-defined]
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> Any:
    """Launch with offline-safe settings: no share link, no SSR node server, system fonts, the upload limit
    given to `build_ui`, example files allowed, and uploads in a folder of this process's own (removed at exit;
    ``GRADIO_TEMP_DIR`` overrides it)."""
    _private_upload_folder()
    theme = gr.themes.Default(font=_SYSTEM_FONTS, font_mono=_MONO_FONTS)
    max_upload_mb = getattr(demo, "llamavid_max_upload_mb", DEFAULT_MAX_UPLOAD_MB)
    kwargs.setdefault("max_file_size", int(max_upload_mb * 1024 * 1024))
    return demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,
        theme=theme,
        allowed_paths=[str(demo.llamavid_examples)],  # type: ignore[attr-defined]
        footer_links=[],
        show_error=True,
        **kwargs,
    )


__all__ = [
    "LiveTab",
    "build_ui",
    "describe_sampling",
    "discard_upload",
    "launch",
    "live_timeline_html",
    "relevance_html",
]
