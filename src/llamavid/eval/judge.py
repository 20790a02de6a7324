"""LLM judging through any OpenAI-compatible chat-completions endpoint.

The prompts are the published ones of the benchmarks LLaMA-VID reports (Video-ChatGPT's zero-shot QA judge and
its five benchmark judges, as used by ``llamavid/eval/eval_msvd_qa.py`` and ``evaluate_benchmark_*.py``). They
are reproduced **verbatim** on purpose: a judge score is only comparable when the judge reads the same text,
quirks included (the missing space after "STRING.", the ``{''score': 4.8}`` example). Everything else here
is ours: temperature 0 (the originals left the API default), retries with backoff, per-item failure records,
and provenance (judge model, endpoint, prompt hash, date) written into every judgement.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from llamavid.errors import DependencyError, InvalidInputError, LlamaVidError, LlamaVidRuntimeError

logger = logging.getLogger(__name__)

# The system texts concatenate without separators exactly like the originals (e.g. "task:------##INSTRUCTIONS: ").
_QA_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. "
    "Your task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
_QA_USER = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, "
    "with 5 indicating the highest meaningful match. "
    "Please generate the response in the form of a Python dictionary string with keys 'pred' and 'score', "
    "where value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {{'pred': 'yes', 'score': 4.8}}."
)


def _benchmark_system(subject: str, task: str, instructions: list[str]) -> str:
    return (
        f"You are an intelligent chatbot designed for evaluating the {subject}. "
        f"{task} Here's how you can accomplish the task:"
        "------"
        "##INSTRUCTIONS: " + "\n".join(instructions)
    )


def _benchmark_user(quality: str, level: str, value_phrase: str) -> str:
    return (
        "Please evaluate the following video-based question-answer pair:\n\n"
        "Question: {question}\n"
        "Correct Answer: {answer}\n"
        "Predicted Answer: {pred}\n\n"
        f"Provide your evaluation only as a {quality} score where the {quality} score is an integer value "
        f"between 0 and 5, with 5 indicating the highest level of {level}. "
        f"Please generate the response in the form of a Python dictionary string with keys 'score', where its "
        f"value is {value_phrase} in INTEGER, not STRING."
        "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
        "For example, your response should look like this: {{''score': 4.8}}."
    )


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt: system text, user template (``str.format`` fields) and the reply keys it asks for."""

    name: str
    system: str
    user: str
    wants_pred: bool

    @property
    def sha256(self) -> str:
        """Hash of the exact prompt text; stored with every judgement so changed prompts never mix."""
        return hashlib.sha256((self.system + "\x00" + self.user).encode("utf-8")).hexdigest()


