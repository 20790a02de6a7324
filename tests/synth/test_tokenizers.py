"""The byte-level subword tokenizer for the tiny LLM (no unknown tokens) and the v4 builders' new home."""

import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from llamavid.errors import InvalidInputError
from llamavid.synth.dataset import QUESTION_TYPES
from llamavid.synth.phrasing import heldout_templates
from llamavid.synth.tokenizers import (
    DEFAULT_SUBWORD_VOCAB,
    SUBWORD_SPECIAL_TOKENS,
    build_subword_tokenizer,
    subword_corpus,
)

STRINGS = [
    "What color is the square?",
    "Whre does teh red star go??",
    "What colour is the background? grey or gray",
    "USER: Where does the purple circle move? ASSISTANT: down</s>",
    "emoji 😀👍🏽 and CJK 日本語の字幕 and 한국어",
    "tabs\tand\nnew lines  and   runs of spaces ",
    "Ünïcödé façade naïve — “quotes” ‘and’ ellipsis…",
    "<pad> <s> literal specials",
    "",
    " ",
    "\x00\x01 control",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return subword_corpus()


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("subword")
    build_subword_tokenizer(folder, corpus)
    return AutoTokenizer.from_pretrained(str(folder))  # what a model folder loads


def _random_strings(count: int) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        points = rng.integers(1, 0x2FFFF, size=int(rng.integers(1, 24)))
        out.append("".join(chr(int(p)) for p in points if not 0xD800 <= p <= 0xDFFF))
    return out


def test_every_string_round_trips_without_unknown_tokens(tokenizer):
    assert tokenizer.unk_token_id is None and "<unk>" not in tokenizer.get_vocab()
    for text in STRINGS + _random_strings(300):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert all(0 <= i < len(tokenizer) for i in ids)
        assert tokenizer.decode(ids) == text


def test_size_specials_and_answers_are_single_tokens(tokenizer):
    assert len(tokenizer) == DEFAULT_SUBWORD_VOCAB
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == list(SUBWORD_SPECIAL_TOKENS)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert (
        tokenizer("a")["input_ids"] == tokenizer("a", add_special_tokens=False)["input_ids"]
    )  # no BOS added
    # Every answer is one token after a space (what follows "ASSISTANT:"), except the two-word quadrants.
    multi = {
        o for options in QUESTION_TYPES.values() for o in options if len(tokenizer(" " + o)["input_ids"]) > 1
    }
    assert multi == {"top left", "top right", "bottom left", "bottom right"}
    # Spelling variants and trained words are whole tokens, not bytes.
    for word in (" color", " colour", " gray", " grey", " direction", " ASSISTANT"):
        assert len(tokenizer(word)["input_ids"]) == 1, word


def test_building_is_deterministic(corpus, tmp_path):
    first = build_subword_tokenizer(tmp_path / "a", corpus)
    second = build_subword_tokenizer(tmp_path / "b", list(corpus))
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    assert first("Where does it go?")["input_ids"] == second("Where does it go?")["input_ids"]


def _found(template: str, text: str) -> bool:
    pattern = "[^\\n]+?".join(re.escape(part) for part in re.split(r"\{\w+\}", template))
    return re.search(pattern, text, re.IGNORECASE) is not None


def test_held_out_templates_are_not_in_the_corpus(corpus):
    text = "\n".join(corpus)
    assert "color" in text
    assert _found("Where does the {colour} {shape} go?", text)  # a trained template is
    for question_type in QUESTION_TYPES:
        for template in heldout_templates(question_type):
            assert not _found(template, text), template


def test_bad_sizes_are_refused():
    with pytest.raises(InvalidInputError, match="below the 259"):
        build_subword_tokenizer(None, ["a b"], vocab_size=100)
    with pytest.raises(InvalidInputError, match="empty"):
        build_subword_tokenizer(None, [], vocab_size=300)
