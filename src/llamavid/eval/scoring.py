"""LLM-free scoring rules: option-letter parsing, VQA answer normalisation and accuracy, yes/no parsing.

Rules follow each benchmark's public evaluation description; where a choice of ours affects numbers it is
stated in the docstring.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llamavid.errors import InvalidInputError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# Ordered most- to least-specific: an explicit "answer is X" beats a leading letter, which beats "(X)" anywhere.
_ANSWER_PHRASE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:|should be|would be)?\s*[:\-]?\s*(?:option\s*)?\(?([A-Za-z])\)?(?![A-Za-z])",
    re.IGNORECASE,
)
_LEADING = re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\]\.:,]|\s*$)")
_LEADING_LOWER_ALONE = re.compile(r"^\s*[\(\[]?([a-z])[\)\]\.]?\s*$")
_PARENTHESISED = re.compile(r"\(([A-Z])\)")
_LETTER_DOT = re.compile(r"(?<![A-Za-z])([A-Z])[\.\)](?:\s|$)")


def parse_option_letter(text: str, num_options: int, options: Sequence[str] | None = None) -> str | None:
    """The option letter a free-form answer picks, or ``None`` when it names none (counted as wrong).

    Accepts ``"B"``, ``"(B)"``, ``"B."``, ``"b"``, ``"Answer: b"``, ``"The answer is B) a dog"``,
    ``"(C) cat"``; when no letter is found and ``options`` is given, an answer containing exactly one option's
    text picks that option. Letters beyond ``num_options`` are ignored, so "I" in "I think" is never option I
    of a four-way question; a capital "A" used as an article ("A dog runs") is not read as a letter.
    """
    valid = LETTERS[:num_options]
    stripped = text.strip()
    for pattern in (_ANSWER_PHRASE, _LEADING, _LEADING_LOWER_ALONE, _PARENTHESISED, _LETTER_DOT):
        for match in pattern.finditer(stripped):
            letter = match.group(1).upper()
            if letter in valid:
                return letter
    if options:
        lowered = stripped.lower()
        hits = [
            LETTERS[i]
            for i, option in enumerate(options[:num_options])
            if option.strip() and option.strip().lower().rstrip(".") in lowered
        ]
        if len(hits) == 1:
            return hits[0]
    return None


def parse_yes_no(text: str) -> str:
    """POPE's rule (LLaVA ``eval_pope.py``): first sentence; "no"/"not" as a word means no, otherwise yes."""
    first = text.strip().split(".")[0].replace(",", "")
    words = first.lower().split()
    return "no" if "no" in words or "not" in words else "yes"


def parse_mme_answer(text: str) -> str:
    """MME's rule: the answer itself if yes/no, else "yes"/"no" in its first 4 characters, else "other"."""
    answer = text.strip().lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


# VQA normalisation (the VQA challenge's evaluation: punctuation, number words, articles, contractions).
_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# The official table maps apostrophe-less spellings to the apostrophe form; it is generated from the forms.
_CONTRACTED_FORMS = [
    "ain't",
    "aren't",
    "can't",
    "could've",
    "couldn't",
    "couldn't've",
    "didn't",
    "doesn't",
    "don't",
    "hadn't",
    "hadn't've",
    "hasn't",
    "haven't",
    "he'd",
    "he'd've",
    "he's",
    "how'd",
    "how'll",
    "how's",
    "I'd",
    "I'd've",
    "I'll",
    "I'm",
    "I've",
    "isn't",
    "it'd",
    "it'd've",
    "it'll",
    "let's",
    "ma'am",
    "mightn't",
    "mightn't've",
    "might've",
    "mustn't",
    "must've",
    "needn't",
    "not've",
    "o'clock",
    "oughtn't",
    "'ow's'at",
    "shan't",
    "she'd",
    "she'd've",
    "she'll",
    "she's",
    "should've",
    "shouldn't",
    "shouldn't've",
    "somebody'd",
    "somebody'd've",
    "somebody'll",
    "somebody's",
    "someone'd",
    "someone'd've",
    "someone'll",
    "someone's",
    "something'd",
    "something'd've",
    "something'll",
    "that's",
    "there'd",
    "there'd've",
    "there're",
    "there's",
    "they'd",
    "they'd've",
    "they'll",
    "they're",
    "they've",
    "'twas",
    "wasn't",
    "we'd",
    "we'd've",
    "we'll",
    "we're",
    "we've",
    "weren't",
    "what'll",
    "what're",
    "what's",
    "what've",
    "when's",
    "where'd",
    "where's",
    "where've",
    "who'd",
    "who'd've",
    "who'll",
    "who're",
    "who's",
    "who've",
    "why'll",
    "why're",
    "why's",
    "won't",
    "would've",
    "wouldn't",
    "wouldn't've",
    "y'all",
    "y'all'll",
    "y'all'd've",
    "you'd",
    "you'd've",
    "you'll",
    "you're",
    "you've",
]
_CONTRACTIONS = {form.replace("'", ""): form for form in _CONTRACTED_FORMS}


