"""Sampling values a client should not be able to turn into a 500, a crash or a stream that starts and fails."""

from __future__ import annotations

import json

import pytest
from security_helpers import ask, error_of


def raw(**fields: object) -> bytes:
    """A text-only request as JSON bytes; NaN and Infinity are written as Python's json module writes them."""
    return json.dumps(ask(**fields), allow_nan=True).encode()


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-5])
def test_tiny_temperature_decodes_greedily(attacker, temperature):
    greedy = attacker.post(content=raw(temperature=0, max_tokens=5))
    tiny = attacker.post(content=raw(temperature=temperature, max_tokens=5))
    assert greedy.status_code == tiny.status_code == 200, tiny.text
    assert (
        tiny.json()["choices"][0]["message"]["content"] == greedy.json()["choices"][0]["message"]["content"]
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("seed", [2**63, 2**64, -1])
def test_seed_out_of_range_is_400_before_any_stream(attacker, seed, stream):
    response = attacker.post(content=raw(seed=seed, stream=stream))
    assert response.status_code == 400  # a JSON error, not a 200 event stream carrying one
    assert "seed" in error_of(response)


def test_largest_seed_is_accepted(attacker):
    response = attacker.post(content=raw(seed=2**63 - 1, temperature=0.7))
    assert response.status_code == 200, response.text


BAD_VALUES = [
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("temperature", float("-inf")),
    ("temperature", -0.5),
    ("temperature", 1e9),
    ("temperature", "hot"),
    ("top_p", 0),
    ("top_p", 2),
    ("top_p", -0.1),
    ("top_p", float("nan")),
    ("max_tokens", 0),
    ("max_tokens", -1),
    ("max_tokens", 10**9),
    ("max_tokens", 10**30),
    ("max_tokens", 2.5),
    ("max_completion_tokens", 0),
    ("seed", 1e20),
    ("seed", "x"),
    ("n", 0),
    ("n", 10**6),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "field, value", BAD_VALUES, ids=[f"{field}={value!r}" for field, value in BAD_VALUES]
)
def test_bad_sampling_values_are_400(attacker, field, value, stream):
    response = attacker.post(content=raw(**{field: value, "stream": stream}))
    assert response.status_code == 400, response.text
    message = error_of(response)
    assert field.split("_")[0] in message or "n=1" in message or "context" in message
