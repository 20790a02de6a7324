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
    # Stage 1 captions.
    "plain_guided": ConversationTemplate("plain_guided", "", ("", ""), "\n", "\n", style="plain"),
}


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


__all__ = ["ConversationTemplate", "TEMPLATES", "DEFAULT_IMAGE_TOKEN", "get_template", "build_prompt"]
