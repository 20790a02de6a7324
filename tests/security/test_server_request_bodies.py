"""Hostile request bodies: text the tokenizer cannot take, malformed JSON, oversize and odd encodings."""

from __future__ import annotations

import pytest
from security_helpers import error_of

LONE_SURROGATE_BODIES = {
    "message text": b'{"messages": [{"role": "user", "content": "what is \\ud800 this?"}], "max_tokens": 2}',
    "text part": b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
    "earlier turn": (
        b'{"messages": [{"role": "user", "content": "hi \\ud83d"}, {"role": "assistant", "content": "yes"},'
        b' {"role": "user", "content": "and?"}], "max_tokens": 2}'
    ),
}


@pytest.mark.parametrize("where", sorted(LONE_SURROGATE_BODIES))
def test_lone_surrogate_is_a_400_json_error(attacker, where):
    response = attacker.post(content=LONE_SURROGATE_BODIES[where])
    assert response.status_code == 400
    assert "surrogate" in error_of(response)


def test_media_url_with_a_lone_surrogate_is_400(attacker):
    body = (
        b'{"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": '
        b'{"url": "file:///tmp/\\ud800.mp4"}}, {"type": "text", "text": "hi"}]}]}'
    )
    response = attacker.post(content=body)
    assert response.status_code == 400 and "surrogate" in error_of(response)


MALFORMED = {
    "not JSON": b"{not json",
    "empty": b"",
    "a list": b"[]",
    "null": b"null",
    "a string": b'"hello"',
    "truncated": b'{"messages": [{"role": "user", "content": "hi"',
    "invalid UTF-8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "nested 50000 deep": b"[" * 50_000 + b"]" * 50_000,
    "5000-digit number": b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1'
    + b"0" * 5000
    + b"}",
    "huge exponent": b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999999}',
    "no messages": b'{"messages": []}',
    "messages not a list": b'{"messages": {"role": "user"}}',
    "unknown role": b'{"messages": [{"role": "tool", "content": "hi"}]}',
    "unknown part": b'{"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}',
    "media part without URL": b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": null}]}]}',
    "URL not a string": b'{"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": 5}}]}]}',
    "options not an object": b'{"messages": [{"role": "user", "content": "hi"}], "mm_processor_kwargs": 5}',
    "image token in text": b'{"messages": [{"role": "user", "content": "<image> what?"}]}',
    "blank question": b'{"messages": [{"role": "user", "content": "   "}]}',
    "ends with assistant": b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_bodies_are_400_json(attacker, name):
    response = attacker.post(content=MALFORMED[name])
    assert response.status_code == 400, response.text
    assert error_of(response)


@pytest.mark.parametrize("name", ["invalid UTF-8", "nested 50000 deep", "5000-digit number"])
def test_unparsable_bodies_are_invalid_request_errors(attacker, name):
    response = attacker.post(content=MALFORMED[name])
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "JSON" in error_of(response)


def test_body_that_is_not_json_typed(attacker):
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    response = attacker.post(content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 400 and error_of(response)


def test_long_prompts_are_refused_by_the_context_budget(attacker):
    many_turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "and then?"} for i in range(2001)
    ]
    for body in (
        {"messages": [{"role": "user", "content": "why " * 100_000}], "max_tokens": 2},
        {"messages": many_turns, "max_tokens": 2},
    ):
        response = attacker.post(body)
        assert response.status_code == 400 and "context" in error_of(response)
