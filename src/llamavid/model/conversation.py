"""Conversation templates: the one table of prompt formats LLaMA-VID checkpoints were trained and evaluated with.

Every template renders ``system + sep`` and then, per message, ``ROLE: text`` followed by ``sep`` after a user
turn and ``sep2`` after an assistant turn (the official ``SeparatorStyle.TWO``). The generation prompt is a bare
``"ASSISTANT:"`` so the model continues from there. ``plain_guided`` (stage-1 captions) is the PLAIN style: the
messages' texts joined, each followed by ``"\\n"``, with no roles or system text.

A message's content is a string or a list of content parts (the transformers chat format):
``{"type": "text", "text": ...}``, ``{"type": "image", ...}`` or ``{"type": "video", ...}``. Every image or video
part becomes one ``<image>``; they come first, then the text parts, all joined by ``"\\n"`` -- the official
``"<image>\\n" + question`` layout (see `message_text`).

The same formats exist as Jinja chat templates (`chat_template_for`), which `LlamaVidProcessor` saves as
``chat_template.jinja`` and renders with; they reproduce `build_prompt` byte for byte.

An LLM that is not Vicuna brings its own chat template in its tokenizer: the template name `TOKENIZER_TEMPLATE`
(``"tokenizer"``) renders with it (docs/llms.md). Its messages reach that template with string content, the
``<image>`` markers laid out as above (`flatten_messages`), so placeholders expand exactly as with Vicuna.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from llamavid.errors import InvalidInputError

DEFAULT_IMAGE_TOKEN = "<image>"
# Accepted in prompts as another spelling of a video's placeholder; LLaMA-VID itself only knows <image>.
DEFAULT_VIDEO_TOKEN = "<video>"
VISUAL_PART_TYPES = ("image", "video")

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
    # Evaluation scripts and the movie CLI.
    "vicuna_v1": ConversationTemplate("vicuna_v1", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    # Stage 2/3 training: the same text; the name switches on per-turn image insertion in the data pipeline.
    "imgsp_v1": ConversationTemplate("imgsp_v1", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    # Chosen by the official cli.py for names containing "vid"; differs from training ("curious human").
    "llava_v1": ConversationTemplate("llava_v1", _LLAVA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    # The tiny synthetic-world model (docs/tiny-model.md): vicuna roles without the 30-word system text, which
    # a from-scratch 4-layer LM would only spend compute on. The prompt still opens with the separator.
    "synth_v1": ConversationTemplate("synth_v1", "", ("USER", "ASSISTANT"), " ", "</s>"),
    # Stage 1 captions.
    "plain_guided": ConversationTemplate("plain_guided", "", ("", ""), "\n", "\n", style="plain"),
}


# Not a row of the table: prompts are rendered with the LLM tokenizer's own chat template (docs/llms.md).
TOKENIZER_TEMPLATE = "tokenizer"


def flatten_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages with string content (`message_text`: one ``<image>`` per media part, first), other keys kept.

    An LLM's own chat template only knows text; flattening first gives it the same ``"<image>\\n" + question``
    layout the Vicuna templates render.
    """
    return [{**message, "content": message_text(message.get("content") or "")} for message in messages]


@dataclass(frozen=True)
class TurnMarkers:
    """What surrounds a user message in a rendered chat template, found by rendering probe messages.

    Attributes:
        user_start: the text right before a user message's content (e.g. ``"<|im_start|>user\\n"``).
        user_end: the text right after it (e.g. ``"<|im_end|>\\n<|im_start|>assistant\\n"``).
    """

    user_start: str
    user_end: str

    def last_user_text(self, prompt: str) -> str:
        """The content of the prompt's last user message, or the whole prompt when the markers are absent."""
        start = prompt.rfind(self.user_start) if self.user_start else -1
        if start < 0:
            return prompt
        body = prompt[start + len(self.user_start) :]
        end = body.find(self.user_end) if self.user_end else -1
        return body if end < 0 else body[:end]


