"""Scoring rules on hand-picked strings (exact values)."""

from __future__ import annotations

import pytest

from llamavid.eval.judge import MalformedJudgeReplyError, parse_judge_reply
from llamavid.eval.scoring import (
    binary_metrics,
    normalize_vqa_answer,
    parse_mme_answer,
    parse_option_letter,
    parse_yes_no,
    vqa_accuracy,
)

OPTIONS = ["a red car", "a blue bus", "a green tram", "a horse"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(B)", "B"), ("B.", "B"), ("Answer: b", "B"), ("The answer is B) a blue bus", "B"), ("b", "B"),
        ("C", "C"), ("(D) a horse", "D"), ("Best option: (A)", "A"), ("I think the answer is C.", "C"),
        ("It is a green tram.", "C"), ("A man is walking.", None), ("E", None), ("nothing useful", None),
        ("The correct option is d", "D"),
    ],
)  # fmt: skip
def test_option_letter_parsing(text, expected):
    assert parse_option_letter(text, 4, OPTIONS) == expected


def test_vqa_normalisation_and_accuracy():
    assert normalize_vqa_answer("Two dogs.") == "2 dogs"
    assert normalize_vqa_answer("The Cat!") == "cat"
    assert normalize_vqa_answer("dont know") == "don't know"
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("two", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("3", ["2"] * 2 + ["3"] * 8) == 1.0
    assert vqa_accuracy("cat", ["dog"] * 10) == 0.0


def test_yes_no_rules():
    assert parse_yes_no("No, there is not.") == "no"
    assert parse_yes_no("Yes. No doubt.") == "yes"
    assert parse_mme_answer("Yes, it is") == "yes"
    assert parse_mme_answer("Nope") == "no"
    assert parse_mme_answer("Maybe") == "other"
    metrics = binary_metrics(["yes", "yes", "no", "no"], ["yes", "no", "no", "yes"])
    assert metrics == {
        "accuracy": 50.0,
        "precision": 50.0,
        "recall": 50.0,
        "f1": 50.0,
        "yes_ratio": 50.0,
        "count": 4.0,
    }


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("{'pred': 'yes', 'score': 4}", {"pred": "yes", "score": 4}),
        ('{"pred": "No", "score": 4.8}', {"pred": "no", "score": 4}),  # int() truncation as the originals
        ("Evaluation: {'pred': 'no', 'score': '2'} done", {"pred": "no", "score": 2}),
    ],
)
def test_judge_reply_parsing(reply, expected):
    assert parse_judge_reply(reply, wants_pred=True) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "yes, 4",
        "{'pred': 'maybe', 'score': 3}",
        "{'pred': 'yes', 'score': 9}",
        "{'pred': 'yes'}",
        "{'pred': 'yes', 'score': __import__('os')}",
    ],
)
def test_malformed_judge_replies(reply):
    with pytest.raises(MalformedJudgeReplyError):
        parse_judge_reply(reply, wants_pred=True)


def test_paired_bootstrap_separates_real_gaps_from_noise() -> None:
    import numpy as np

    from llamavid.eval.scoring import paired_bootstrap

    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 400)
    better = np.where(rng.random(400) < 0.3, 1, base)  # fixes ~30 % of items, breaks none
    result = paired_bootstrap(better, base)
    assert result["difference"] > 0.1 and result["low"] > 0 and result["beats"] == 1.0
    same = paired_bootstrap(base, rng.permutation(base))  # same accuracy, unrelated errors
    assert same["low"] < 0 < same["high"] and same["beats"] == 0.0
    assert paired_bootstrap(base, base)["difference"] == 0.0


def test_paired_bootstrap_rejects_unpaired_lists() -> None:
    import pytest

    from llamavid.eval.scoring import paired_bootstrap

    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1, 0], [1])
