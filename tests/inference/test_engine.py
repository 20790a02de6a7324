"""The inference engine on a random tiny model: equivalences, determinism, chat behaviour, attention strips.

The weights are random, so answers are noise; what is checked is what must hold for any weights. The answer
content is checked only when the trained tiny model is embedded (`test_embedded_model_answers_correctly`).
"""

import json

import numpy as np
import pytest
import torch

from llamavid.errors import InvalidInputError
from llamavid.inference.engine import Engine
from llamavid.inference.loading import default_model_path
from llamavid.inference.settings import SamplingSettings
from tiny_helpers import moving_square_video

GREEDY = dict(temperature=0, max_new_tokens=8)


def test_engine_matches_the_plain_processor_and_generate_path(serving_engine, monkeypatch):
    """Features + visual_tokens must give the ids and answer of `model.generate(**processor(...))`.

    The engine rounds features through the cache's fp16 (so cached and uncached media answer alike); without
    that rounding both paths compute the same thing.
    """
    # Features reach the engine through `encode_pixels`, which rounds to the cache dtype: keep float32 here.
    monkeypatch.setattr("llamavid.inference.media.CACHE_DTYPE", torch.float32)
    video = moving_square_video(4, 64)
    question = "Which way does the square move?"
    processor, model = serving_engine.processor, serving_engine.model
    prompt = processor.apply_chat_template([{"role": "user", "content": f"<image>\n{question}"}])
    inputs = processor(prompt, media=video, questions=question)
    reference = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    expected = processor.decode(reference[0, inputs["input_ids"].shape[1] :])

    request = serving_engine.build_request(question, serving_engine.load_media(video))
    assert request.input_ids == inputs["input_ids"][0].tolist()
    answer = serving_engine.ask(video, question, **GREEDY)
    assert answer.text == expected
    assert answer.visual_tokens == 8 and answer.frames == 4  # 2 tokens per frame


def test_greedy_is_deterministic_and_streaming_equals_the_answer(serving_engine):
    video = moving_square_video(4, 64)
    first = serving_engine.ask(video, "What happens?", **GREEDY)
    pieces: list[str] = []
    second = serving_engine.ask(video, "What happens?", on_delta=pieces.append, **GREEDY)
    assert first.text == second.text
    assert "".join(pieces).strip() == second.text
    stream = serving_engine.stream(video, "What happens?", **GREEDY)
    assert "".join(stream).strip() == first.text and stream.answer.text == first.text


def test_batched_answers_equal_unbatched(serving_engine):
    video = moving_square_video(4, 64)
    items = [
        (video, "Which way does the square move?"),
        (video[:2], "What colour is it?"),  # shorter prompt: exercises left padding
        (None, "Say hello."),  # text-only row in the same batch
        (video[0], "Describe the image."),  # a still image: a different token layout
    ]
    batched = serving_engine.ask_many(items, batch_size=4, **GREEDY)
    single = [serving_engine.ask(media, question, **GREEDY).text for media, question in items]
    assert [answer.text for answer in batched] == single
    assert len(set(single)) > 1, "answers should depend on the input (see save_serving_model)"


@pytest.mark.parametrize("layout", ["video", "image", "subtitles"])
def test_questions_about_one_media_share_one_qformer_pass(serving_engine, tmp_path, layout):
    """`build_requests` (one Q-Former pass for all questions, shorter ones padded) gives each question the
    prompt and visual tokens `build_request` gives it alone, in every token layout."""
    video = moving_square_video(5, 64)
    if layout == "subtitles":
        srt = tmp_path / "talk.srt"
        srt.write_text("1\n00:00:01,000 --> 00:00:02,500\nthe square is red\n")
        media = serving_engine.load_media(video, subtitles=srt)
    else:
        media = serving_engine.load_media(video[0] if layout == "image" else video)
    questions = ["Which way does the square move?", "Colour?", "  How many squares are there in the video?  "]
    together = serving_engine.build_requests(questions, media)
    for question, request in zip(questions, together, strict=True):
        alone = serving_engine.build_request(question, media)
        assert request.input_ids == alone.input_ids and request.question == alone.question
        torch.testing.assert_close(request.visual_tokens, alone.visual_tokens, rtol=1e-4, atol=1e-5)
    # the context tokens follow each question: two different questions never share them
    assert not torch.allclose(together[0].visual_tokens, together[1].visual_tokens)
    with pytest.raises(InvalidInputError, match="empty"):  # checked before any visual work
        serving_engine.build_requests(["fine?", "  "], media)


def test_ask_many_groups_questions_by_media(serving_engine):
    video, other = moving_square_video(4, 64), moving_square_video(3, 64)
    items = [(video, "Which way does it move?"), (other, "What colour?"), (video, "What colour is it?")]
    batched = serving_engine.ask_many(items, batch_size=2, **GREEDY)
    assert [answer.question for answer in batched] == [question for _, question in items]  # input order kept
    assert [answer.frames for answer in batched] == [4, 3, 4]
    assert [answer.text for answer in batched] == [
        serving_engine.ask(media, question, **GREEDY).text for media, question in items
    ]


