"""Movie prompts, the long-video message builder and the official generation defaults."""

from __future__ import annotations

import pytest

from llamavid.model.conversation import (
    GENERATION_DEFAULTS,
    build_long_video_message,
    build_prompt,
    long_video_inputs,
)


def test_long_video_inputs_interleave_frames_and_subtitles():
    assert long_video_inputs(["Hi there...", "", "Bye"]) == "<image>Hi there<image><image>Bye"


def test_cli_movie_message_matches_the_official_script_layout():
    message = build_long_video_message(["Hello.", "Go!"], "Who is speaking?")
    assert message == (
        "Below is a movie. Memorize the content and answer my question after watching this movie."
        "<image>Hello.<image>Go!Now the movie end.\nWho is speaking?"
    )
    prompt = build_prompt([{"role": "user", "content": message}], "vicuna_v1")
    assert prompt.endswith("\nWho is speaking? ASSISTANT:") and prompt.count("<image>") == 2


def test_web_movie_part_message_and_prebuilt_inputs():
    message = build_long_video_message("<image>a...b<image>c", "Summary?", variant="web")
    assert message == (
        "Below is a part of movie. Memorize the content and answer my question after this movie part. "
        "The movie part start.\n<image>ab<image>c\nThe movie part end.\nSummary?"
    )
    with pytest.raises(ValueError, match="variant"):
        build_long_video_message([], "q", variant="tv")


def test_generation_defaults_follow_the_official_entry_points():
    assert GENERATION_DEFAULTS["cli"] == {
        "do_sample": True,
        "temperature": 0.2,
        "top_p": 0.7,
        "max_new_tokens": 512,
    }
    assert GENERATION_DEFAULTS["movie"]["temperature"] == 0.6 and GENERATION_DEFAULTS["movie"]["top_p"] == 0.9
    assert GENERATION_DEFAULTS["image_eval"] == {"do_sample": False, "max_new_tokens": 128}
    assert GENERATION_DEFAULTS["video_qa"]["max_new_tokens"] == 1024
