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
