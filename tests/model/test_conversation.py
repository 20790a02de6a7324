"""Conversation templates: the official texts, content parts, and the Jinja sources that reproduce them."""

from __future__ import annotations

import pytest

from llamavid.model.conversation import (
    TEMPLATES,
    build_long_video_message,
    build_prompt,
    chat_template_for,
    last_user_text,
    message_text,
    qformer_question,
    render_chat_template,
)

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


IMAGE = {"type": "image", "image": None}
VIDEO = {"type": "video", "video": None}


def text(value):
    return {"type": "text", "text": value}


CONVERSATIONS = {
    "empty": [],
    "single": [user("<image>\nWhat happens?")],
    "text_only": [user("Hello")],
    "parts": [user([IMAGE, text("What is it?")])],
    "parts_text_first": [user([text("What moves?"), VIDEO])],
    "parts_several": [user([text("Compare"), IMAGE, text("them."), VIDEO])],
    "parts_visual_only": [user([VIDEO])],
    "parts_text_only": [user([text("Just text")])],
    "multi_turn": [user("<image>\nQ1"), assistant("A1"), user("Q2")],
    "ends_with_answer": [user([VIDEO, text("Q1")]), assistant("A1"), user("Q2"), assistant("A2")],
    "answer_parts": [user("Q1"), assistant([text("A1")])],
    "movie_cli": [user(build_long_video_message(["Hi...", "", "Bye"], "Who waves?"))],
    "movie_web": [user(build_long_video_message("<image>a<image>b", "Summary?", variant="web"))],
    "awkward_text": [
        user("Quotes \" and ' and \\ backslash, {{ braces }} {% tags %} {# hash #}, tab\t, é 🎬\nline"),
        assistant("  spaced  "),
        user(""),
    ],
}


def test_vicuna_single_turn_prompt_matches_the_official_text():
    prompt = build_prompt([user("<image>\nWhat happens?")], "vicuna_v1")
    assert prompt == SYSTEM + " USER: <image>\nWhat happens? ASSISTANT:"


def test_multi_turn_uses_sep_and_sep2():
    prompt = build_prompt([user("Q1"), assistant("A1"), user("Q2")], "imgsp_v1")
    assert prompt == SYSTEM + " USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"
    assert TEMPLATES["vicuna_v1"].stop_strings == ("</s>",)


def test_synth_v1_keeps_the_leading_separator():
    assert build_prompt([user("<image>\nQ")], "synth_v1") == " USER: <image>\nQ ASSISTANT:"


def test_plain_guided_is_caption_only():
    prompt = build_prompt([user("<image>"), assistant("a cat")], "plain_guided")
    assert prompt == "<image>\na cat\n"


def test_llava_v1_differs_by_the_human_wording():
    assert "curious human" in TEMPLATES["llava_v1"].system


def test_content_parts_put_placeholders_first_joined_by_newlines():
    assert message_text([IMAGE, text("What is it?")]) == "<image>\nWhat is it?"
    assert message_text([text("What moves?"), VIDEO]) == "<image>\nWhat moves?"
    assert message_text([text("a"), IMAGE, text("b"), VIDEO]) == "<image>\n<image>\na\nb"
    assert message_text([VIDEO]) == "<image>"
    # Parts render like the equivalent string, in every template.
    assert build_prompt([user([IMAGE, text("Q")])], "vicuna_v1") == build_prompt([user("<image>\nQ")])


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_template_renders_build_prompt_byte_for_byte(template, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    expected = build_prompt(messages, template, add_generation_prompt)
    assert render_chat_template(chat_template_for(template), messages, add_generation_prompt) == expected


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_jinja_template_renders_the_same_in_transformers(template, llm_tokenizer):
    # transformers' own chat-template environment (what `tokenizer.apply_chat_template` uses).
    source = chat_template_for(template)
    for name, messages in CONVERSATIONS.items():
        if not messages or any(not isinstance(message["content"], str) for message in messages):
            continue
        for add_generation_prompt in (True, False):
            rendered = llm_tokenizer.apply_chat_template(
                messages, chat_template=source, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            assert rendered == build_prompt(messages, template, add_generation_prompt), name


def test_jinja_sources_differ_only_in_their_settings():
    assert chat_template_for("vicuna_v1").replace("'vicuna_v1'", "'imgsp_v1'") == chat_template_for(
        "imgsp_v1"
    )
    assert '"A chat between a curious human' in chat_template_for("llava_v1")
    assert 'set system = ""' in chat_template_for("synth_v1")


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_jinja_and_python_reject_the_same_messages(template):
    source = chat_template_for(template)
    for messages, message in (
        ([assistant("x")], "expected 'user'"),
        ([user("x"), user("y")], "expected 'assistant'"),
        ([user([{"type": "audio"}])], "content part of type 'audio'"),
    ):
        with pytest.raises(ValueError, match=message):
            build_prompt(messages, template)
        with pytest.raises(ValueError, match=message):
            render_chat_template(source, messages)


def test_errors():
    with pytest.raises(ValueError, match="known templates"):
        build_prompt([user("x")], "chatml")
    with pytest.raises(ValueError, match="known templates"):
        chat_template_for("chatml")
    with pytest.raises(ValueError, match="expected 'user'"):
        build_prompt([assistant("x")])


def test_qformer_question_strips_placeholders_and_the_movie_wrapper():
    assert qformer_question("<image>\nWhat moves? ") == "What moves?"
    assert qformer_question([VIDEO, text("What colour?")]) == "What colour?"
    assert qformer_question("<video> and <image>: which?") == "and : which?"
    assert qformer_question(build_long_video_message(["Hello.", "Go!"], "Who speaks?")) == "Who speaks?"
    web = build_long_video_message(["a", "b"], "Summary?\nBe brief.", variant="web")
    assert qformer_question(web) == "Summary?\nBe brief."


def test_last_user_text_finds_the_final_user_turn():
    prompt = build_prompt([user("<image>\nQ1"), assistant("A1"), user("Q2 <image>")], "vicuna_v1")
    assert last_user_text(prompt, "vicuna_v1") == "Q2 <image>"
    assert last_user_text(build_prompt([user("Q1"), assistant("A1")], "synth_v1"), "synth_v1") == "Q1"
    assert last_user_text("<image> raw text", "vicuna_v1") == "<image> raw text"
    assert last_user_text("<image>\ncaption\n", "plain_guided") == "<image>\ncaption\n"