def _common_prefix(first: str, second: str) -> str:
    size = 0
    while size < min(len(first), len(second)) and first[size] == second[size]:
        size += 1
    return first[:size]


def find_turn_markers(render: Callable[[list[dict[str, Any]], bool], str]) -> TurnMarkers | None:
    """The user-turn markers of a chat template, from ``render(messages, add_generation_prompt)``.

    Renders a one-question and a three-turn conversation with unique probe texts: the user start is what
    precedes both the first user message (after any system text) and the second (after an answer); the user end
    is what follows a user message both before an answer and before the generation prompt. None when the
    template rejects the probes or puts nothing around user messages.
    """
    question, answer, follow_up = "\x01q\x01", "\x01a\x01", "\x01f\x01"
    try:
        one = render([{"role": "user", "content": question}], True)
        three = render(
            [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": follow_up},
            ],
            True,
        )
    except Exception:  # a template may reject anything (roles, system prompts): then there are no markers
        return None
    if question not in one or not all(probe in three for probe in (question, answer, follow_up)):
        return None
    before_first = one[: one.index(question)]
    before_follow_up = three[three.index(answer) + len(answer) : three.index(follow_up)]
    user_start = _common_prefix(before_first[::-1], before_follow_up[::-1])[::-1]
    after_question = three[three.index(question) + len(question) : three.index(answer)]
    user_end = _common_prefix(one[one.index(question) + len(question) :], after_question)
    if not user_start.strip():
        return None
    return TurnMarkers(user_start, user_end)


# Long-video (movie) prompts wrapped around the frame/subtitle string. The CLI form glues the sentences to the
# frames with no separator, exactly as the official movie script does.
MOVIE_START = "Below is a movie. Memorize the content and answer my question after watching this movie."
MOVIE_END = "Now the movie end."
# The web demo serves movies in parts and words it differently.
MOVIE_PART_START = (
    "Below is a part of movie. Memorize the content and answer my question after this movie part. "
    "The movie part start.\n"
)
MOVIE_PART_END = "\nThe movie part end.\n"

# Official sampling settings per entry point, in `transformers.GenerationConfig` field names.
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

Content = str | Sequence[Mapping[str, Any]]


def long_video_inputs(subtitles: Sequence[str]) -> str:
    """The frame/subtitle string of a long video: ``"<image>sub_0<image>sub_1..."``, one ``<image>`` per frame.

    Args:
        subtitles: one entry per sampled frame, the subtitle text assigned to it (``""`` for none). The official
            loader deletes ``"..."`` from this string before use; we do the same so prompts match training.
    """
    return "".join(DEFAULT_IMAGE_TOKEN + text for text in subtitles).replace("...", "")


def build_long_video_message(subtitles: Sequence[str] | str, question: str, variant: str = "cli") -> str:
    """The user message of a movie question: start sentence, frames with subtitles, end sentence, question.

    This is the one builder of movie prompts; `qformer_question` undoes it.

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
    raise InvalidInputError(
        f"variant={variant!r}; expected 'cli' (movie script) or 'web' (demo movie parts)."
    )


def get_template(name: str) -> ConversationTemplate:
    """Look up a template by name, failing with the list of known names."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise InvalidInputError(
            f"Unknown conversation template {name!r}; known templates: {sorted(TEMPLATES)}."
        ) from None


def message_text(content: Content) -> str:
    """The text a message's content renders as.

    A string is used as it is. A list of content parts renders one ``<image>`` per image or video part, in
    order, then the text parts, all joined by ``"\\n"``: ``[image, text "What?"]`` gives ``"<image>\\nWhat?"``.
    """
    if isinstance(content, str):
        return content
    visual: list[str] = []
    texts: list[str] = []
    for part in content:
        kind = part.get("type")
        if kind in VISUAL_PART_TYPES:
            visual.append(DEFAULT_IMAGE_TOKEN)
        elif kind == "text":
            texts.append(str(part["text"]))
        else:
            raise InvalidInputError(f"content part of type {kind!r}; expected 'text', 'image' or 'video'.")
    return "\n".join(visual + texts)


