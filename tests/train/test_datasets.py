"""Dataset: stage templates, the seeded per-turn <image> rule, loss masking (spec §9.3) and bad-data errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import write_records

from llamavid.model.configuration_llamavid import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llamavid.train.datasets import (
    BadRecordError,
    LlavaJsonDataset,
    read_training_json,
    render_conversation,
    sample_frame_indices,
)

MULTI_TURN = [
    {"from": "human", "value": "What colour\nis the square?\n<image>"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "Where is it?"},
    {"from": "gpt", "value": "7 cells"},
    {"from": "human", "value": "And its size?"},
    {"from": "gpt", "value": "big"},
]


@pytest.fixture
def media_dir(tmp_path):
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "a.png")
    frames = np.random.default_rng(0).integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "v.npz", frames=frames, timestamps=np.arange(10) * 0.5)  # 2 fps source
    return tmp_path


def supervised_runs(labels: list[int]) -> list[list[int]]:
    """Contiguous runs of supervised label ids."""
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def test_stage1_plain_guided_supervises_caption_and_newline(media_dir, llm_tokenizer):
    records = [
        {
            "id": "c",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image\nbriefly."},
                {"from": "gpt", "value": "A grey picture."},
            ],
        }
    ]
    dataset = LlavaJsonDataset([write_records(media_dir / "s1.json", records)], llm_tokenizer, "plain_guided")
    sample = dataset[0]
    assert sample["prompt"] == "<image>A grey picture.\n"
    assert sample["questions"] == ["Describe the imagebriefly."]  # <image> and newlines removed, no space
    ids, labels = sample["input_ids"], sample["labels"]
    assert ids[:2] == [llm_tokenizer.bos_token_id, IMAGE_TOKEN_INDEX] and labels[:2] == [IGNORE_INDEX] * 2
    assert all(label != IGNORE_INDEX for label in labels[2:])  # caption + "\n", no EOS (spec §9.3)
    assert llm_tokenizer.decode(labels[2:]) == "A grey picture.\n"


def test_stage2_multi_turn_supervises_only_answers_and_eos(media_dir, llm_tokenizer, tiny_processor):
    records = [{"id": "m", "image": "a.png", "conversations": MULTI_TURN}]
    dataset = LlavaJsonDataset([write_records(media_dir / "s2.json", records)], llm_tokenizer, "imgsp_v1")
    sample = dataset[0]
    runs = supervised_runs(sample["labels"])
    decoded = [llm_tokenizer.decode(run).strip() for run in runs]
    assert decoded == ["red</s>", "7 cells</s>", "big</s>"]
    for run in runs:
        assert run[-1] == llm_tokenizer.eos_token_id
    # Prompt, questions and visual placeholders are never supervised.
    for token, label in zip(sample["input_ids"], sample["labels"], strict=True):
        assert label in (IGNORE_INDEX, token)
        if token == IMAGE_TOKEN_INDEX:
            assert label == IGNORE_INDEX
    # Same ids as the processor (the collator relies on it).
    assert sample["input_ids"] == tiny_processor.tokenize_prompt(sample["prompt"])
    assert sample["prompt"].startswith("A chat between a curious user")
    assert "USER: <image>\nWhat colour\nis the square? ASSISTANT: red</s>USER: " in sample["prompt"]


def test_per_turn_image_rule_is_seeded(llm_tokenizer):
    def render(seed: int):
        return render_conversation(MULTI_TURN, "imgsp_v1", has_media=True, rng=np.random.default_rng(seed))

    first = render(0)
    assert first.prompt.count("<image>") == 3
    assert first.questions == ["What colouris the square?", "Where is it?", "And its size?"]
    assert render(0) == first  # same seed, same placement
    placements = set()
    for seed in range(12):
        prompt = render(seed).prompt
        placements.add(("<image>\nWhere is it?" in prompt, "Where is it?\n<image>" in prompt))
    assert placements == {(True, False), (False, True)}  # both placements occur, exactly one per turn
    # Other templates keep a single <image> (only the first turn's, moved to the front).
    single = render_conversation(MULTI_TURN, "vicuna_v1", has_media=True)
    assert single.prompt.count("<image>") == 1 and single.questions == ["What colouris the square?"]


def test_dataset_placement_depends_on_seed_epoch_and_index_only(media_dir, llm_tokenizer):
    records = [{"id": str(i), "image": "a.png", "conversations": MULTI_TURN} for i in range(6)]
    path = write_records(media_dir / "mt.json", records)
    a = LlavaJsonDataset([path], llm_tokenizer, "imgsp_v1", seed=3)
    b = LlavaJsonDataset([path], llm_tokenizer, "imgsp_v1", seed=3)
    assert [a[i]["prompt"] for i in (5, 0, 3)] == [b[i]["prompt"] for i in (5, 0, 3)]


def test_text_only_and_video_records(media_dir, llm_tokenizer):
    records = [
        {"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "v", "video": "v.npz", "conversations": MULTI_TURN[:2]},
    ]
    dataset = LlavaJsonDataset(
        [write_records(media_dir / "tv.json", records)], llm_tokenizer, "imgsp_v1", max_frames=3
    )
    text = dataset[0]
    assert text["media"] == [] and text["questions"] == [] and IMAGE_TOKEN_INDEX not in text["input_ids"]
    video = dataset[1]
    assert video["media"][0].shape == (3, 32, 32, 3) and video["blocks"] == [(3, False)]


def test_fps_sampling_and_cap():
    timestamps = np.arange(10) * 0.5  # 2 fps, 5 s
    assert sample_frame_indices(timestamps, 1.0, None).tolist() == [0, 2, 4, 6, 8]
    capped = sample_frame_indices(timestamps, 1.0, 2)
    assert len(capped) == 2 and capped[0] == 0 and capped[-1] >= 4  # uniform over the whole video


def test_long_video_features_record(tmp_path, llm_tokenizer):
    from llamavid.data.official_features import save_features

    save_features(torch.randn(3, 17, 32), "<image>hello<image><image>bye", tmp_path / "movie")
    records = [
        {
            "id": "movie",
            "video": "movie.safetensors",
            "conversations": [
                {"from": "human", "value": "<image>\nWho speaks?"},
                {"from": "gpt", "value": "Leo"},
            ],
        }
    ]
    dataset = LlavaJsonDataset([write_records(tmp_path / "long.json", records)], llm_tokenizer, "imgsp_v1")
    sample = dataset[0]
    assert (
        sample["prompt"].count("<image>") == 3
        and "<image>hello<image><image>bye\nWho speaks?" in sample["prompt"]
    )
    assert sample["questions"] == ["Who speaks?"] * 3 and len(sample["media"]) == 3
    assert sample["media_index"] == [0, 1, 2] and sample["blocks"] == [(1, False)] * 3


# Bad data -------------------------------------------------------------------------------------------------------
def _dataset(tmp_path, tokenizer, records, template="imgsp_v1"):
    return LlavaJsonDataset([write_records(tmp_path / "bad.json", records)], tokenizer, template)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"id": "x", "image": "missing.png", "conversations": MULTI_TURN[:2]},
            r"image file .*missing.png not found",
        ),
        (
            {"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nhi"}]},
            "no answer",
        ),
        (
            {
                "id": "x",
                "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "a"}],
            },
            "text-only record",
        ),
        (
            {
                "id": "x",
                "image": "a.png",
                "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a"}],
            },
            "exactly one <image>",
        ),
        (
            {
                "id": "x",
                "image": "a.png",
                "conversations": [
                    *MULTI_TURN[:2],
                    {"from": "human", "value": "<image>\nmore"},
                    {"from": "gpt", "value": "b"},
                ],
            },
            "exactly one <image>",
        ),
        (
            {
                "id": "x",
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": "<image>"},
                    {"from": "human", "value": "?"},
                    {"from": "gpt", "value": "b"},
                ],
            },
            "must alternate",
        ),
        ({"id": "x", "image": "a.png", "conversations": "nope"}, "non-empty list"),
    ],
)
def test_bad_records_name_file_index_and_id(media_dir, llm_tokenizer, record, message):
    good = {"id": "ok", "image": "a.png", "conversations": MULTI_TURN[:2]}
    with pytest.raises(BadRecordError, match=message) as error:
        _dataset(media_dir, llm_tokenizer, [good, record])
    assert "bad.json[1] (id='x')" in str(error.value)


def test_malformed_json_and_undecodable_media(media_dir, llm_tokenizer):
    (media_dir / "broken.json").write_text('[{"id": 1,]')
    with pytest.raises(BadRecordError, match=r"broken.json: malformed JSON at line 1 column"):
        LlavaJsonDataset([media_dir / "broken.json"], llm_tokenizer, "imgsp_v1")
    (media_dir / "junk.png").write_bytes(b"not an image")
    records = [{"id": "j", "image": "junk.png", "conversations": MULTI_TURN[:2]}]
    dataset = _dataset(media_dir, llm_tokenizer, records)
    with pytest.raises(BadRecordError, match=r"bad.json\[0\] \(id='j'\): cannot load media"):
        dataset[0]
    with pytest.raises(BadRecordError, match="plain_guided template needs exactly one human and one gpt"):
        _dataset(
            media_dir,
            llm_tokenizer,
            [{"id": "p", "image": "a.png", "conversations": MULTI_TURN}],
            "plain_guided",
        )


def test_synth_records_load(tmp_path, llm_tokenizer):
    from llamavid.synth import write_dataset

    path = write_dataset(tmp_path, "train", n=6, kind="stage2", image_size=56, clip_frames=(5, 6))
    dataset = LlavaJsonDataset([path], llm_tokenizer, "imgsp_v1", max_frames=4)
    for index in range(len(dataset)):
        sample = dataset[index]
        answer = json.loads(path.read_text())[index]["conversations"][1]["value"]
        assert llm_tokenizer.decode(supervised_runs(sample["labels"])[0]).strip() == answer + "</s>"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"[" * 50_000 + b"]" * 50_000,
            r"the JSON is nested deeper than the parser's limit of about \d+ levels",
        ),
        ('[{"id": "caf\u00e9"}]'.encode("cp1252"), r"not valid UTF-8 text: byte 0xE9 at line 1, column 13"),
        (b'[\n {"id": 1},\n {"id": "\xff"}]', r"not valid UTF-8 text: byte 0xFF at line 3, column 10"),
        (b" [ ]\n", r"holds no records \(an empty JSON list\)"),
    ],
    ids=["deep", "cp1252", "third_line", "empty"],
)
def test_unusable_json_files_are_named(tmp_path, llm_tokenizer, content, message):
    path = tmp_path / "train.json"
    path.write_bytes(content)
    with pytest.raises(BadRecordError, match=rf"^{re.escape(str(path))}: {message}"):
        LlavaJsonDataset([path], llm_tokenizer, "imgsp_v1")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_json_in_any_unicode_encoding_is_read(tmp_path, encoding):
    records = [{"id": "caf\u00e9", "conversations": [{"from": "human", "value": "\u4f60\u597d"}]}]
    path = tmp_path / "train.json"
    path.write_bytes(json.dumps(records, ensure_ascii=False).encode(encoding))
    assert read_training_json(path) == records
