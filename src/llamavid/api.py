"""The Python API: ``model = llamavid.load(); print(model.ask("clip.mp4", "What happens?"))``.

A thin, stable face over the inference core (`llamavid.inference.Engine`, which the CLI, HTTP server, web UI and
evaluation share), so a script, a notebook and the server answer the same question the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llamavid.inference.engine import Engine
from llamavid.inference.media import PreparedMedia
from llamavid.inference.results import Answer, AttentionResult
from llamavid.inference.session import ChatSession
from llamavid.inference.streaming import TextStream


class LlamaVid:
    """A loaded LLaMA-VID model with the operations users ask for.

    Media is a path (video, image, or folder of frames), a ``(T, H, W, 3)``/``(H, W, 3)`` uint8 array, a
    `llamavid.data.Frames`, or a `PreparedMedia` from `prepare` (decode and encode once, ask many times).
    Keyword options: ``fps`` (default 1, as in training), ``max_frames``, ``subtitles`` (an .srt/.vtt path),
    ``temperature`` (0 = greedy; default: the checkpoint's ``generation_config.json``, else 0.2 as the official
    CLI), ``top_p``, ``max_new_tokens``, ``seed``. Video files go through the feature cache: a video is encoded
    once, by whichever call sees it first (`ingest`, `ask`, `chat`), in this process or an earlier one.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __repr__(self) -> str:
        facts = self.engine.describe()
        return f"LlamaVid(model={facts['model']!r}, device={facts['device']!r}, dtype={facts['dtype']!r})"

    def prepare(self, media: Any, **media_options: Any) -> PreparedMedia:
        """Decode `media` and compute its frame features once, to ask several questions cheaply."""
        return self.engine.load_media(media, **media_options)

    def ingest(self, video: str | os.PathLike[str], **options: Any) -> Any:
        """Encode a video's frames into the feature cache now (``fps``, ``max_frames``, ``subtitles``,
        ``batch_size``); later questions about it skip decoding and encoding. Returns the cache's report."""
        return self.engine.ingest(video, **options)

    def ask(self, media: Any, question: str, **options: Any) -> Answer:
        """Answer one question; ``str(answer)`` is the text, the fields hold token counts and timing."""
        return self.engine.ask(media, question, **options)

    def stream(self, media: Any, question: str, **options: Any) -> TextStream:
        """Iterate over the answer as it is generated: ``for piece in model.stream(video, q): print(piece)``."""
        return self.engine.stream(media, question, **options)

    def ask_many(self, items: Sequence[tuple[Any, str]], **options: Any) -> list[Answer]:
        """Answer ``[(media, question), ...]`` in device batches (``batch_size``, default 8)."""
        return self.engine.ask_many(items, **options)

    def chat(self, media: Any = None, **options: Any) -> ChatSession:
        """A multi-turn conversation: ``session.ask(q)`` remembers earlier turns; the frames are encoded once."""
        return self.engine.chat(media, **options)

    def live(self, source: Any, **options: Any) -> Any:
        """Watch a stream while it plays: ``session = model.live("cam.ts"); session.ask(q, window="10m")``.

        `source` is a growing file, a FIFO, ``"-"`` (stdin) or a binary file object carrying MPEG-TS/Matroska
        (or raw RGB frames with ``raw_size=(w, h)``). Options go to `llamavid.inference.live.LiveSession`
        (``fps``, ``session_id`` to resume, ``context_policy``, ``end_marker``, ``idle_timeout``, ...); frame
        features go to the feature cache as they arrive. Close the session (or use it in ``with``) when done.
        """
        from llamavid.inference.live import LiveSession

        return LiveSession(self.engine, source, **options)

    def attention(
        self, media: Any, question: str, out: str | os.PathLike[str] | None = None, **media_options: Any
    ) -> AttentionResult:
        """Per-frame relevance for `question`; with `out`, also write the relevance strip image there."""
        result = self.engine.attention(media, question, **media_options)
        if out is not None:
            result.save(Path(out))
        return result


def load(
    path: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    *,
    feature_cache: bool | str | os.PathLike[str] = True,
) -> LlamaVid:
    """Load a llamavid model folder (default: the embedded tiny model, or a random one with a warning).

    Args:
        path: folder written by ``save_pretrained`` or ``llamavid convert``.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda[:N]`` or ``mps``.
        dtype: ``auto`` (float32 on CPU, bfloat16/float16 on GPUs), ``float32``, ``float16`` or ``bfloat16``.
        feature_cache: ``True`` (default root ``$LLAMAVID_CACHE`` or ``~/.cache/llamavid/features``), a folder,
            or ``False`` to decode and encode every time without writing anything.
    """
    return LlamaVid(Engine.from_pretrained(path, device=device, dtype=dtype, feature_cache=feature_cache))


__all__ = ["LlamaVid", "load"]
