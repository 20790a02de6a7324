"""`llamavid.train.losses`: the image attention loss and the object it grounds on."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llamavid.synth import generate_items
from llamavid.synth.render import frame_labels
from llamavid.synth.world import COLOURS, SHAPES
from llamavid.train.losses import LossSettings, attention_loss, named_object_cell
from llamavid.train.stage0_vision import patch_cell_index

NAMED = ("image_colour", "image_shape", "image_position", "image_size")


@pytest.mark.parametrize("kind", ["image_qa", "image_place"])
def test_the_named_object_is_found_in_every_wording(kind):
    items = generate_items("heldout", 140, seed=4, kind=kind, phrasing="varied")
    found = 0
    for item in items:
        cell = named_object_cell(item)
        if item.question_type not in NAMED:
            assert cell is None
            continue
        assert cell is not None, item.question
        found += 1
        labels = frame_labels(item.media)
        row, col = divmod(cell, 4)
        shape, colour = SHAPES[labels.shape[row, col] - 1], COLOURS[labels.colour[row, col] - 1]
        words = item.question.lower()
        if item.question_type == "image_shape":
            assert shape == item.answer
        elif item.question_type == "image_colour":
            assert colour == item.answer
        elif item.meta.get("asks_by") != "place":  # size and position name colour and shape
            assert shape in words and colour in words
    assert found >= 70
    assert named_object_cell(generate_items("train", 1, kind="video_qa")[0]) is None


def _visual(attention: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(
        attention_weights=attention, block_frame_counts=torch.ones(len(attention), dtype=torch.long)
    )


def test_attention_loss_is_low_on_the_named_cell_and_log16_when_uniform():
    items = [
        i for i in generate_items("train", 40, seed=1, kind="image_qa") if named_object_cell(i) is not None
    ][:4]
    cells = patch_cell_index(64, 4)
    on_target = torch.stack(
        [(cells == named_object_cell(i)).float().expand(8, 64) / 4 for i in items]
    )  # (4 images, 8 queries, 64 patches), all mass on the cell's 4 patches
    assert float(attention_loss(_visual(on_target), items)) == pytest.approx(0.0, abs=1e-5)
    uniform = torch.full((4, 8, 64), 1 / 64, requires_grad=True)
    loss = attention_loss(_visual(uniform), items)
    assert float(loss.detach()) == pytest.approx(np.log(16), rel=1e-5)
    loss.backward()  # the gradient raises the named cell's weights
    grad = uniform.grad[0].mean(0)
    assert (grad[cells == named_object_cell(items[0])] < 0).all() and (
        grad[cells != named_object_cell(items[0])] == 0
    ).all()
    count = generate_items("train", 7, seed=1, kind="image_qa")[2]  # a count question names no object
    assert count.question_type == "image_count"
    assert attention_loss(_visual(uniform[:1].detach()), [count]) is None


def test_attend_is_a_loss_weight():
    assert LossSettings.from_config({"attend": 1.0}).uses_context
    assert not LossSettings(scene=1.0).uses_context