def _check_roles(messages: Sequence[Mapping[str, Any]]) -> None:
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise InvalidInputError(
                f"message {index} has role {message.get('role')!r}; expected {expected!r} "
                "(turns alternate user/assistant, starting with the user)."
            )


def build_prompt(
    messages: Sequence[Mapping[str, Any]], template: str = "vicuna_v1", add_generation_prompt: bool = True
) -> str:
    """Render ``[{"role": "user"|"assistant", "content": str | parts}, ...]`` in a template.

    Args:
        messages: alternating user/assistant turns starting with the user; visual inputs appear as ``<image>``
            in string content, or as image/video content parts (see `message_text`).
        template: a name from `TEMPLATES`.
        add_generation_prompt: end with an empty assistant turn (``"ASSISTANT:"``) when the last message is
            from the user, so the model answers next.
    """
    conv = get_template(template)
    _check_roles(messages)
    texts = [message_text(message["content"]) for message in messages]
    if conv.style == "plain":
        return "".join(text + conv.sep for text in texts)
    prompt = conv.system + conv.sep
    for index, text in enumerate(texts):
        role = conv.roles[index % 2]
        prompt += f"{role}: {text}" + (conv.sep if index % 2 == 0 else conv.sep2)
    if add_generation_prompt and len(messages) % 2 == 1:
        prompt += f"{conv.roles[1]}:"
    return prompt


# Jinja chat templates ---------------------------------------------------------------------------------------------
# Generated from the table above so there is one definition of each format. Every tag strips the whitespace
# around it, so only quoted strings reach the output; the sources render the same in transformers' own
# chat-template environment (`tokenizer.apply_chat_template`).
_JINJA_HEAD = """\
{#- LLaMA-VID conversation template %(name)r, generated by llamavid.model.conversation.chat_template_for.
    Messages alternate user/assistant, starting with the user. Content is a string or a list of parts:
    every image/video part renders as <image>, first, then the text parts, all joined by a newline. -#}
{%%- set image_token = %(image_token)s -%%}
{%%- set system = %(system)s -%%}
{%%- set roles = [%(user)s, %(assistant)s] -%%}
{%%- set sep = %(sep)s -%%}
{%%- set sep2 = %(sep2)s -%%}
"""

_JINJA_MESSAGES = """\
{%- for message in messages -%}
    {%- set expected = "user" if loop.index0 % 2 == 0 else "assistant" -%}
    {%- if message["role"] != expected -%}
        {{- raise_exception("message " ~ loop.index0 ~ " has role '" ~ message["role"] ~ "'; expected '"
            ~ expected ~ "' (turns alternate user/assistant, starting with the user).") -}}
    {%- endif -%}
    {%- if message["content"] is string -%}
        {%- set text = message["content"] -%}
    {%- else -%}
        {%- set parts = namespace(visual=[], text=[]) -%}
        {%- for part in message["content"] -%}
            {%- if part["type"] in ["image", "video"] -%}
                {%- set parts.visual = parts.visual + [image_token] -%}
            {%- elif part["type"] == "text" -%}
                {%- set parts.text = parts.text + [part["text"]] -%}
            {%- else -%}
                {{- raise_exception("content part of type '" ~ part["type"]
                    ~ "'; expected 'text', 'image' or 'video'.") -}}
            {%- endif -%}
        {%- endfor -%}
        {%- set text = (parts.visual + parts.text) | join("\\n") -%}
    {%- endif -%}
"""

_JINJA_TWO = (
    """\
{{- system + sep -}}
"""
    + _JINJA_MESSAGES
    + """\
    {%- if loop.index0 % 2 == 0 -%}
        {{- roles[0] + ": " + text + sep -}}
    {%- else -%}
        {{- roles[1] + ": " + text + sep2 -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and messages | length % 2 == 1 -%}
    {{- roles[1] + ":" -}}
{%- endif -%}
"""
)

