"""`LlamaVidProcessor.long_video_prompt`: a rendered chat prompt about one video in the movie layout."""

from __future__ import annotations

import pytest

from llamavid.errors import InvalidInputError
from llamavid.model.conversation import build_long_video_message


def test_the_chat_form_becomes_the_engines_movie_prompt(tiny_processor):
    texts = ["A square appears.", "", "It moves left..."]
    history = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    chat = tiny_processor.apply_chat_template([*history, {"role": "user", "content": "<image>\nWhere?"}])
    movie, lengths = tiny_processor.long_video_prompt(chat, texts)
    # What `Engine` renders for a question with subtitles: the builder's message as the last user turn.
    message = build_long_video_message(texts, "Where?")
    assert movie == tiny_processor.apply_chat_template([*history, {"role": "user", "content": message}])
    assert lengths == tiny_processor.visual_block_lengths(3, per_frame=True)
    ids = tiny_processor.tokenize_prompt(movie, lengths)
    assert ids.count(-200) == 3 * tiny_processor.video_tokens_per_frame


def test_the_video_must_be_the_only_placeholder_of_the_last_turn(tiny_processor):
    earlier = tiny_processor.apply_chat_template(
        [
            {"role": "user", "content": "<image>\nWhat?"},
            {"role": "assistant", "content": "A square."},
            {"role": "user", "content": "Where?"},
        ]
    )
    with pytest.raises(InvalidInputError, match="last user turn"):
        tiny_processor.long_video_prompt(earlier, ["a"])
    two = tiny_processor.apply_chat_template([{"role": "user", "content": "<image><image>\nWhat?"}])
    with pytest.raises(InvalidInputError, match="found 2"):
        tiny_processor.long_video_prompt(two, ["a", "b"])
