"""Collator: expanded ids from the processor, labels aligned (-100 on visual positions), max-length policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import write_records

from llamavid.model.configuration_llamavid import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llamavid.train.collate import LlamaVidCollator, OverlongSampleError, without_trailing_padding_mask
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


def _loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    output = model(**inputs)
    output.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return output.loss.detach(), grads


def test_a_right_padded_batch_trains_the_same_without_its_mask(dataset, tiny_processor):
    from tiny_helpers import build_tiny_model, tiny_config_kwargs

    batch = LlamaVidCollator(tiny_processor, 1024)([dataset[0], dataset[1], dataset[1]])
    inputs = {k: v for k, v in batch.items() if k != "sample_ids"}
    assert inputs["attention_mask"][1:].eq(0).any()  # the text rows are padded
    unmasked = without_trailing_padding_mask(inputs)
    assert "attention_mask" not in unmasked and "attention_mask" in inputs
    qformer = dict(
        tiny_config_kwargs()["qformer_config"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model = build_tiny_model(qformer_config=qformer).train()  # no dropout: two forwards are comparable
    loss, grads = _loss_and_grads(model, inputs)
    loss_unmasked, grads_unmasked = _loss_and_grads(model, unmasked)
    torch.testing.assert_close(loss_unmasked, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_unmasked.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grads_unmasked[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # The check can fail: with a pad *inside* a row the mask matters, and it is kept.
    holed = dict(inputs, attention_mask=inputs["attention_mask"].clone())
    holed["attention_mask"][0, 3] = 0
    assert without_trailing_padding_mask(holed) is holed
    assert _loss_and_grads(model, holed)[0] != loss


def test_only_a_trailing_padding_mask_is_dropped():
    ids = torch.ones(2, 4, dtype=torch.long)
    labels = torch.tensor([[IGNORE_INDEX, 5, 5, IGNORE_INDEX], [IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX]])
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert "attention_mask" not in without_trailing_padding_mask(
        {"input_ids": ids, "attention_mask": right, "labels": labels}
    )
    for mask, rows in (
        (torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), labels),  # left padding
        (torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]), labels),  # a hole
        (right, torch.tensor([[IGNORE_INDEX, 5, 5, 5], [IGNORE_INDEX, 5, 5, 5]])),  # a pad with a label
    ):
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": rows}
        assert without_trailing_padding_mask(inputs) is inputs
    no_labels = {"input_ids": ids, "attention_mask": right}
    assert without_trailing_padding_mask(no_labels) is no_labels  # inference keeps its mask