_JINJA_PLAIN = (
    _JINJA_MESSAGES
    + """\
    {{- text + sep -}}
{%- endfor -%}
"""
)


def _jinja_string(value: str) -> str:
    # A JSON string (ASCII, backslash escapes) is also a valid Jinja string literal with the same value.
    return json.dumps(value)


def chat_template_for(name: str) -> str:
    """Jinja source of a template from `TEMPLATES`; it renders exactly what `build_prompt` returns."""
    conv = get_template(name)
    head = {
        "name": conv.name,
        "image_token": _jinja_string(DEFAULT_IMAGE_TOKEN),
        "system": _jinja_string(conv.system),
        "user": _jinja_string(conv.roles[0]),
        "assistant": _jinja_string(conv.roles[1]),
        "sep": _jinja_string(conv.sep),
        "sep2": _jinja_string(conv.sep2),
    }
    return _JINJA_HEAD % head + (_JINJA_PLAIN if conv.style == "plain" else _JINJA_TWO)


def _raise_exception(message: str) -> None:
    raise InvalidInputError(message)


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The settings transformers uses for chat templates, so a template behaves the same in both places.
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise_exception
    return environment.from_string(source)


def render_chat_template(
    source: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **variables: Any
) -> str:
    """Render ``messages`` with a Jinja chat template in a sandbox.

    Args:
        source: Jinja source, such as `chat_template_for` returns or a folder's ``chat_template.jinja``.
        messages: the conversation (see `build_prompt`).
        add_generation_prompt: passed to the template, which ends with ``"ASSISTANT:"`` when it is set and the
            last message is from the user.
        variables: further template variables.

    Raises:
        ValueError: the template rejected the messages (wrong role order, unknown content part).
    """
    return str(
        _compile(source).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **variables
        )
    )


# Q-Former instructions ------------------------------------------------------------------------------------------
def qformer_question(content: Content) -> str:
    """The text-decoder instruction of a user message: its question without placeholders.

    A movie message (`build_long_video_message`) gives the question after the movie, as the official movie
    script does; anything else gives its text with ``<image>``/``<video>`` removed, stripped.
    """
    text = message_text(content)
    for start, end in ((MOVIE_START, MOVIE_END + "\n"), (MOVIE_PART_START, MOVIE_PART_END)):
        if text.startswith(start) and end in text:
            text = text[text.rindex(end) + len(end) :]
            break
    return text.replace(DEFAULT_IMAGE_TOKEN, "").replace(DEFAULT_VIDEO_TOKEN, "").strip()


def last_user_text(prompt: str, template: str) -> str:
    """The text of the last user turn of a prompt rendered in `template`, or the whole prompt.

    For the two-role templates this is what follows the last ``"USER: "`` up to ``" ASSISTANT:"``; a prompt
    without that role (raw text, or the plain template) is returned whole.
    """
    conv = get_template(template)
    if conv.style == "plain":
        return prompt
    marker = f"{conv.roles[0]}: "
    start = prompt.rfind(marker)
    if start < 0:
        return prompt
    body = prompt[start + len(marker) :]
    end = body.find(f"{conv.sep}{conv.roles[1]}:")
    return body if end < 0 else body[:end]


__all__ = [
    "ConversationTemplate",
    "TEMPLATES",
    "TOKENIZER_TEMPLATE",
    "TurnMarkers",
    "find_turn_markers",
    "flatten_messages",
    "DEFAULT_IMAGE_TOKEN",
    "DEFAULT_VIDEO_TOKEN",
    "GENERATION_DEFAULTS",
    "MOVIE_START",
    "MOVIE_END",
    "MOVIE_PART_START",
    "MOVIE_PART_END",
    "get_template",
    "build_prompt",
    "build_long_video_message",
    "chat_template_for",
    "last_user_text",
    "long_video_inputs",
    "message_text",
    "qformer_question",
    "render_chat_template",
]