def _process_punctuation(text: str) -> str:
    out = text
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa_answer(text: str) -> str:
    """VQA-challenge answer normalisation (lower case, punctuation, number words -> digits, no articles)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1]: mean over the 10 leave-one-out subsets of ``min(#matches / 3, 1)``.

    Both sides are normalised (LLaVA normalises predictions before submission, and the challenge server
    normalises the ground truth); with fewer than 2 reference answers the leave-one-out is skipped.
    """
    if not answers:
        raise InvalidInputError("vqa_accuracy needs at least one reference answer.")
    predicted = normalize_vqa_answer(prediction)
    references = [normalize_vqa_answer(answer) for answer in answers]
    if len(references) == 1:
        return float(predicted == references[0])
    scores = []
    for left_out in range(len(references)):
        others = references[:left_out] + references[left_out + 1 :]
        scores.append(min(1.0, sum(answer == predicted for answer in others) / 3.0))
    return sum(scores) / len(scores)


def exact_match(prediction: str, answer: str) -> bool:
    """GQA-style match: lower-cased, surrounding whitespace and a trailing period removed (LLaVA's GQA convert)."""
    return prediction.strip().rstrip(".").strip().lower() == answer.strip().lower()


def binary_metrics(
    predicted: Sequence[str], labels: Sequence[str], positive: str = "yes"
) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio (in %) for yes/no answers (POPE)."""
    tp = sum(p == positive and y == positive for p, y in zip(predicted, labels, strict=True))
    fp = sum(p == positive and y != positive for p, y in zip(predicted, labels, strict=True))
    tn = sum(p != positive and y != positive for p, y in zip(predicted, labels, strict=True))
    fn = sum(p != positive and y == positive for p, y in zip(predicted, labels, strict=True))
    total = max(len(labels), 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / total,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / total,
        "count": float(len(labels)),
    }


def paired_bootstrap(
    scores_a: Sequence[float], scores_b: Sequence[float], samples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Mean difference ``a - b`` of per-item scores on the same items, with a paired-bootstrap 95 % interval.

    Items are resampled with replacement ``samples`` times (the same draw for both systems, which is what makes it
    paired); the interval is the 2.5th-97.5th percentile of the resampled differences. ``a`` *beats* ``b`` when
    the whole interval is above zero (``beats`` is 1.0), the convention of our ablation tables.

    Raises:
        ValueError: if the lists differ in length or are empty.
    """
    import numpy as np

    if len(scores_a) != len(scores_b) or not len(scores_a):
        raise InvalidInputError(
            f"paired_bootstrap needs two non-empty score lists over the same items, got {len(scores_a)} "
            f"and {len(scores_b)} scores."
        )
    diff = np.asarray(scores_a, dtype=np.float64) - np.asarray(scores_b, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(diff), size=(samples, len(diff)))
    means = diff[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "difference": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "beats": float(low > 0),
        "count": float(len(diff)),
    }
