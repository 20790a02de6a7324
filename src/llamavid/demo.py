"""Media and models for demos, examples and tests that need no download: generated clips, a random tiny model.

`llamavid demo`, `llamavid sample`, the web UI's example and the test-suite build on these. The *trained* tiny model ships in
`llamavid/assets/tiny-llamavid`; the random model here only exercises the plumbing (its answers are noise).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_FRAME_SIZE = 256
"""Side of the sample videos: large enough to watch in a player; the model resizes frames to its own input."""
SAMPLE_MOVIE_FRAMES = 600
"""Ten minutes at 1 fps: long enough for the movie layout, short enough to encode in seconds on a CPU."""


def generated_video(frames: int, size: int = 112) -> np.ndarray:
    """A red square moving left to right over a grey background, ``(T, size, size, 3)`` uint8."""
    video = np.full((frames, size, size, 3), 120, dtype=np.uint8)
    side = size // 4
    for index in range(frames):
        left = int(index * (size - side) / max(frames - 1, 1))
        top = size // 2 - side // 2
        video[index, top : top + side, left : left + side] = (220, 30, 30)
    return video


def encode_mp4(frames: Iterable[np.ndarray], path: Path, fps: int = 1, crf: int = 16) -> Path:
    """Encode ``(H, W, 3)`` uint8 frames as H.264 in MP4 (yuv420p, plays in every browser), one at a time.

    Frames are consumed as they come, so a long generated video never sits in memory. ``faststart`` puts the
    index first, so a browser can start playing (and seek) before the whole file has arrived.
    """
    import av

    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(
                    "libx264", rate=fps, options={"preset": "veryfast", "crf": str(crf)}
                )
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuv420p"
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        if stream is not None:
            container.mux(stream.encode())
    return path


def write_demo_video(path: Path, seconds: int, fps: int = 4, size: int = 112) -> Path:
    """Encode the moving-square clip as an H.264 MP4 with PyAV (``seconds * fps`` frames)."""
    return encode_mp4(generated_video(seconds * fps, size), path, fps=fps, crf=18)


def build_random_demo_model(seed: int):
    """A tiny LLaMA-VID (widths 64, 2 layers) with random weights and the packaged demo tokenizer."""
    import torch
    from transformers import LlamaTokenizer

    from llamavid import LlamaVidConfig, LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.assets import DEMO_TOKENIZER_DIR

    tokenizer = LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
    config = LlamaVidConfig(
        vision_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=112
        ),
        qformer_config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=2048,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        num_query=8,
        compress_type="mean",
    )
    torch.manual_seed(seed)
    model = LlamaVidForConditionalGeneration(config).eval()
    return model, LlamaVidProcessor.from_config(config, tokenizer)


def synthetic_question_clip(
    seed: int = 0, question_type: str = "video_direction", size: int | None = None
) -> tuple[np.ndarray, str, str]:
    """A held-out clip of the synthetic world the tiny model was trained on: ``(frames, question, answer)``.

    ``size`` is the frame side in pixels (default: the world's 64).
    """
    from llamavid.synth.clips import make_clip_question

    item = make_clip_question(np.random.default_rng(seed), "heldout", question_type, f"demo-{seed}")
    return (item.media.render() if size is None else item.media.render(size)), item.question, item.answer


def write_clip(frames: np.ndarray, path: Path, fps: int = 1) -> Path:
    """Encode frames losslessly (FFV1 in Matroska) so colours reach the model exactly as rendered."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@dataclass(frozen=True)
class SampleQuestion:
    """A question about one sample file and the answer the synthetic world defines for it."""

    media: Path
    question: str
    answer: str
    subtitles: Path | None = None


@dataclass(frozen=True)
class SampleMedia:
    """What `write_samples` wrote: a short clip, a long episode with its subtitles, and questions about both."""

    clip: Path
    clip_seconds: int
    movie: Path
    movie_seconds: int
    subtitles: Path
    questions_file: Path
    questions: tuple[SampleQuestion, ...]


def write_samples(
    folder: str | Path, seed: int = 0, movie_frames: int = SAMPLE_MOVIE_FRAMES, size: int = SAMPLE_FRAME_SIZE
) -> SampleMedia:
    """Write media to try every command on: ``clip.mp4``, ``movie.mp4`` + ``movie.srt`` and ``questions.txt``.

    Both videos are held-out items of the synthetic world the embedded tiny model learned (so its answers can
    be checked): the clip asks where a shape moves; the movie is an episode at 1 fps whose dialogue is in the
    subtitles, with a secret number said once (a subtitle needle) and one white frame (a visual needle).
    ``questions.txt`` holds one ``media<TAB>question<TAB>answer[<TAB>subtitles]`` line per question.

    Raises:
        InvalidInputError: if ``folder`` is an existing file or ``movie_frames`` is too short for an episode.
    """
    from llamavid.errors import InvalidInputError
    from llamavid.synth.dataset import write_srt
    from llamavid.synth.episodes import MIN_EPISODE_FRAMES, episode_questions, make_episode

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"{folder} is a file; name a folder to write the sample media into.")
    if movie_frames < MIN_EPISODE_FRAMES:
        raise InvalidInputError(f"the movie needs at least {MIN_EPISODE_FRAMES} frames, got {movie_frames}.")
    folder.mkdir(parents=True, exist_ok=True)

    frames, clip_question, clip_answer = synthetic_question_clip(seed, size=size)
    clip = encode_mp4(frames, folder / "clip.mp4")
    episode = make_episode(np.random.default_rng(seed), "heldout", movie_frames)
    movie = encode_mp4(
        (episode.render_frame(index, size) for index in range(movie_frames)), folder / "movie.mp4"
    )
    subtitles = write_srt(episode.subtitles, folder / "movie.srt")
    # The needles are what the tiny model was trained to find in long videos (docs/tiny-model.md).
    needles = [
        item
        for item in episode_questions(episode, f"sample-{seed}")
        if item.question_type in ("long_subtitle_needle", "long_visual_needle")
    ]
    questions = (
        SampleQuestion(clip, clip_question, clip_answer),
        *(SampleQuestion(movie, item.question, item.answer, subtitles) for item in needles),
    )
    lines = [
        f"# Questions about the sample media (seed {seed}) and the answers the synthetic world defines.",
        "# Ask with --temperature 0 for reproducible answers; movie questions need --subtitles movie.srt.",
        "# media<TAB>question<TAB>expected answer<TAB>subtitles",
    ]
    for row in questions:
        fields = [row.media.name, row.question, row.answer] + ([row.subtitles.name] if row.subtitles else [])
        lines.append("\t".join(fields))
    questions_file = folder / "questions.txt"
    questions_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return SampleMedia(
        clip=clip,
        clip_seconds=len(frames),
        movie=movie,
        movie_seconds=movie_frames,
        subtitles=subtitles,
        questions_file=questions_file,
        questions=questions,
    )
