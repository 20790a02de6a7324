"""Long-VideoQA generation (docs/architecture.md §9): QA pairs about a movie from its synopsis and script via an LLM.

The paper prompted GPT-4 / Claude-2 with the synopsis for 2 plot summaries and 5 plot + 5 character questions,
and with the script for 5 complex plot-reasoning + 5 detail/scene questions. The prompts below are ours, written
from that description (the originals are not published). Replies are cached per (movie, kind) in
``<out>.cache.jsonl`` so a rerun resumes; pairs are validated, de-duplicated by normalised question, and written
in the LLaVA-style training format (docs/architecture.md §9) with ``<image>`` in the first human turn.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamavid.errors import LlamaVidError
from llamavid.eval.records import JsonlStore, write_json_atomic

logger = logging.getLogger(__name__)

_SYSTEM = "You write question-answer pairs for training a video assistant that watches whole movies."
_FORMAT = (
    'Reply with only a JSON array of objects with the keys "question" and "answer"; no other text. '
    "Answers must be grounded in the text above, written as complete sentences."
)


@dataclass(frozen=True)
class QAKind:
    """One kind of generated QA: its source document, how many pairs, and the instruction."""

    name: str
    source: str  # "synopsis" or "script"
    count: int
    instruction: str


KINDS: tuple[QAKind, ...] = (
    QAKind(
        "summary",
        "synopsis",
        2,
        "Create {count} different requests asking for a summary of the movie's plot, "
        "each with a detailed plot summary as the answer.",
    ),
    QAKind(
        "plot",
        "synopsis",
        5,
        "Create {count} questions about the movie's plot (events, causes, outcomes) with their answers.",
    ),
    QAKind(
        "character",
        "synopsis",
        5,
        "Create {count} questions about the movie's characters (who they are, their "
        "relationships, motivations and changes) with their answers.",
    ),
    QAKind(
        "reasoning",
        "script",
        5,
        "Create {count} questions that need reasoning across several scenes of the "
        "script (why something happens, what it leads to) with their answers.",
    ),
    QAKind(
        "detail",
        "script",
        5,
        "Create {count} questions about specific details of individual scenes (places, "
        "objects, actions, what is said) with their answers.",
    ),
)


class GenerationError(LlamaVidError, ValueError):
    """The endpoint's reply for one kind could not be turned into valid QA pairs after all retries."""


def build_messages(kind: QAKind, document: str) -> list[dict[str, str]]:
    label = "Movie synopsis" if kind.source == "synopsis" else "Movie script"
    user = f"{label}:\n{document}\n\n{kind.instruction.format(count=kind.count)}\n{_FORMAT}"
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def parse_pairs(reply: str, kind: QAKind) -> list[dict[str, str]]:
    """Validated ``[{"question", "answer"}]`` from a reply (code fences and surrounding prose tolerated).

    Raises:
        GenerationError: No JSON array, wrong shapes, empty fields, or no usable pair at all.
    """
    start, end = reply.find("["), reply.rfind("]")
    if start < 0 or end <= start:
        raise GenerationError(f"{kind.name}: no JSON array in the reply {reply[:200]!r}")
    try:
        data = json.loads(reply[start : end + 1])
    except ValueError as error:
        raise GenerationError(f"{kind.name}: reply is not valid JSON ({error}): {reply[:200]!r}") from error
    if not isinstance(data, list):
        raise GenerationError(f"{kind.name}: expected a JSON array, got {type(data).__name__}")
    pairs = []
    for entry in data:
        if not isinstance(entry, dict):
            continue
        question, answer = entry.get("question"), entry.get("answer")
        if (
            isinstance(question, str)
            and isinstance(answer, str)
            and question.strip()
            and len(answer.strip()) >= 2
        ):
            pairs.append({"question": question.strip(), "answer": answer.strip()})
    if not pairs:
        raise GenerationError(f"{kind.name}: the reply holds no pair with non-empty 'question' and 'answer'.")
    if len(pairs) < kind.count:
        logger.warning("%s: asked for %d pairs, got %d usable", kind.name, kind.count, len(pairs))
    return pairs[: kind.count]


def normalise_question(question: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", question.lower()).split())


def generate_longqa(
    synopsis: str,
    script: str,
    client: Any,
    out: Path,
    movie_id: str,
    video: str,
    kinds: Sequence[QAKind] = KINDS,
    max_chars: int = 60_000,
    attempts: int = 3,
) -> dict[str, Any]:
    """Generate, validate, de-duplicate and write the QA items of one movie (resumable through the cache).

    Args:
        synopsis / script: Source texts (the script is truncated to ``max_chars``; the report says so).
        client: An OpenAI-compatible chat client with ``complete(messages) -> str`` and ``model``/``endpoint``.
        out: Output JSON file (a list; items of other movies already in it are kept).
        movie_id: Prefix of item ids.
        video: The ``video`` field of every item (e.g. the movie's feature file).
        attempts: Tries per kind when the reply is not valid QA JSON.

    Returns:
        ``{"written": n, "duplicates": d, "kinds": {...}, "errors": {kind: message}, "truncated": bool}``.
    """
    cache = JsonlStore(out.with_name(out.name + ".cache.jsonl"), key="key")
    cached = cache.load()
    documents = {"synopsis": synopsis.strip(), "script": script.strip()[:max_chars]}
    summary: dict[str, Any] = {
        "written": 0,
        "duplicates": 0,
        "kinds": {},
        "errors": {},
        "truncated": len(script.strip()) > max_chars,
    }
    existing: list[dict[str, Any]] = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else []
    kept = [item for item in existing if not str(item.get("id", "")).startswith(f"{movie_id}_")]
    seen = {
        normalise_question(item["conversations"][0]["value"].replace("<image>\n", ""))
        for item in kept
        if item.get("conversations")
    }
    new_items = []
    for kind in kinds:
        if not documents[kind.source]:
            summary["errors"][kind.name] = f"empty {kind.source}"
            continue
        key = f"{movie_id}/{kind.name}"
        pairs = None
        if key in cached:
            pairs = cached[key]["pairs"]
        else:
            last_error = ""
            for attempt in range(1, attempts + 1):
                reply = client.complete(build_messages(kind, documents[kind.source]))
                try:
                    pairs = parse_pairs(reply, kind)
                    break
                except GenerationError as error:
                    last_error = str(error)
                    logger.info("%s attempt %d: %s", key, attempt, error)
            if pairs is None:
                summary["errors"][kind.name] = last_error
                continue
            cache.append(
                {
                    "key": key,
                    "pairs": pairs,
                    "model": client.model,
                    "endpoint": client.endpoint,
                    "reply_kind": kind.name,
                }
            )
        count = 0
        for pair in pairs:
            normalised = normalise_question(pair["question"])
            if normalised in seen:
                summary["duplicates"] += 1
                continue
            seen.add(normalised)
            new_items.append(
                {
                    "id": f"{movie_id}_{kind.name}_{count}",
                    "video": video,
                    "qa_kind": kind.name,
                    "generator": {"model": client.model},
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{pair['question']}"},
                        {"from": "gpt", "value": pair["answer"]},
                    ],
                }
            )
            count += 1
        summary["kinds"][kind.name] = count
    write_json_atomic(out, kept + new_items)
    summary["written"] = len(new_items)
    return summary
