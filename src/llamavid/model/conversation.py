"""Conversation templates: the one table of prompt formats LLaMA-VID checkpoints were trained and evaluated with.

Every template renders ``system + sep`` and then, per message, ``ROLE: text`` followed by ``sep`` after a user
turn and ``sep2`` after an assistant turn (the official ``SeparatorStyle.TWO``, spec §6). An assistant turn with
no text renders as ``"ASSISTANT:"`` so generation continues from there. ``plain_guided`` (stage-1 captions) is
the PLAIN style: the messages' texts joined, each followed by ``"\\n"``, with no roles or system text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_IMAGE_TOKEN = "<image>"

_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class ConversationTemplate:
    """One prompt format. ``style`` is ``"two"`` (roles + separators) or ``"plain"`` (texts only)."""

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str
    style: str = "two"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end an assistant answer (the official keyword stopping criterion uses ``sep2``)."""
        return (self.sep2,) if self.style == "two" else ()


TEMPLATES: dict[str, ConversationTemplate] = {
    # Evaluation scripts and the movie CLI (spec §6).
    "vicuna_v1": ConversationTemplate("vicuna_v1", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    # Stage 2/3 training: the same text; the name switches on per-turn image insertion in the data pipeline.
    "imgsp_v1": ConversationTemplate("imgsp_v1", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    # Chosen by the official cli.py for names containing "vid"; differs from training ("curious human").
    "llava_v1": ConversationTemplate("llava_v1", _LLAVA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    # The tiny synthetic-world model (docs/tiny-model.md): vicuna roles without the 30-word system text, which
    # a from-scratch 4-layer LM would only spend compute on.
    "synth_v1": ConversationTemplate("synth_v1", "", ("USER", "ASSISTANT"), " ", "</s>"),
    # Stage 1 captions.
    "plain_guided": ConversationTemplate("plain_guided", "", ("", ""), "\n", "\n", style="plain"),
}


# Long-video (movie) prompts wrapped around the frame/subtitle string (spec §5.4). The CLI form glues the
# sentences to the frames with no separator, exactly as the official movie script does.
MOVIE_START = "Below is a movie. Memorize the content and answer my question after watching this movie."
MOVIE_END = "Now the movie end."
# The web demo serves movies in parts and words it differently.
MOVIE_PART_START = (
    "Below is a part of movie. Memorize the content and answer my question after this movie part. "
    "The movie part start.\n"
)
MOVIE_PART_END = "\nThe movie part end.\n"

# Official sampling settings per entry point (spec §6), in `transformers.GenerationConfig` field names.
# Greedy runs leave temperature/top_p unset so transformers does not warn about unused sampling fields.
GENERATION_DEFAULTS: dict[str, dict[str, float | int | bool]] = {
    # llamavid/serve/cli.py: always samples.
    "cli": {"do_sample": True, "temperature": 0.2, "top_p": 0.7, "max_new_tokens": 512},
    # llamavid/serve/run_llamavid_movie.py (long-video checkpoint).
    "movie": {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 1024},
    # Video QA evaluation (MSVD / MSRVTT / ActivityNet / Video-ChatGPT); top_p left at its default.
    "video_qa": {"do_sample": True, "temperature": 0.2, "max_new_tokens": 1024},
    # Image benchmarks (model_vqa_loader with temperature 0): greedy.
    "image_eval": {"do_sample": False, "max_new_tokens": 128},
}


def long_video_inputs(subtitles: Sequence[str]) -> str:
    """The frame/subtitle string of a long video: ``"<image>sub_0<image>sub_1..."``, one ``<image>`` per frame.

    Args:
        subtitles: one entry per sampled frame, the subtitle text assigned to it (``""`` for none). The official
            loader deletes ``"..."`` from this string before use; we do the same so prompts match training.
    """
    return "".join(DEFAULT_IMAGE_TOKEN + text for text in subtitles).replace("...", "")


def build_long_video_message(subtitles: Sequence[str] | str, question: str, variant: str = "cli") -> str:
    """The user message of a movie question: start sentence, frames with subtitles, end sentence, question.

    Args:
        subtitles: per-frame subtitles (see `long_video_inputs`) or an already built ``inputs`` string, such as the
            one stored in official feature files.
        question: the user's question; it is also the text-decoder instruction for every frame.
        variant: ``"cli"`` (``run_llamavid_movie.py``: the official default) or ``"web"`` (the demo's movie parts).

    Every ``<image>`` stands for one frame, i.e. ``1 + n`` visual tokens (2 for the long-video checkpoint).
    """
    inputs = subtitles.replace("...", "") if isinstance(subtitles, str) else long_video_inputs(subtitles)
    if variant == "cli":
        return MOVIE_START + inputs + MOVIE_END + "\n" + question
    if variant == "web":
        return MOVIE_PART_START + inputs + MOVIE_PART_END + question
    raise ValueError(f"variant={variant!r}; expected 'cli' (movie script) or 'web' (demo movie parts).")


def get_template(name: str) -> ConversationTemplate:
    """Look up a template by name, failing with the list of known names."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"Unknown conversation template {name!r}; known templates: {sorted(TEMPLATES)}."
        ) from None


def build_prompt(
    messages: Sequence[dict[str, str]], template: str = "vicuna_v1", add_generation_prompt: bool = True
) -> str:
    """Render ``[{"role": "user"|"assistant", "content": str}, ...]`` in a template.

    Args:
        messages: alternating user/assistant turns starting with the user; visual inputs appear as ``<image>``.
        template: a name from `TEMPLATES`.
        add_generation_prompt: end with an empty assistant turn (``"ASSISTANT:"``) when the last message is
            from the user, so the model answers next.
    """
    conv = get_template(template)
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise ValueError(
                f"message {index} has role {message.get('role')!r}; expected {expected!r} "
                "(turns alternate user/assistant, starting with the user)."
            )
    if conv.style == "plain":
        return "".join(message["content"] + conv.sep for message in messages)
    text = conv.system + conv.sep
    for index, message in enumerate(messages):
        role = conv.roles[index % 2]
        text += f"{role}: {message['content']}" + (conv.sep if index % 2 == 0 else conv.sep2)
    if add_generation_prompt and len(messages) % 2 == 1:
        text += f"{conv.roles[1]}:"
    return text


__all__ = [
    "ConversationTemplate",
    "TEMPLATES",
    "DEFAULT_IMAGE_TOKEN",
    "GENERATION_DEFAULTS",
    "MOVIE_START",
    "MOVIE_END",
    "MOVIE_PART_START",
    "MOVIE_PART_END",
    "get_template",
    "build_prompt",
    "build_long_video_message",
    "long_video_inputs",
]