PROMPTS: dict[str, JudgePrompt] = {
    "qa": JudgePrompt("qa", _QA_SYSTEM, _QA_USER, wants_pred=True),
    "correctness": JudgePrompt(
        "correctness",
        _benchmark_system(
            "factual accuracy of generative outputs for video-based question-answer pairs",
            "Your task is to compare the predicted answer with the correct answer and determine if they are "
            "factually consistent.",
            [
                "- Focus on the factual consistency between the predicted answer and the correct answer. The "
                "predicted answer should not contain any misinterpretations or misinformation.",
                "- The predicted answer must be factually accurate and align with the video content.",
                "- Consider synonyms or paraphrases as valid matches.",
                "- Evaluate the factual accuracy of the prediction compared to the answer.",
            ],
        ),
        _benchmark_user("factual accuracy", "factual consistency", "the factual accuracy score"),
        wants_pred=False,
    ),
    "detail": JudgePrompt(
        "detail",
        _benchmark_system(
            "detail orientation of generative outputs for video-based question-answer pairs",
            "Your task is to compare the predicted answer with the correct answer and determine its level of "
            "detail, considering both completeness and specificity.",
            [
                "- Check if the predicted answer covers all major points from the video. The response should "
                "not leave out any key aspects.",
                "- Evaluate whether the predicted answer includes specific details rather than just generic "
                "points. It should provide comprehensive information that is tied to specific elements of the "
                "video.",
                "- Consider synonyms or paraphrases as valid matches.",
                "- Provide a single evaluation score that reflects the level of detail orientation of the "
                "prediction, considering both completeness and specificity.",
            ],
        ),
        _benchmark_user("detail orientation", "detail orientation", "the detail orientation score"),
        wants_pred=False,
    ),
    "context": JudgePrompt(
        "context",
        _benchmark_system(
            "contextual understanding of generative outputs for video-based question-answer pairs",
            "Your task is to compare the predicted answer with the correct answer and determine if the "
            "generated response aligns with the overall context of the video content.",
            [
                "- Evaluate whether the predicted answer aligns with the overall context of the video content. "
                "It should not provide information that is out of context or misaligned.",
                "- The predicted answer must capture the main themes and sentiments of the video.",
                "- Consider synonyms or paraphrases as valid matches.",
                "- Provide your evaluation of the contextual understanding of the prediction compared to the "
                "answer.",
            ],
        ),
        _benchmark_user(
            "contextual understanding", "contextual understanding", "contextual understanding score"
        ),
        wants_pred=False,
    ),
    "temporal": JudgePrompt(
        "temporal",
        _benchmark_system(
            "temporal understanding of generative outputs for video-based question-answer pairs",
            "Your task is to compare the predicted answer with the correct answer and determine if they "
            "correctly reflect the temporal sequence of events in the video content.",
            [
                "- Focus on the temporal consistency between the predicted answer and the correct answer. The "
                "predicted answer should correctly reflect the sequence of events or details as they are "
                "presented in the video content.",
                "- Consider synonyms or paraphrases as valid matches, but only if the temporal order is "
                "maintained.",
                "- Evaluate the temporal accuracy of the prediction compared to the answer.",
            ],
        ),
        _benchmark_user("temporal accuracy", "temporal consistency", "the temporal accuracy score"),
        wants_pred=False,
    ),
    "consistency": JudgePrompt(
        "consistency",
        "You are an intelligent chatbot designed for evaluating the consistency of generative outputs for "
        "similar video-based question-answer pairs. "
        "You will be given two very similar questions, a common answer common to both the questions and "
        "predicted answers for the two questions ."
        "Your task is to compare the predicted answers for two very similar question, with a common correct "
        "answer and determine if they are consistent. Here's how you can accomplish the task:"
        "------"
        "##INSTRUCTIONS: "
        "- Focus on the consistency between the two predicted answers and the correct answer. Both predicted "
        "answers should correspond to the correct answer and to each other, and should not contain any "
        "contradictions or significant differences in the conveyed information.\n"
        "- Both predicted answers must be consistent with each other and the correct answer, in terms of the "
        "information they provide about the video content.\n"
        "- Consider synonyms or paraphrases as valid matches, but only if they maintain the consistency in the "
        "conveyed information.\n"
        "- Evaluate the consistency of the two predicted answers compared to the correct answer.",
        "Please evaluate the following video-based question-answer pair:\n\n"
        "Question 1: {question1}\n"
        "Question 2: {question2}\n"
        "Correct Answer: {answer}\n"
        "Predicted Answer to Question 1: {pred1}\n"
        "Predicted Answer to Question 2: {pred2}\n\n"
        "Provide your evaluation only as a consistency score where the consistency score is an integer value "
        "between 0 and 5, with 5 indicating the highest level of consistency. "
        "Please generate the response in the form of a Python dictionary string with keys 'score', where its "
        "value is the consistency score in INTEGER, not STRING."
        "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
        "For example, your response should look like this: {{''score': 4.8}}.",
        wants_pred=False,
    ),
}


class JudgeError(LlamaVidError, RuntimeError):
    """The judge endpoint failed for one request after all retries (HTTP error, timeout, bad payload)."""


class MalformedJudgeReplyError(JudgeError):
    """The judge answered, but not with the requested ``{'pred': 'yes'|'no', 'score': N}`` dictionary."""

    def __init__(self, message: str, reply: str) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class JudgeRequest:
    """One judgement to make: ``key`` is unique within a run (``"<item id>/<prompt name>"``)."""

    key: str
    prompt: JudgePrompt
    fields: dict[str, str]

    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.prompt.system},
            {"role": "user", "content": self.prompt.user.format(**self.fields)},
        ]


_DICT_PATTERN = re.compile(r"\{[^{}]*\}", re.DOTALL)


def parse_judge_reply(reply: str, wants_pred: bool) -> dict[str, Any]:
    """Parse ``{'pred': 'yes', 'score': 4}`` (Python or JSON dict syntax, optionally wrapped in prose/fences).

    The score is truncated with ``int()`` as the official scripts do (``int(4.8) == 4``); values outside 0-5
    are rejected. Only literals are evaluated (``ast.literal_eval``), never code.

    Raises:
        MalformedJudgeReplyError: No dictionary, wrong keys, ``pred`` not yes/no, or a score that is not a number
            in [0, 5].
    """
    candidates = _DICT_PATTERN.findall(reply)
    if not candidates:
        raise MalformedJudgeReplyError(f"no dictionary in the judge reply {reply[:200]!r}", reply)
    parsed: Any = None
    for candidate in candidates:
        for loader in (ast.literal_eval, json.loads):
            try:
                parsed = loader(candidate)
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        if isinstance(parsed, dict):
            break
    if not isinstance(parsed, dict):
        raise MalformedJudgeReplyError(
            f"cannot parse a dictionary from the judge reply {reply[:200]!r}", reply
        )
    if "score" not in parsed:
        raise MalformedJudgeReplyError(f"judge reply has no 'score': {parsed!r}", reply)
    try:
        score_value = float(parsed["score"])
    except (TypeError, ValueError):
        raise MalformedJudgeReplyError(f"judge score is not a number: {parsed['score']!r}", reply) from None
    if not 0 <= score_value <= 5:
        raise MalformedJudgeReplyError(f"judge score {score_value} is outside 0-5", reply)
    result: dict[str, Any] = {"score": int(score_value)}
    if wants_pred:
        pred = parsed.get("pred")
        if not isinstance(pred, str) or pred.strip().lower() not in ("yes", "no"):
            raise MalformedJudgeReplyError(f"judge 'pred' must be 'yes' or 'no', got {pred!r}", reply)
        result["pred"] = pred.strip().lower()
    return result


