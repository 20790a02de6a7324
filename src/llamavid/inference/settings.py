"""How an answer is sampled: `SamplingSettings`, its defaults and where they come from. Imports no torch.

Precedence, lowest to highest: the official demo's sampling (temperature 0.2, top-p 0.7, 512 new tokens), then
whatever the checkpoint's ``generation_config.json`` sets (a converted long-video checkpoint says 0.6 / 0.9 /
1024), then command-line flags and request fields. ``temperature 0`` means greedy decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from llamavid.errors import InvalidInputError

# The official demo CLI samples with these; used where the checkpoint does not say otherwise.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.7
DEFAULT_MAX_NEW_TOKENS = 512
# Below this a positive temperature is treated as greedy: dividing logits by it overflows float32 (1e-300 would
# turn every logit into +-inf and the softmax into NaN), and the limit of sampling as T -> 0 is the argmax.
MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**63 - 1

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "MAX_SEED",
    "MIN_TEMPERATURE",
    "SamplingSettings",
]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{name} must be a number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample one answer; validated on construction, so a bad value never reaches the sampler.

    Attributes:
        temperature: softmax temperature in [0, 5]; 0 selects greedy search (deterministic). Positive values
            below `MIN_TEMPERATURE` also decode greedily (see there).
        top_p: nucleus sampling mass in (0, 1] (ignored when greedy).
        max_new_tokens: answer length limit in tokens, at least 1.
        seed: seeds torch's generator before sampling, in [0, 2**63 - 1]; reproducible for batches of one.
    """

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int | None = None

    def __post_init__(self) -> None:
        temperature = _number("temperature", self.temperature)
        if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
            raise InvalidInputError(
                f"temperature must be between 0 and {MAX_TEMPERATURE:g} (0 = greedy), got {self.temperature!r}."
            )
        top_p = _number("top_p", self.top_p)
        if not (math.isfinite(top_p) and 0 < top_p <= 1):
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InvalidInputError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}."
            )
        if self.max_new_tokens < 1:
            raise InvalidInputError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}."
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED
        ):
            raise InvalidInputError(f"seed must be an integer between 0 and 2**63 - 1, got {self.seed!r}.")

    @property
    def do_sample(self) -> bool:
        return self.temperature >= MIN_TEMPERATURE

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests can share one `generate` call only when they sample the same way."""
        if not self.do_sample:
            return (False,)
        return (True, self.temperature, self.top_p, self.seed)

    def updated(self, **overrides: Any) -> SamplingSettings:
        """A copy with the non-None overrides applied (validated again)."""
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})

    @classmethod
    def from_generation_config(cls, generation_config: Any) -> SamplingSettings:
        """The defaults a checkpoint asks for in its ``generation_config.json``, over the official demo's.

        Only fields the file sets explicitly count: ``do_sample: false`` means greedy; ``do_sample: true``
        samples with the file's ``temperature``/``top_p`` (transformers' 1.0 where unset); a file that says
        nothing about sampling keeps the demo's 0.2 / 0.7. ``max_new_tokens`` is taken when set.
        """
        settings = cls()
        if generation_config is None:
            return settings
        explicit = generation_config.to_diff_dict() if hasattr(generation_config, "to_diff_dict") else {}
        explicit = dict(explicit or {})
        if explicit.get("do_sample") is False:
            return settings.updated(temperature=0.0, max_new_tokens=explicit.get("max_new_tokens"))
        if explicit.get("do_sample") is True:
            # A file that asks for sampling means transformers' sampling: unset fields keep its defaults (1.0).
            settings = settings.updated(temperature=1.0, top_p=1.0)
        return settings.updated(
            temperature=explicit.get("temperature"),
            top_p=explicit.get("top_p"),
            max_new_tokens=explicit.get("max_new_tokens"),
        )
