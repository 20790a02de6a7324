"""Web UI (Gradio 6): upload a video or image (+ subtitles), chat about it, see which frames the answer used.

Holds no model logic: loading, chat turns, streaming and relevance strips all go through `Engine` and
`ChatSession` (STYLE §3.7). Runs in one process, with analytics off and no request to any CDN (system fonts
only), so it works offline and leaks nothing about what users upload.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from llamavid.inference.engine import Engine  # noqa: E402
from llamavid.inference.session import ChatSession  # noqa: E402

logger = logging.getLogger(__name__)

MEDIA_TYPES = [".mp4", ".mkv", ".webm", ".mov", ".avi", ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"]
# Gradio's default theme pulls Google Fonts; system font stacks keep the page free of third-party requests.
_SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "monospace"]


def _example(engine: Engine) -> tuple[Path, str]:
    """Write the example clip once per process (removed at exit) and return ``(path, question)``.

    A trained model gets a held-out clip of the synthetic world it learned, so its answer can be right; the
    random fallback gets the moving-square clip.
    """
    from llamavid.demo import synthetic_question_clip, write_clip, write_demo_video

    folder = Path(tempfile.mkdtemp(prefix="llamavid-webui-examples-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    if engine.is_random:
        return write_demo_video(folder / "red_square.mp4", seconds=6), "Which way does the red square move?"
    frames, question, _ = synthetic_question_clip(seed=1)
    return write_clip(frames, folder / "synthetic_clip.mkv"), question


def build_ui(
    engine: Engine,
    fps: float = 1.0,
    max_frames: int | None = 256,
    max_new_tokens: int | None = None,
) -> gr.Blocks:
    """Build the Gradio app around a loaded engine. Launch it with `launch` (or ``demo.launch(...)``).

    Args:
        engine: the loaded engine; every answer comes from it.
        fps / max_frames: sampling of uploads (1 fps as trained; the cap bounds memory and context).
        max_new_tokens: answer length limit (default: the engine's).
    """
    example_path, example_question = _example(engine)

    def load(media_file: str | None, subtitle_file: str | None, progress: gr.Progress = gr.Progress()):  # noqa: B008
        """Decode the upload and encode its frames once; the chat then reuses them every turn."""
        if not media_file:
            return None, "Upload a video or an image to start.", [], None
        progress(0.1, desc="Decoding and encoding frames")
        try:
            media = engine.load_media(
                media_file, fps=fps, max_frames=max_frames, subtitles=subtitle_file, untrusted=True
            )
        except ValueError as error:  # MediaError included: say what is wrong with the upload
            raise gr.Error(str(error).replace(str(media_file), Path(media_file).name)) from None
        progress(1.0, desc="Ready")
        session = engine.chat(media, max_new_tokens=max_new_tokens)
        kind = "image" if media.is_image else f"{media.num_frames} frames at {fps:g} fps"
        note = " Random weights: answers are noise." if engine.is_random else ""
        return session, f"**Ready:** {Path(media_file).name} ({kind}). Ask a question.{note}", [], None

    def respond(
        message: str, history: list[dict[str, Any]], session: ChatSession | None
    ) -> Iterator[tuple[list[dict[str, Any]], str, Any]]:
        """Stream one answer into the chat, then draw the relevance strip of that question."""
        if session is None:
            raise gr.Error("Upload a video or an image first.")
        if not message.strip():
            raise gr.Error("Type a question.")
        history = [*history, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        try:
            for piece in session.stream(message):
                history[-1]["content"] += piece
                yield history, "", gr.skip()
        except ValueError as error:
            raise gr.Error(str(error)) from None
        history[-1]["content"] = session.history[-1][1] if session.history else history[-1]["content"]
        yield history, "", session.attention().strip()

    def reset(session: ChatSession | None) -> tuple[list, None]:
        if session is not None:
            session.reset()
        return [], None

    with gr.Blocks(title="LLaMA-VID", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"## LLaMA-VID: chat with a video\nModel **{engine.name}** on {engine.device}. Each frame becomes two "
            "tokens: a *context* token that follows your question and a *content* token."
        )
        session_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                media_input = gr.File(label="Video or image", file_types=MEDIA_TYPES, elem_id="media-upload")
                subtitle_input = gr.File(label="Subtitles (.srt/.vtt, optional)", file_types=[".srt", ".vtt"])
                status = gr.Markdown("Upload a video or an image to start.", elem_id="status")
                relevance = gr.Image(
                    label="Frame relevance of the last question", elem_id="relevance", type="pil"
                )
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=420)
                question = gr.Textbox(
                    label="Question", placeholder="What happens in the video?", elem_id="question"
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("New conversation", elem_id="reset")
        gr.Examples(
            examples=[[str(example_path), example_question]],
            inputs=[media_input, question],
        )
        loaded = [session_state, status, chatbot, relevance]
        media_input.change(load, [media_input, subtitle_input], loaded)
        subtitle_input.change(load, [media_input, subtitle_input], loaded)
        question.submit(respond, [question, chatbot, session_state], [chatbot, question, relevance])
        send.click(respond, [question, chatbot, session_state], [chatbot, question, relevance])
        clear.click(reset, [session_state], [chatbot, relevance])
    demo.llamavid_examples = example_path.parent  # type: ignore[attr-defined]
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> Any:
    """Launch with offline-safe settings: no share link, no SSR node server, system fonts, example files allowed."""
    theme = gr.themes.Default(font=_SYSTEM_FONTS, font_mono=_MONO_FONTS)
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


__all__ = ["build_ui", "launch"]
