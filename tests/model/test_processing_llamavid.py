"""LlamaVidProcessor and LlamaVidImageProcessor: preprocessing, placeholder expansion, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llamavid import LlamaVidProcessor
from llamavid.model import IMAGE_TOKEN_INDEX
from llamavid.model.image_processing_llamavid import CLIP_MEAN, CLIP_STD, LlamaVidImageProcessor
from tiny_helpers import moving_square_video


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
