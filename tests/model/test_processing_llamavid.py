"""LlamaVidProcessor and LlamaVidImageProcessor: preprocessing, placeholder expansion, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llamavid import LlamaVidProcessor
from llamavid.model import IMAGE_TOKEN_INDEX
from llamavid.model.conversation import build_long_video_message, build_prompt, chat_template_for
from llamavid.model.image_processing_llamavid import CLIP_MEAN, CLIP_STD, LlamaVidImageProcessor
from llamavid.serve.defaults import EMBEDDED_MODEL_DIR
from tiny_helpers import moving_square_video


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_frames_already_at_the_output_size_take_the_array_path_with_the_same_pixels(rng, aspect):
    """A (T, S, S, 3) uint8 array at the output size skips the per-frame PIL path (nothing to pad, resize or
    crop); the pixels are bit-identical to those of the same frames given one by one as PIL images."""
    frames = rng.integers(0, 256, (5, 56, 56, 3), dtype=np.uint8)
    processor = LlamaVidImageProcessor(size=56, image_aspect_ratio=aspect)
    per_frame = processor([Image.fromarray(frame) for frame in frames], is_video=True)
    assert torch.equal(processor(frames, is_video=True), per_frame)
    assert torch.equal(processor(frames[:1]), processor(Image.fromarray(frames[0])))
    by_hand = (frames.astype(np.float32) / 255 - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)
    torch.testing.assert_close(per_frame, torch.from_numpy(by_hand).permute(0, 3, 1, 2), rtol=0, atol=1e-6)


def test_image_preprocessing_follows_the_clip_pipeline(rng):
    array = rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)
    processor = LlamaVidImageProcessor(size=56, image_aspect_ratio="square")
    pixels = processor(array)
    # By hand: shortest edge 30 -> 56 (long side int(56 * 60 / 30) = 112), PIL bicubic, centre crop, CLIP norm.
    resized = np.asarray(Image.fromarray(array).resize((112, 56), Image.Resampling.BICUBIC)).astype(
        np.float32
    )
    crop = resized[:, 28:84] / 255.0
    expected = (crop - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    assert pixels.shape == (1, 3, 56, 56) and pixels.dtype == torch.float32
    np.testing.assert_allclose(pixels[0].permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_pad_mode_pads_images_with_the_mean_colour_but_never_video_frames():
    wide = np.zeros((20, 80, 3), dtype=np.uint8)  # black, 4:1
    padded = LlamaVidImageProcessor(size=56, image_aspect_ratio="pad")(wide)
    background = (np.array([122, 116, 104], np.float32) / 255 - np.array(CLIP_MEAN, np.float32)) / np.array(
        CLIP_STD, np.float32
    )
    np.testing.assert_allclose(padded[0, :, 0, 28].numpy(), background, atol=1e-4)  # top rows: padding
    np.testing.assert_allclose(
        padded[0, :, 28, 28].numpy(), (0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), atol=1e-4
    )
    frames = LlamaVidImageProcessor(size=56, image_aspect_ratio="pad")(wide[None], is_video=True)
    np.testing.assert_allclose(
        frames[0, :, 0, 28].numpy(), (0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), atol=1e-4
    )


def test_grayscale_and_pil_inputs_become_rgb():
    gray = np.full((40, 40), 200, dtype=np.uint8)
    from_array = LlamaVidImageProcessor(size=56)(gray)
    from_pil = LlamaVidImageProcessor(size=56)(Image.fromarray(gray))
    torch.testing.assert_close(from_array, from_pil)
    assert from_array.shape == (1, 3, 56, 56)


def test_prompt_chunks_are_tokenised_separately(tiny_processor, llm_tokenizer):
    text = "USER: <image>\nWhat moves? ASSISTANT:"
    ids = tiny_processor.tokenize_prompt(text)
    expected = (
        [llm_tokenizer.bos_token_id]
        + llm_tokenizer("USER: ", add_special_tokens=False)["input_ids"]
        + [IMAGE_TOKEN_INDEX]
        + llm_tokenizer("\nWhat moves? ASSISTANT:", add_special_tokens=False)["input_ids"]
    )
    assert ids == expected
    assert tiny_processor.tokenize_prompt(text, [3]).count(IMAGE_TOKEN_INDEX) == 3


def test_batch_layout_for_mixed_media_and_questions(tiny_processor, rng):
    video = moving_square_video(frames=4)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    prompts = [
        "<image>\nwhat moves? then <image>\nwhat colour?",  # two questions about one video
        "<image> and <image>: which is brighter?",  # two media, one question each
    ]
    batch = tiny_processor(
        prompts,
        media=[video, [image, video[:2]]],
        questions=[["what moves?", "what colour?"], ["first?", "second?"]],
        padding_side="right",
    )
    assert batch["frame_counts"].tolist() == [4, 1, 2]
    assert batch["media_is_image"].tolist() == [False, True, False]
    assert batch["pixel_values"].shape == (7, 3, 56, 56)
    assert batch["block_media"].tolist() == [0, 0, 1, 2]
    assert batch["block_question"].tolist() == [0, 1, 2, 3]
    counts = (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum(1).tolist()
    assert counts == [2 * 4 * 2, 17 + 2 * 2]
    assert (
        batch["attention_mask"][0, 0] == 1
        and batch["input_ids"][0, 0] == tiny_processor.tokenizer.bos_token_id
    )


def test_left_padding_for_generation(tiny_processor):
    batch = tiny_processor(
        ["<image> short", "<image> a much longer prompt here"],
        media=[moving_square_video(2)] * 2,
        questions=["a", "b"],
    )
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1, 0] == 1
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(text="<image> what?", media=None, questions="what?"), "no media"),
        (
            dict(text="what?", media=np.zeros((8, 8, 3), np.uint8), questions="what?"),
            "no <image> placeholder",
        ),
        (
            dict(text="<image> <image>", media=np.zeros((8, 8, 3), np.uint8), questions=["a", "b", "c"]),
            "need 2 questions",
        ),
        (
            dict(text=["<image>", "<image>"], media=[np.zeros((8, 8, 3), np.uint8)], questions=["a", "b"]),
            "one per prompt",
        ),
        (dict(text="<image>", media=np.zeros((8, 8, 3), np.float32), questions="a"), "uint8"),
    ],
)
def test_bad_inputs_name_what_was_expected(tiny_processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_processor(**kwargs)


def test_processor_round_trip(tmp_path, tiny_processor):
    tiny_processor.save_pretrained(tmp_path)
    again = LlamaVidProcessor.from_pretrained(tmp_path)
    assert again.video_tokens_per_frame == 2 and again.image_tokens_per_frame == 17
    assert len(again.qformer_tokenizer) == 30523 and again.qformer_tokenizer.truncation_side == "left"
    assert again.tokenize_prompt("<image> hi") == tiny_processor.tokenize_prompt("<image> hi")


def test_missing_processor_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="llamavid convert"):
        LlamaVidProcessor.from_pretrained(tmp_path)


def test_decode_drops_placeholders_and_stops_at_sep2(tiny_processor, llm_tokenizer):
    ids = [IMAGE_TOKEN_INDEX, *llm_tokenizer("left</s> extra", add_special_tokens=False)["input_ids"]]
    assert tiny_processor.decode(ids) == "left"


def assert_same_batch(left, right):
    assert sorted(left.keys()) == sorted(right.keys())
    for name in left:
        assert torch.equal(left[name], right[name]), name


def user(content):
    return {"role": "user", "content": content}


def qformer_ids(processor, *questions):
    return processor.qformer_tokenizer(list(questions), padding="longest", return_tensors="pt")["input_ids"]


# Token layout -------------------------------------------------------------------------------------------------
def test_visual_block_lengths_per_layout(tiny_processor):
    assert tiny_processor.visual_block_lengths(1, is_image=True) == [17]
    assert tiny_processor.visual_block_lengths(5) == [10]  # a clip: one <image> of T * (1 + n)
    assert tiny_processor.visual_block_lengths(3, per_frame=True) == [2, 2, 2]  # long video: one per frame
    assert tiny_processor.block_frame_counts(3, per_frame=True) == [1, 1, 1]
    assert tiny_processor.block_frame_counts(3) == [3]
    assert (
        tiny_processor.num_visual_tokens(6) == 12 and tiny_processor.num_visual_tokens(1, is_image=True) == 17
    )
    with pytest.raises(ValueError, match="at least 1"):
        tiny_processor.visual_block_lengths(0)
    with pytest.raises(ValueError, match="an image is one frame"):
        tiny_processor.visual_block_lengths(2, is_image=True)
    with pytest.raises(ValueError, match="per_frame"):
        tiny_processor.visual_block_lengths(1, is_image=True, per_frame=True)


def test_prompt_ids_render_and_expand_in_one_call(tiny_processor):
    messages = [user("<image>\nWhat moves?")]
    prompt = build_prompt(messages, "vicuna_v1")
    assert tiny_processor.prompt_ids(messages, num_frames=4) == tiny_processor.tokenize_prompt(prompt, [8])
    image_ids = tiny_processor.prompt_ids(messages, num_frames=1, is_image=True)
    assert image_ids.count(IMAGE_TOKEN_INDEX) == 17
    text_ids = tiny_processor.prompt_ids([user("Hi")])
    assert text_ids == tiny_processor.tokenize_prompt(build_prompt([user("Hi")]), [])
    # Content parts give the same prompt as the "<image>\n" string.
    video_part = {"type": "video", "video": None}
    parts = [user([video_part, {"type": "text", "text": "What moves?"}])]
    assert tiny_processor.prompt_ids(parts, num_frames=4) == tiny_processor.prompt_ids(messages, num_frames=4)


def test_prompt_ids_lay_out_a_long_video_frame_by_frame(tiny_processor):
    message = build_long_video_message(["Hello...", "", "Bye"], "Who waves?")
    ids = tiny_processor.prompt_ids([user(message)], num_frames=3, per_frame=True)
    prompt = build_prompt([user(message)], "vicuna_v1")
    assert "..." not in prompt
    assert ids == tiny_processor.tokenize_prompt(prompt, [2, 2, 2])
    assert ids.count(IMAGE_TOKEN_INDEX) == 6


@pytest.mark.parametrize(
    ("messages", "layout", "message"),
    [
        ([user("<image>\nQ")], dict(num_frames=2, per_frame=True), "has 1 <image> .* one per frame, 2"),
        (
            [user(build_long_video_message(["a", "b"], "Q"))],
            dict(num_frames=2),
            "has 2 <image> .* needs exactly one",
        ),
        ([user("<image>\nQ")], {}, "without media needs none"),
        ([user("no placeholder")], dict(num_frames=1, is_image=True), "has 0 <image> .* an image"),
    ],
)
def test_prompt_ids_refuse_a_prompt_that_does_not_fit_the_layout(tiny_processor, messages, layout, message):
    with pytest.raises(ValueError, match=message):
        tiny_processor.prompt_ids(messages, **layout)


def test_video_placeholder_is_an_alias(tiny_processor):
    assert tiny_processor.tokenize_prompt("a <video> b", [3]) == tiny_processor.tokenize_prompt(
        "a <image> b", [3]
    )


# transformers-style call -----------------------------------------------------------------------------------------
def test_images_and_videos_arguments_match_media(tiny_processor, rng):
    image = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
    video = moving_square_video(frames=3)
    by_media = tiny_processor("<image>\nwhat?", media=image, questions="what?")
    assert_same_batch(tiny_processor(text="<image>\nwhat?", images=image, questions="what?"), by_media)
    assert_same_batch(
        tiny_processor(text="<image>\nwhat?", images=[Image.fromarray(image)], questions="what?"), by_media
    )
    by_media = tiny_processor("<video>\nwhat?", media=video, questions="what?")
    assert_same_batch(tiny_processor(text="<video>\nwhat?", videos=video, questions="what?"), by_media)
    assert_same_batch(tiny_processor(text="<image>\nwhat?", videos=list(video), questions="what?"), by_media)
    assert (
        by_media["frame_counts"].tolist() == [3] and (by_media["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 6
    )


def test_images_and_videos_follow_their_own_placeholders(tiny_processor, rng):
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    video = moving_square_video(frames=4)
    batch = tiny_processor(
        text=["<video> then <image>: same?", "<image> only"],
        images=[image, image],
        videos=[video, None],
        questions=[["v?", "i?"], "x?"],
    )
    # Media are ordered images first, then videos, per sample; the first placeholder shows the video.
    assert batch["frame_counts"].tolist() == [1, 4, 1]
    assert batch["media_is_image"].tolist() == [True, False, True]
    assert batch["block_media"].tolist() == [1, 0, 2]
    assert (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum(1).tolist() == [4 * 2 + 17, 17]
    with pytest.raises(ValueError, match="mark where each video goes with <video>"):
        tiny_processor(text="<image> <image>", images=image, videos=video, questions="q")
    with pytest.raises(ValueError, match="has <video> but no videos"):
        tiny_processor(text="<video> <image>", images=image, questions="q")
    with pytest.raises(ValueError, match="either as media="):
        tiny_processor(text="<image>", images=image, media=image, questions="q")
    with pytest.raises(ValueError, match="videos\\[0\\] is not understood"):
        tiny_processor(text=["<image>", "<image>"], videos=[image, image], questions="q")


def test_questions_default_to_the_last_user_question(tiny_processor):
    video = moving_square_video(frames=2)
    messages = [
        user("<image>\nWhat moves?"),
        {"role": "assistant", "content": "A square."},
        user("Which colour?"),
    ]
    prompt = build_prompt(messages, "vicuna_v1")
    assert tiny_processor.default_question(prompt) == "Which colour?"
    batch = tiny_processor(prompt, media=video)
    assert torch.equal(batch["qformer_input_ids"], qformer_ids(tiny_processor, "Which colour?"))
    assert_same_batch(batch, tiny_processor(prompt, media=video, questions="Which colour?"))
    # A raw prompt is taken whole; a movie prompt gives the question after the movie.
    assert tiny_processor.default_question("<image> what moves ") == "what moves"
    movie = build_prompt([user(build_long_video_message(["Hi", "Bye"], "Who waves?"))], "vicuna_v1")
    assert tiny_processor.default_question(movie) == "Who waves?"
    # None for one sample only.
    batch = tiny_processor([prompt, "<image> raw"], media=[video, video], questions=[None, "given"])
    assert torch.equal(batch["qformer_input_ids"], qformer_ids(tiny_processor, "Which colour?", "given"))


def test_per_frame_layout_splits_one_video_into_one_frame_blocks(tiny_processor):
    features = torch.randn(3, 5, 8)
    prompt = build_prompt([user(build_long_video_message(["a", "b", "c"], "Who?"))], "vicuna_v1")
    batch = tiny_processor(prompt, media=features, per_frame=True)
    # The same inputs as passing each frame as its own one-frame medium.
    assert_same_batch(batch, tiny_processor(prompt, media=[list(features.split(1))], questions="Who?"))
    assert batch["frame_counts"].tolist() == [1, 1, 1] and batch["block_media"].tolist() == [0, 1, 2]
    assert (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 3 * 2
    video = moving_square_video(frames=3)
    pixels = tiny_processor(prompt, videos=video, per_frame=True)
    assert pixels["pixel_values"].shape[0] == 3 and pixels["frame_counts"].tolist() == [1, 1, 1]
    assert torch.equal(pixels["input_ids"], batch["input_ids"])
    with pytest.raises(ValueError, match="one <image> per frame: the video has 4 frames"):
        tiny_processor(prompt, media=torch.randn(4, 5, 8), per_frame=True)
    with pytest.raises(ValueError, match="frame by frame"):
        tiny_processor("<image>", media=np.zeros((8, 8, 3), np.uint8), per_frame=True)


# Chat template ---------------------------------------------------------------------------------------------------
def test_apply_chat_template_returns_the_string_by_default(tiny_processor):
    messages = [user("<image>\nQ1"), {"role": "assistant", "content": "A1"}, user("Q2")]
    assert tiny_processor.apply_chat_template(messages) == build_prompt(messages, "vicuna_v1")
    assert tiny_processor.apply_chat_template(messages, "synth_v1", False) == build_prompt(
        messages, "synth_v1", False
    )
    assert tiny_processor.apply_chat_template([messages, messages[:1]]) == [
        build_prompt(messages),
        build_prompt(messages[:1]),
    ]
    custom = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    assert tiny_processor.apply_chat_template(messages, chat_template=custom) == "[<image>\nQ1][A1][Q2]"


def test_apply_chat_template_with_media_parts_builds_the_batch(tiny_processor, rng):
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    video = moving_square_video(frames=4)
    messages = [
        user([{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]),
        {"role": "assistant", "content": "A square."},
        user([{"type": "text", "text": "And here?"}, {"type": "video", "video": video}]),
    ]
    batch = tiny_processor.apply_chat_template(messages, tokenize=True, return_dict=True)
    prompt = build_prompt(messages, "vicuna_v1")
    assert prompt.count("<image>") == 2
    expected = tiny_processor(prompt, media=[[image, video]], questions="And here?")
    assert_same_batch(batch, expected)
    assert batch["frame_counts"].tolist() == [1, 4]
    ids = tiny_processor.apply_chat_template(messages, tokenize=True)
    assert ids == expected["input_ids"][0].tolist()
    assert ids.count(IMAGE_TOKEN_INDEX) == 17 + 4 * 2
    with pytest.raises(ValueError, match="content parts and \\['images'\\]"):
        tiny_processor.apply_chat_template(messages, tokenize=True, images=image)


def test_apply_chat_template_batches_and_passes_media_arguments(tiny_processor):
    video = moving_square_video(frames=2)
    conversations = [[user("<image>\nFirst?")], [user("Second, longer question?")]]
    batch = tiny_processor.apply_chat_template(
        conversations, tokenize=True, return_dict=True, media=[video, None], padding_side="right"
    )
    prompts = tiny_processor.apply_chat_template(conversations)
    assert_same_batch(
        batch, tiny_processor(prompts, media=[video, None], questions=["First?", None], padding_side="right")
    )
    ids = tiny_processor.apply_chat_template(conversations, tokenize=True, media=[video, None])
    assert [len(row) for row in ids] == batch["attention_mask"].sum(1).tolist()
    with pytest.raises(ValueError, match="tokenize=True"):
        tiny_processor.apply_chat_template(conversations, return_dict=True)


def test_apply_chat_template_lays_out_a_long_video(tiny_processor):
    video = moving_square_video(frames=3)
    messages = [user(build_long_video_message(["Hi", "", "Bye"], "Who waves?"))]
    batch = tiny_processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, videos=video, per_frame=True
    )
    prompt = build_prompt(messages, "vicuna_v1")
    assert_same_batch(batch, tiny_processor(prompt, media=video, questions="Who waves?", per_frame=True))
    assert batch["frame_counts"].tolist() == [1, 1, 1]
    assert batch["input_ids"][0].tolist() == tiny_processor.prompt_ids(messages, num_frames=3, per_frame=True)


def test_apply_chat_template_reads_media_paths(tiny_processor, tmp_path):
    video = moving_square_video(frames=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(video):
        Image.fromarray(frame).save(folder / f"{index}.png")
    Image.fromarray(video[1]).save(tmp_path / "still.png")
    messages = [
        user(
            [
                {"type": "image", "path": str(tmp_path / "still.png")},
                {"type": "video", "video": str(folder)},
                {"type": "text", "text": "Same?"},
            ]
        )
    ]
    batch = tiny_processor.apply_chat_template(messages, tokenize=True, return_dict=True)
    inline = [
        user(
            [
                {"type": "image", "image": video[1]},
                {"type": "video", "video": video},
                {"type": "text", "text": "Same?"},
            ]
        )
    ]
    assert_same_batch(batch, tiny_processor.apply_chat_template(inline, tokenize=True, return_dict=True))
    assert batch["frame_counts"].tolist() == [1, 3]


# Persistence -----------------------------------------------------------------------------------------------------
def test_chat_template_is_saved_as_jinja_and_loaded(tmp_path, tiny_processor):
    tiny_processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == chat_template_for("vicuna_v1")
    again = LlamaVidProcessor.from_pretrained(tmp_path)
    assert again.chat_template == tiny_processor.chat_template
    # The LLM tokenizer loaded from the folder carries the same template.
    messages = [user("<image>\nQ")]
    assert again.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        build_prompt(messages, "vicuna_v1")
    )
    # An edited template is what the folder renders with.
    custom = chat_template_for("vicuna_v1").replace("USER", "HUMAN")
    (tmp_path / "chat_template.jinja").write_text(custom)
    edited = LlamaVidProcessor.from_pretrained(tmp_path)
    assert edited.chat_template == custom
    assert edited.apply_chat_template(messages).endswith("HUMAN: <image>\nQ ASSISTANT:")
    # ... unless another template name is asked for.
    assert LlamaVidProcessor.from_pretrained(tmp_path, template="synth_v1").apply_chat_template(messages) == (
        build_prompt(messages, "synth_v1")
    )


def test_folders_without_a_jinja_template_still_load(tmp_path, tiny_processor):
    tiny_processor.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    again = LlamaVidProcessor.from_pretrained(tmp_path)
    assert again.chat_template == chat_template_for("vicuna_v1")
    assert again.apply_chat_template([user("Q")]) == build_prompt([user("Q")], "vicuna_v1")


def test_generated_template_follows_the_template_name(tiny_processor):
    tiny_processor.template = "llava_v1"
    assert tiny_processor.apply_chat_template([user("Q")]) == build_prompt([user("Q")], "llava_v1")
    tiny_processor.chat_template = "{{ 'fixed' }}"
    tiny_processor.template = "synth_v1"
    assert tiny_processor.apply_chat_template([user("Q")]) == "fixed"


def test_embedded_model_folder_carries_its_chat_template():
    path = EMBEDDED_MODEL_DIR / "chat_template.jinja"
    assert path.read_text() == chat_template_for("synth_v1")
    processor = LlamaVidProcessor.from_pretrained(EMBEDDED_MODEL_DIR)
    assert processor.template == "synth_v1" and processor.chat_template == chat_template_for("synth_v1")
    messages = [user("<image>\nWhat shape?")]
    assert processor.apply_chat_template(messages) == " USER: <image>\nWhat shape? ASSISTANT:"
    ids = processor.prompt_ids(messages, num_frames=4)
    assert (
        ids.count(IMAGE_TOKEN_INDEX) == processor.num_visual_tokens(4) == 4 * processor.video_tokens_per_frame
    )
