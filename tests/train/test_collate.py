"""Collator: expanded ids from the processor, labels aligned (-100 on visual positions), max-length policy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from train_helpers import write_records

from llamavid.model.configuration_llamavid import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llamavid.train.collate import LlamaVidCollator, OverlongSampleError
from llamavid.train.datasets import LlavaJsonDataset

CONV = [
    {"from": "human", "value": "<image>\nWhat is it?"},
    {"from": "gpt", "value": "a long answer " * 3},
    {"from": "human", "value": "Sure?"},
    {"from": "gpt", "value": "yes"},
]


@pytest.fixture
def dataset(tmp_path, llm_tokenizer):
    Image.fromarray(np.full((56, 56, 3), 90, np.uint8)).save(tmp_path / "a.png")
    records = [
        {"id": "img", "image": "a.png", "conversations": CONV},
        {"id": "txt", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    return LlavaJsonDataset([write_records(tmp_path / "d.json", records)], llm_tokenizer, "imgsp_v1")


def test_batch_is_right_padded_and_labels_line_up(dataset, tiny_processor):
    batch = LlamaVidCollator(tiny_processor, 1024)([dataset[0], dataset[1]])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    visual = ids == IMAGE_TOKEN_INDEX
    # Two <image> blocks (per-turn rule) of one still image each: 1 context + 16 content tokens.
    assert int(visual[0].sum()) == 2 * tiny_processor.image_tokens_per_frame and not visual[1].any()
    assert (labels[visual] == IGNORE_INDEX).all()
    assert (labels[mask == 0] == IGNORE_INDEX).all() and mask[1, -1] == 0  # right padding
    supervised = labels != IGNORE_INDEX
    assert (labels[supervised] == ids[supervised]).all()
    assert batch["qformer_input_ids"].shape[0] == 2 and batch["sample_ids"][1].endswith("(id='txt')")


def test_overlong_policies(dataset, tiny_processor, caplog):
    sample = dataset[0]
    length = len(LlamaVidCollator(tiny_processor, 10_000).expand(sample)[0])
    assert LlamaVidCollator(tiny_processor, length - 1, "skip")([sample]) is None
    assert "exceed model_max_length" in caplog.text and "(id='img')" in caplog.text
    with pytest.raises(OverlongSampleError, match=r"d.json\[0\] \(id='img'\)"):
        LlamaVidCollator(tiny_processor, length - 1, "error")([sample])
    truncated = LlamaVidCollator(tiny_processor, length - 3, "truncate")([sample])
    assert truncated["input_ids"].shape[1] == length - 3
    assert (
        int((truncated["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 2 * tiny_processor.image_tokens_per_frame
    )
    # Cutting into the visual tokens is never allowed: skipped instead.
    assert LlamaVidCollator(tiny_processor, 20, "truncate")([sample]) is None