def test_per_row_limits_and_cancellation_in_one_batch(serving_engine):
    video = moving_square_video(3, 64)
    short = serving_engine.build_request(
        "a?", serving_engine.load_media(video), settings=SamplingSettings(0, 1, 2)
    )
    long = serving_engine.build_request("b?", None, settings=SamplingSettings(0, 1, 6))
    cancelled = serving_engine.build_request("c?", None, settings=SamplingSettings(0, 1, 6))
    answers = serving_engine.answer_batch([short, long, cancelled], is_cancelled=lambda row: row == 2)
    assert answers[0].completion_tokens <= 2
    assert answers[2].finish_reason == "cancelled" and answers[2].completion_tokens == 0


def test_chat_reuses_features_and_only_the_latest_turn_carries_the_media(serving_engine, monkeypatch):
    video = moving_square_video(4, 64)
    session = serving_engine.chat(video, **GREEDY)
    encodes = []
    monkeypatch.setattr(
        serving_engine.model.model,
        "get_vision_features",
        lambda *args: encodes.append(1) or pytest.fail("features must be cached"),
    )
    first = session.ask("What is shown?")
    assert first.text == serving_engine.ask(session.media, "What is shown?", **GREEDY).text
    request = serving_engine.build_request("And then?", session.media, session.history)
    prompt_ids = request.input_ids
    placeholder_runs = np.diff(np.flatnonzero(np.diff(np.r_[0, np.array(prompt_ids) < 0, 0])))
    assert len(placeholder_runs) == 1  # one visual block, in the latest turn
    text = serving_engine.processor.tokenizer.decode([i for i in prompt_ids if i >= 0])
    assert text.index("What is shown?") < text.index("And then?")
    session.ask("And then?")
    assert len(session.history) == 2 and not encodes
    session.reset()
    assert session.history == []


def test_subtitles_interleave_one_block_per_frame(serving_engine, tmp_path):
    srt = tmp_path / "talk.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:01,500\nhello there\n\n2\n00:00:02,200 --> 00:00:02,900\nbye\n")
    media = serving_engine.load_media(moving_square_video(4, 64), subtitles=srt)
    assert media.subtitles == ["", "hello there", "bye", ""]  # each cue goes to the last frame before it ends
    request = serving_engine.build_request("What is said?", media)
    ids = np.array(request.input_ids)
    starts = np.flatnonzero(np.diff(np.r_[0, ids < 0]) == 1)
    # '<image><image>hello there<image>bye<image>': frames without speech sit next to each other.
    assert len(starts) == 3 and request.num_visual_tokens == 8
    text = serving_engine.processor.tokenizer.decode([i for i in request.input_ids if i >= 0])
    assert "hello there" in text and "Below is a movie" in text


def test_attention_strip(serving_engine, tmp_path):
    result = serving_engine.attention(moving_square_video(5, 64), "Where is the red square?")
    assert result.relevance.shape == (5,) and np.isclose(result.relevance.sum(), 1, atol=1e-5)
    assert result.weights.shape[:1] == (5,) and np.allclose(result.weights.sum(-1), 1, atol=1e-4)
    path = result.save(tmp_path / "strip.png")
    from PIL import Image

    with Image.open(path) as image:
        assert image.width == 5 * 96
    assert json.loads(json.dumps(result.to_dict()))["most_relevant_frame"] in range(5)


def test_context_limit_and_bad_inputs_are_clear(serving_engine):
    with pytest.raises(ValueError, match="context"):
        serving_engine.build_request("q", None, settings=SamplingSettings(0, 1, 10**6))
    with pytest.raises(ValueError, match="empty"):
        serving_engine.build_request("   ", None)
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=-1)
    with pytest.raises(ValueError, match="cuda"):
        Engine.from_pretrained(None, device="nonsense")


@pytest.mark.skipif(default_model_path() is None, reason="the trained tiny model is not embedded yet")
def test_embedded_model_answers_correctly_about_generated_videos():
    """The shipped tiny model answers held-out synthetic clips (see docs/tiny-model.md for per-type accuracy).

    Colour-change and direction questions are types it answers well (held-out accuracy 0.97-1.0); 12 clips of
    each must get at least 8 right. Chance is 1/8 and 1/4, so a broken pipeline cannot pass by luck.
    """
    from llamavid.synth.clips import make_clip_question

    engine = Engine.from_pretrained(None, device="cpu")
    rng = np.random.default_rng(0)
    for question_type in ("video_colour_change", "video_direction"):
        items = [make_clip_question(rng, "heldout", question_type, f"q{i}") for i in range(12)]
        answers = engine.ask_many([(item.media.render(), item.question) for item in items], **GREEDY)
        pairs = [(item.answer, answer.text) for item, answer in zip(items, answers, strict=True)]
        correct = sum(expected in text.lower().split() for expected, text in pairs)
        assert correct >= 8, (question_type, pairs)


def test_random_fallback_warns(caplog, monkeypatch):
    monkeypatch.setattr("llamavid.inference.loading.default_model_path", lambda: None)
    with caplog.at_level("WARNING"):
        engine = Engine.from_pretrained(None, device="cpu")
    assert engine.is_random and "RANDOM" in caplog.text
    assert next(engine.model.parameters()).dtype == torch.float32