@dataclass
class JudgeClient:
    """A chat-completions client with retries.

    Args:
        url: Base URL of an OpenAI-compatible API (``http://host:8000/v1``) or the full
            ``.../chat/completions`` URL. There is deliberately no default host.
        model: Judge model id sent in each request and recorded in each judgement.
        api_key: Bearer token; defaults to ``$LLAMAVID_JUDGE_API_KEY``, then ``$OPENAI_API_KEY``; not sent if
            neither is set (local servers).
        temperature: 0 by default: our choice for reproducibility (the original scripts used the API default).
        max_retries: Attempts per request for transport/5xx/429 failures, with exponential backoff.
        malformed_retries: Extra attempts when the reply is not the requested dictionary.
        backoff_s: First backoff delay in seconds (doubles each retry).
        timeout_s: Per-request timeout.
        transport: An ``httpx`` transport (tests).
    """

    url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    max_retries: int = 4
    malformed_retries: int = 2
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    max_tokens: int | None = 64
    transport: Any = None
    _client: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.url or not re.match(r"^https?://", self.url):
            raise InvalidInputError(
                f"--judge-url must be an http(s) URL of an OpenAI-compatible API, got {self.url!r}."
            )
        if not self.model:
            raise InvalidInputError("--judge-model is required with --judge-url (the judge's model id).")
        if self.api_key is None:
            self.api_key = os.environ.get("LLAMAVID_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def _http(self) -> Any:
        if self._client is None:
            try:
                import httpx
            except ImportError as error:
                raise DependencyError(
                    "judging needs httpx; install it with: pip install 'llamavid[eval]'"
                ) from error
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(timeout=self.timeout_s, headers=headers, transport=self.transport)
        return self._client

    def provenance(self, prompt: JudgePrompt) -> dict[str, Any]:
        return {
            "model": self.model,
            "endpoint": self.endpoint,
            "prompt": prompt.name,
            "prompt_sha256": prompt.sha256,
            "temperature": self.temperature,
        }

    def complete(self, messages: list[dict[str, str]]) -> str:
        """One chat completion; retries transport errors, 429 and 5xx with exponential backoff."""
        import httpx

        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        delay = self.backoff_s
        last_error = "no attempt made"
        for attempt in range(1, self.max_retries + 1):
            try:
                response = self._http().post(self.endpoint, json=body)
                if response.status_code == 429 or response.status_code >= 500:
                    last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                elif response.status_code >= 400:
                    raise JudgeError(
                        f"judge endpoint {self.endpoint} refused the request: HTTP {response.status_code} "
                        f"{response.text[:300]}. Check --judge-url, --judge-model and the API key."
                    )
                else:
                    payload = response.json()
                    content = payload["choices"][0]["message"]["content"]
                    if not isinstance(content, str):
                        raise JudgeError(f"judge returned non-text content: {content!r}")
                    return content
            except (httpx.TransportError, ValueError, KeyError, IndexError, TypeError) as error:
                last_error = f"{type(error).__name__}: {error}"
            if attempt < self.max_retries:
                logger.info("judge attempt %d failed (%s); retrying in %.1f s", attempt, last_error, delay)
                time.sleep(delay)
                delay *= 2
        raise JudgeError(
            f"judge endpoint {self.endpoint} failed {self.max_retries} times; last: {last_error}"
        )

    def judge(self, request: JudgeRequest) -> dict[str, Any]:
        """Judge one request and return the record to cache (parsed verdict, raw reply, provenance, date).

        Raises:
            MalformedJudgeReplyError: Every attempt produced an unusable reply (the last one is attached).
            JudgeError: The endpoint kept failing.
        """
        attempts = 1 + self.malformed_retries
        for attempt in range(1, attempts + 1):
            reply = self.complete(request.messages())
            try:
                verdict = parse_judge_reply(reply, request.prompt.wants_pred)
            except MalformedJudgeReplyError as error:
                if attempt == attempts:
                    raise MalformedJudgeReplyError(f"{error} (after {attempts} attempts)", reply) from None
                logger.info("malformed judge reply for %s (attempt %d): %s", request.key, attempt, error)
                continue
            return {
                "key": request.key,
                "verdict": verdict,
                "reply": reply,
                "attempts": attempt,
                "judge": self.provenance(request.prompt),
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
        raise LlamaVidRuntimeError("unreachable")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
