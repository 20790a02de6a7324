"""Conversation templates (spec §6)."""

import pytest

from llamavid.model.conversation import TEMPLATES, build_prompt

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def test_vicuna_single_turn_prompt_matches_the_official_text():
    prompt = build_prompt([{"role": "user", "content": "<image>\nWhat happens?"}], "vicuna_v1")
    assert prompt == SYSTEM + " USER: <image>\nWhat happens? ASSISTANT:"


def test_multi_turn_uses_sep_and_sep2():
    prompt = build_prompt(
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
        "imgsp_v1",
    )
    assert prompt == SYSTEM + " USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"
    assert TEMPLATES["vicuna_v1"].stop_strings == ("</s>",)


def test_plain_guided_is_caption_only():
    assert (
        build_prompt(
            [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "a cat"}],
            "plain_guided",
        )
        == "<image>\na cat\n"
    )


def test_llava_v1_differs_by_the_human_wording():
    assert "curious human" in TEMPLATES["llava_v1"].system


def test_errors():
    with pytest.raises(ValueError, match="known templates"):
        build_prompt([{"role": "user", "content": "x"}], "chatml")
    with pytest.raises(ValueError, match="expected 'user'"):
        build_prompt([{"role": "assistant", "content": "x"}])
