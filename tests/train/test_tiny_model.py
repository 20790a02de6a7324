"""The committed tiny LLaMA-VID and its stage-0 preprocessing (docs/tiny-model.md)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from llamavid.model.image_processing_llamavid import LlamaVidImageProcessor
from llamavid.synth import pretraining_batch
from llamavid.train.stage0_vision import Stage0Heads, batch_targets, normalise, stage0_loss, to_grey

ASSET = Path(__file__).resolve().parents[2] / "src" / "llamavid" / "assets" / "tiny-llamavid"


def _features(tmp_path: Path, items, tower) -> dict:
    """Frozen features of the items through the FeatureCache, as a tiny phase caches them."""
    from llamavid.data.feature_cache import FeatureCache, module_sha256
    from llamavid.train.tiny_phase import cached_features

    return cached_features(FeatureCache(tmp_path / "features"), items, tower, 64, module_sha256(tower))


def _asset_to_train():
    """The committed model in fp32 with its stage-0 tower frozen (as every tiny phase has it), and its processor."""
    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor

    model = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET), dtype=torch.float32)
    model.model.vision_tower.requires_grad_(False)
    return model, LlamaVidProcessor.from_pretrained(ASSET)


def _step(model, losses, items, cache, processor, heads=None, prior=None):
    """One tiny-phase loss (``TinyLoss``, what the recipe calls each step) and its backward pass."""
    from llamavid.train.losses import AuxiliaryHeads
    from llamavid.train.tiny import make_batch
    from llamavid.train.tiny_phase import TinyLoss

    heads = heads or AuxiliaryHeads(model.config.text_config.hidden_size)
    loss_fn = TinyLoss.build(model, losses, heads, prior)
    batch = make_batch(items, cache, range(len(items)), processor)
    batch["tiny_items"] = list(items)
    try:
        loss, terms = loss_fn(model, batch)
        loss.backward()
    finally:
        loss_fn.close()
    return loss, terms


def test_stage0_normalisation_matches_the_processor() -> None:
    """The frozen tower must see at training time exactly the pixels the processor gives it at inference."""
    images, _ = pretraining_batch("train", 0, 0, 3, size=64)
    expected = LlamaVidImageProcessor(size=64, crop_size=64).preprocess(list(images))
    torch.testing.assert_close(normalise(images), expected, atol=1e-5, rtol=1e-5)


def test_stage0_targets_and_loss_shapes() -> None:
    images, labels = pretraining_batch("train", 0, 0, 4, size=64)
    targets = batch_targets(labels)
    assert targets["occupancy"].shape == (4, 16)
    features = torch.randn(4, 65, 32)
    loss = stage0_loss(Stage0Heads(32, 4)(features), targets)
    assert torch.isfinite(loss)


def test_stage0_patch_targets_follow_the_cells() -> None:
    """Every patch of an occupied cell is labelled with that cell (and its object); empty cells say "empty"."""
    _, labels = pretraining_batch("train", 0, 0, 4, size=64)
    targets = batch_targets(labels, num_patches=64)
    assert targets["patch_cell"].shape == (4, 64)
    shape = torch.from_numpy(labels["shape"]).flatten(1)  # (4, 16)
    for patch, cell in ((0, 0), (9, 0), (2, 1), (63, 15), (36, 10)):
        occupied = shape[:, cell] > 0
        expected = torch.where(occupied, torch.tensor(cell), torch.tensor(16))
        assert torch.equal(targets["patch_cell"][:, patch], expected)
        assert torch.equal(targets["patch_shape"][:, patch], shape[:, cell])
    loss = stage0_loss(Stage0Heads(32, 4, patch_targets=True)(torch.randn(4, 65, 32)), targets)
    assert torch.isfinite(loss)


def test_grey_frames_lose_their_colours_and_only_their_colour_targets() -> None:
    images, labels = pretraining_batch("train", 0, 0, 4, size=64)
    targets = batch_targets(labels, num_patches=64)
    before = {name: value.clone() for name, value in targets.items()}
    grey = to_grey(images, targets, 2)
    assert (grey[:2, ..., 0] == grey[:2, ..., 1]).all() and (grey[:2, ..., 1] == grey[:2, ..., 2]).all()
    assert not (images[:2, ..., 0] == images[:2, ..., 1]).all()  # the source frames were in colour
    np.testing.assert_array_equal(grey[2:], images[2:])
    for name, value in targets.items():
        if name in ("colour", "patch_colour", "background", "colours_present"):
            assert (value[:2] == -1).all() and torch.equal(value[2:], before[name][2:])
        else:
            assert torch.equal(value, before[name])
    # The left-out targets carry no gradient; the others do.
    heads = Stage0Heads(32, 4, patch_targets=True)
    features = torch.randn(4, 65, 32, requires_grad=True)
    logits = heads(features)
    for name in logits:
        logits[name].retain_grad()
    stage0_loss(logits, targets).backward()
    for name in ("colour", "patch_colour", "background", "colours_present"):
        assert logits[name].grad[:2].abs().sum() == 0 and logits[name].grad[2:].abs().sum() > 0
    assert logits["shape"].grad[:2].abs().sum() > 0
    # Without grey frames the loss is the plain mean it always was (the committed towers' loss).
    plain = batch_targets(labels, num_patches=64)
    expected = sum(
        F.binary_cross_entropy_with_logits(logits[name], plain[name])
        if name in ("occupancy", "shapes_present", "colours_present")
        else F.cross_entropy(logits[name].flatten(0, -2), plain[name].flatten(), ignore_index=-1)
        for name in logits
    )
    assert torch.equal(stage0_loss(logits, plain), expected)


def test_stage0_loss_weights_scale_one_head_and_leave_the_rest_bit_for_bit() -> None:
    images, labels = pretraining_batch("train", 0, 0, 4, size=64)
    targets = batch_targets(labels, num_patches=64)
    heads = Stage0Heads(32, 4, patch_targets=True)
    logits = heads(torch.randn(4, 65, 32))
    plain = stage0_loss(logits, targets)
    assert torch.equal(stage0_loss(logits, targets, {"occupancy": 1.0}), plain)
    occupancy = F.binary_cross_entropy_with_logits(logits["occupancy"], targets["occupancy"])
    torch.testing.assert_close(stage0_loss(logits, targets, {"occupancy": 5.0}), plain + 4 * occupancy)
    from llamavid.train.stage0_vision import Stage0Settings

    for name in ("occupancy_weight", "shapes_present_weight"):
        with pytest.raises(ValueError, match=name):
            Stage0Settings(**{name: -1.0})


def test_split_codes_feed_each_head_only_its_own_channels() -> None:
    heads = Stage0Heads(32, 4, patch_targets=True, colour_channels=8)
    colour_heads = ("colour", "patch_colour", "background", "colours_present")
    for name in ("shape", "colour"):
        features = torch.randn(4, 65, 32, requires_grad=True)
        logits = heads(features)
        read = [key for key in logits if (key in colour_heads) == (name == "colour")]
        sum(logits[key].square().mean() for key in read).backward()
        form, colour = features.grad[..., :24], features.grad[..., 24:]
        if name == "colour":  # the colour heads read only the last 8 channels
            assert form.abs().sum() == 0 and colour.abs().sum() > 0
        else:
            assert colour.abs().sum() == 0 and form.abs().sum() > 0
    with pytest.raises(ValueError, match="set colour_channels > 0"):
        from llamavid.train.stage0_vision import Stage0Settings

        Stage0Settings(adversary=1.0)


def test_code_separation_trains_the_adversaries_on_detached_codes_and_the_tower_to_confuse_them() -> None:
    from llamavid.train.stage0_vision import code_separation_loss

    images, labels = pretraining_batch("train", 0, 0, 4, size=64)
    targets = batch_targets(labels, num_patches=64)
    heads = Stage0Heads(32, 4, patch_targets=True, colour_channels=8, adversary=1.0)
    features = torch.randn(4, 65, 32, requires_grad=True)
    logits = heads(features)
    # The adversaries' own loss reaches their weights and never the features ...
    torch.autograd.backward(
        code_separation_loss(
            {
                **logits,
                "confuse_colour": logits["confuse_colour"].detach(),
                "confuse_shape": logits["confuse_shape"].detach(),
            },
            targets,
        )
    )
    assert features.grad is None
    assert heads.adv_colour.weight.grad.abs().sum() > 0 and heads.adv_shape.weight.grad.abs().sum() > 0
    # ... the confusion term reaches the features and never the adversaries' weights.
    heads.zero_grad()
    confusion = {
        **logits,
        "adv_colour": logits["adv_colour"].detach(),
        "adv_shape": logits["adv_shape"].detach(),
    }
    code_separation_loss(confusion, targets).backward()
    assert heads.adv_colour.weight.grad is None or heads.adv_colour.weight.grad.abs().sum() == 0
    assert features.grad[..., :24].abs().sum() > 0 and features.grad[..., 24:].abs().sum() > 0
    # An adversary left guessing (uniform logits) costs the tower nothing; a confident one costs more.
    uniform = {
        "shape": logits["shape"],
        "adv_colour": torch.zeros(4, 4, 4, 8),
        "adv_shape": torch.zeros(4, 4, 4, 6),
        "confuse_colour": torch.zeros(4, 4, 4, 8),
        "confuse_shape": torch.zeros(4, 4, 4, 6),
    }
    confident = {**uniform, "confuse_colour": torch.zeros(4, 4, 4, 8).index_fill_(-1, torch.tensor([0]), 9.0)}
    floor = code_separation_loss(uniform, targets) - math.log(8) - math.log(6)
    assert abs(float(floor)) < 1e-5
    assert code_separation_loss(confident, targets) > code_separation_loss(uniform, targets) + 1.0


def test_grey_twins_repeat_the_last_frames_in_grey_and_tie_their_form_codes() -> None:
    from llamavid.train.stage0_vision import grey_pair_loss, with_grey_twins

    images, labels = pretraining_batch("train", 0, 0, 4, size=64)
    targets = batch_targets(labels, num_patches=64)
    merged_images, merged = with_grey_twins(images, targets, 2)
    assert merged_images.shape[0] == 6 and all(value.shape[0] == 6 for value in merged.values())
    np.testing.assert_array_equal(merged_images[:4], images)  # the batch itself is unchanged
    twins = merged_images[4:]
    assert (twins[..., 0] == twins[..., 1]).all() and (twins[..., 1] == twins[..., 2]).all()
    assert torch.equal(merged["shape"][4:], targets["shape"][2:])  # same objects, so same shapes and sizes
    assert (merged["colour"][4:] == -1).all() and torch.equal(merged["colour"][:4], targets["colour"])
    form = torch.randn(6, 64, 24)
    assert float(grey_pair_loss(torch.cat([form[:4], form[2:4]]), 2)) < 1e-6  # twins coded alike: no loss
    assert float(grey_pair_loss(torch.cat([form[:4], -form[2:4]]), 2)) == pytest.approx(2.0)


def test_a_stage0_saved_before_grey_share_is_still_recognised_as_done(tmp_path: Path) -> None:
    import json

    from llamavid.train.stage0_vision import Stage0Settings, train_stage0

    small = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "eval_frames": 8}
    first = train_stage0(Stage0Settings(steps=2, batch_size=4, grey_share=0.5, **small), tmp_path / "grey")
    assert first["settings"]["grey_share"] == 0.5
    done = train_stage0(Stage0Settings(steps=2, batch_size=4, **small), tmp_path / "plain")
    metrics = tmp_path / "plain" / "stage0_metrics.json"
    older = json.loads(metrics.read_text())
    del older["settings"]["grey_share"]  # what a tower trained before the setting existed saved
    metrics.write_text(json.dumps(older))
    assert train_stage0(Stage0Settings(steps=2, batch_size=4, **small), tmp_path / "plain") == older
    again = train_stage0(Stage0Settings(steps=2, batch_size=4, grey_share=0.25, **small), tmp_path / "plain")
    assert again["settings"]["grey_share"] == 0.25 and again != done  # other settings: trained again
    with pytest.raises(ValueError, match="grey_share must be within 0..1"):
        Stage0Settings(grey_share=1.5)


def test_a_stage0_tower_is_reused_whatever_thread_count_trained_it(tmp_path: Path) -> None:
    from llamavid.train.stage0_vision import Stage0Settings, train_stage0

    small = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "eval_frames": 8}
    first = train_stage0(Stage0Settings(steps=2, batch_size=4, threads=1, **small), tmp_path)
    weights = (tmp_path / "vision_tower.safetensors").read_bytes()
    assert train_stage0(Stage0Settings(steps=2, batch_size=4, threads=2, **small), tmp_path) == first
    assert (tmp_path / "vision_tower.safetensors").read_bytes() == weights
    again = train_stage0(Stage0Settings(steps=3, batch_size=4, threads=2, **small), tmp_path)
    assert again["settings"]["steps"] == 3  # another recipe: trained again


def test_needle_targets_mark_only_the_needle_frame() -> None:
    from llamavid.synth import generate_items
    from llamavid.synth.episodes import NEEDLE_COLOURS
    from llamavid.train.losses import needle_targets

    items = generate_items("train", 12, seed=0, kind="long_qa", episode_frames=60)
    needles = [i for i in items if i.question_type == "long_visual_needle"]
    assert len(needles) == 2
    for item in needles:
        target = needle_targets(item)
        assert target is not None and target.shape == (60,)
        assert target.nonzero().flatten().tolist() == [item.media.needle_start]
        assert NEEDLE_COLOURS[int(target.max()) - 1] == item.answer
    assert all(needle_targets(i) is None for i in items if i.question_type != "long_visual_needle")


def test_grounding_targets_track_the_moving_object() -> None:
    from llamavid.synth import generate_items
    from llamavid.train.losses import grounding_targets

    items = [
        i
        for i in generate_items("train", 60, seed=3, kind="video_qa")
        if i.question_type == "video_direction"
    ]
    assert items
    for item in items:
        cells = grounding_targets(item)
        assert cells is not None and len(cells) == item.media.num_frames
        rows, cols = [c // 4 for c in cells], [c % 4 for c in cells]
        if item.answer in ("left", "right"):
            assert len(set(rows)) == 1 and (cols[-1] > cols[0]) == (item.answer == "right")
        else:
            assert len(set(cols)) == 1 and (rows[-1] > rows[0]) == (item.answer == "down")


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_auxiliary_heads_give_gradients_to_the_context_path(tmp_path: Path) -> None:
    """The auxiliary losses must reach the text queries (the point of them) and leave the saved model alone."""
    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.synth import generate_items
    from llamavid.train.losses import AuxiliaryHeads
    from llamavid.train.tiny import make_batch

    model = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET), dtype=torch.float32)
    processor = LlamaVidProcessor.from_pretrained(ASSET)
    items = generate_items("train", 6, seed=0, kind="image_qa") + generate_items(
        "train", 6, seed=0, kind="video_qa"
    )
    # One long video (60 frames, one block per frame) asked its visual-needle question, plus a text-only item.
    long_items = generate_items("train", 6, seed=0, kind="long_qa", episode_frames=60)
    items += [next(i for i in long_items if i.question_type == "long_visual_needle")]
    items += generate_items("train", 1, seed=0, kind="text_qa")
    cache = _features(tmp_path, items, model.model.vision_tower)
    batch = make_batch(items, cache, range(len(items)), processor)
    output = model(**batch)
    aux = AuxiliaryHeads(model.config.text_config.hidden_size)
    loss = aux.loss(output.visual, items, 1.0, 1.0)
    assert loss > 0
    needle_only = aux.loss(output.visual, items, 0.0, 1.0) - aux.loss(
        output.visual, items[:12] + items[13:], 0.0, 1.0
    )
    assert needle_only > 0  # the long video's frames were matched to it and scored
    loss.backward()
    assert model.model.vlm_att_query.grad is not None and model.model.vlm_att_query.grad.abs().sum() > 0
    assert set(aux.state_dict()).isdisjoint(model.state_dict())


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_the_shape_adversary_trains_its_probe_and_the_needle_token_to_confuse_it(tmp_path: Path) -> None:
    """`shape_adversary`: only the needle frames of visual-needle questions are read; the probe learns the shape from
    the tokens as they are, the tokens learn to leave the probe's prediction uniform (a bounded loss, 0 there)."""
    import math

    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.errors import InvalidInputError
    from llamavid.synth import generate_items
    from llamavid.synth.world import SHAPES
    from llamavid.train.losses import AuxiliaryHeads, LossSettings
    from llamavid.train.tiny import make_batch

    assert LossSettings.from_config({"shape_adversary": 0.5}).shape_adversary == 0.5
    assert LossSettings(shape_adversary=1.0).uses_heads and LossSettings(shape_adversary=1.0).uses_context
    with pytest.raises(InvalidInputError, match="shape_adversary: expected a weight"):
        LossSettings.from_config({"shape_adversary": -1})
    model = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET), dtype=torch.float32)
    processor = LlamaVidProcessor.from_pretrained(ASSET)
    long_items = generate_items("train", 12, seed=0, kind="long_qa", episode_frames=60)
    needles = [i for i in long_items if i.question_type == "long_visual_needle"]
    items = needles + [next(i for i in long_items if i.question_type == "long_plot")]
    cache = _features(tmp_path, items, model.model.vision_tower)
    batch = make_batch(items, cache, range(len(items)), processor)
    visual = model(**batch).visual
    tokens = visual.context_tokens.detach().requires_grad_(True)
    visual.context_tokens = tokens
    heads = AuxiliaryHeads(model.config.text_config.hidden_size)
    assert heads.loss(visual, items, 0.0, 0.0, adversary_weight=0.0) == 0
    loss = heads.loss(visual, items, 0.0, 0.0, adversary_weight=1.0)
    loss.backward()
    needle_rows = [60 * k + item.media.needle_start for k, item in enumerate(needles)]
    touched = tokens.grad.abs().sum(-1).nonzero().squeeze(1).tolist()
    assert touched == needle_rows  # only the needle frames of the needle questions (not the plot question's)
    target = torch.tensor([SHAPES.index(item.media.needle_shape) for item in needles])
    rows = tokens.detach()[needle_rows].requires_grad_(True)
    head_ce = F.cross_entropy(heads.needle_shape(rows.detach()), target)
    assert float(loss) >= float(head_ce) - 1e-6  # the confusion term is >= 0
    # The tokens' gradient is the confusion term's (probe weights held), pointing towards a uniform prediction.
    weight, bias = heads.needle_shape.weight.detach(), heads.needle_shape.bias.detach()
    confusion = -F.linear(rows, weight, bias).log_softmax(-1).mean() - math.log(len(SHAPES))
    confusion.backward()
    torch.testing.assert_close(tokens.grad[needle_rows], rows.grad)
    assert heads.needle_shape.weight.grad is not None and heads.needle_shape.weight.grad.abs().sum() > 0
    with torch.no_grad():
        heads.needle_shape.weight.zero_()
        heads.needle_shape.bias.zero_()  # a probe that reads nothing: the tokens' term is 0
    uniform = heads.shape_confusion(tokens[needle_rows], target)
    torch.testing.assert_close(
        uniform, torch.tensor(math.log(len(SHAPES)))
    )  # the probe's own cross-entropy only


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_committed_tiny_model_is_small() -> None:
    size = sum(path.stat().st_size for path in ASSET.rglob("*") if path.is_file())
    assert size <= 30 * 1024 * 1024


@pytest.fixture(scope="module")
def committed_scores() -> dict:
    """The shipped model end to end from rendered pixels (``eval-synth``), CI seed 0, 200 items per set: images and
    8-16-frame clips asked in the trained wording (``varied``) and in the held-out templates (the same items, so
    the two are paired), clips of 5-60 frames, and 1,200-frame episodes whose needles are balanced."""
    from llamavid.cli.eval_synth import evaluate

    if not (ASSET / "config.json").is_file():
        pytest.skip("tiny model asset not built")
    torch.set_num_threads(2)
    scores: dict[str, dict] = {}
    paired = evaluate(
        ASSET, ["image_qa", "video_qa"], items_per_set=200, phrasing=("varied", "heldout_templates")
    )
    for phrasing, sets in paired["by_phrasing"].items():
        scores.update({f"{name}/{phrasing}": sets[name] for name in sets})
    clips = evaluate(ASSET, ["video_qa"], items_per_set=200, phrasing="varied", clip_frames=(5, 60))
    scores["video_qa/5-60"] = clips["sets"]["video_qa"]
    long = evaluate(ASSET, ["long_qa"], items_per_set=200, phrasing="varied", balanced_needles=True)
    scores["long_qa"] = long["sets"]["long_qa"]
    return scores


# The targets minus 5 points (docs/tiny-model.md, "v5.18 on the sealed seed"). v5.18 on these CI items:
# images 0.916 (shape 0.90, size 0.86, lowest colour 0.83; v5.13 0.920), held-out wording 0.901; short videos 0.885
# (v5.13 0.850), held-out 0.895, 5-60 frames 0.856; 1,200-frame needles (34 of each, one answer is 0.03) subtitle
# 0.91, visual 0.85.
@pytest.mark.timeout(1200)  # the shared scoring fixture takes ~3 min on 2 free cores (170 s idle)
def test_committed_tiny_model_images(committed_scores: dict) -> None:
    images = committed_scores["image_qa/varied"]
    assert images["mean"] >= 0.80, images["per_type"]
    for name, row in images["per_type"].items():
        assert row["accuracy"] >= 0.70, (name, row)


@pytest.mark.timeout(1200)
def test_committed_tiny_model_short_videos(committed_scores: dict) -> None:
    videos = committed_scores["video_qa/varied"]
    assert videos["mean"] >= 0.75, videos["per_type"]
    for name, row in videos["per_type"].items():  # and no type at its blind baseline
        assert row["accuracy"] >= 2 * row["blind"] - 0.05, (name, row)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("kind", ["image_qa", "video_qa"])
def test_committed_tiny_model_understands_held_out_phrasings(committed_scores: dict, kind: str) -> None:
    """Templates no training config uses score within 0.05 (+ 5 points) of the trained wording on the same items
    (v4, trained on one wording: images 0.39 against 0.86 on the dev seed)."""
    trained, heldout = committed_scores[f"{kind}/varied"], committed_scores[f"{kind}/heldout_templates"]
    assert heldout["mean"] >= trained["mean"] - 0.10, (trained["per_type"], heldout["per_type"])


@pytest.mark.timeout(1200)
def test_committed_tiny_model_any_clip_length(committed_scores: dict) -> None:
    """Clips of 5-60 frames score within 0.03 (+ 5 points) of the 8-16-frame clips."""
    short, any_length = committed_scores["video_qa/varied"], committed_scores["video_qa/5-60"]
    assert any_length["mean"] >= short["mean"] - 0.08, any_length["per_length"]
    assert set(any_length["per_length"]) == {"5-7", "8-16", "17-39", "40-60"}


@pytest.mark.timeout(1200)
def test_committed_tiny_model_long_video_needles(committed_scores: dict) -> None:
    per_type = committed_scores["long_qa"]["per_type"]
    assert per_type["long_subtitle_needle"]["accuracy"] >= 0.75, per_type
    assert per_type["long_visual_needle"]["accuracy"] >= 0.75, per_type


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_align_phase_trains_only_the_context_path(tmp_path: Path) -> None:
    """``lm: false``: the auxiliary losses reach the text decoder while the LLM is not run at all."""
    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.synth import generate_items
    from llamavid.train.losses import LossSettings

    model = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET), dtype=torch.float32)
    model.model.vision_tower.requires_grad_(False)
    processor = LlamaVidProcessor.from_pretrained(ASSET)
    items = generate_items("train", 8, seed=0, kind="image_qa")
    cache = _features(tmp_path, items, model.model.vision_tower)
    loss, terms = _step(model, LossSettings(lm=False, answer_head=1.0), items, cache, processor)
    assert loss > 0 and set(terms) == {"aux_context"}
    assert all(p.grad is None for p in model.model.language_model.parameters())
    assert model.model.vlm_att_query.grad is not None and model.model.vlm_att_query.grad.abs().sum() > 0


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_answer_prior_counts_questions_and_biases_only_their_answer_token(tmp_path: Path) -> None:
    """The product-of-experts loss: the model's own loss where no prior applies, and a known shift where one does."""
    import torch.nn.functional as F  # noqa: N812

    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.synth import QUESTION_TYPES, generate_items
    from llamavid.train.losses import AnswerPrior
    from llamavid.train.tiny import make_batch

    model = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET), dtype=torch.float32)
    processor = LlamaVidProcessor.from_pretrained(ASSET)
    items = generate_items("train", 400, seed=0, kind="image_qa")
    prior = AnswerPrior(items, processor.tokenizer, ["image_shape"])
    shape_items = [item for item in items if item.question_type == "image_shape"]
    assert 0 < len(prior) <= len({item.question for item in shape_items})
    token_ids, log_prior = prior.lookup(shape_items[0])
    assert torch.allclose(log_prior.exp().sum(), torch.tensor(1.0))
    assert len(token_ids) == len(QUESTION_TYPES["image_shape"])
    same = [item for item in shape_items if item.question == shape_items[0].question]
    options = list(QUESTION_TYPES["image_shape"])
    most = max(options, key=lambda option: sum(item.answer == option for item in same))
    assert int(log_prior.argmax()) == options.index(most)  # the most frequent answer to that exact question
    assert prior.lookup(next(item for item in items if item.question_type != "image_shape")) is None

    chosen = [shape_items[0], next(item for item in items if item.question_type == "image_colour")]
    cache = _features(tmp_path, chosen, model.model.vision_tower)
    batch = make_batch(chosen, cache, range(2), processor)
    with torch.no_grad():
        output = model(**batch)
        no_prior = AnswerPrior(items, processor.tokenizer, [])
        assert torch.allclose(no_prior.loss(output.logits, batch["labels"], chosen), output.loss, atol=1e-5)
        with_prior = prior.loss(output.logits, batch["labels"], chosen)
    # Recompute by hand: the shape answer's first token scored with the log-prior added to its options' logits.
    logits, targets = output.logits[:, :-1], batch["labels"][:, 1:]
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    position = int((targets[0] != -100).nonzero()[0])
    shifted = logits[0, position].clone()
    shifted[token_ids] += log_prior
    per_token[0, position] = F.cross_entropy(shifted[None], targets[0, position][None])
    assert torch.allclose(with_prior, per_token.sum() / (targets != -100).sum(), atol=1e-5)
    assert not torch.allclose(with_prior, output.loss)
    with pytest.raises(ValueError, match="unknown question type 'shape'"):
        AnswerPrior(items, processor.tokenizer, ["shape"])


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_feature_cache_never_serves_features_of_other_items(tmp_path: Path) -> None:
    from llamavid import LlamaVidForConditionalGeneration
    from llamavid.synth import generate_items

    tower = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET)).model.vision_tower
    items = generate_items("train", 4, seed=0, kind="image_qa")
    first = _features(tmp_path, items, tower)
    assert torch.equal(_features(tmp_path, items, tower)["features"], first["features"])  # read back
    more = _features(tmp_path, generate_items("train", 6, seed=0, kind="image_qa"), tower)
    assert len(more["offsets"]) == 6 and len(more["features"]) == 6  # a new entry, not the 4-item one
    other = _features(tmp_path, generate_items("train", 4, seed=1, kind="image_qa"), tower)
    assert not torch.equal(other["features"], first["features"])
    assert len(list((tmp_path / "features").iterdir())) == 3


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_a_visual_needle_prior_is_keyed_by_the_needle_shape() -> None:
    """The visual needle's expert is log P(colour | needle shape) over the training items: the colour a shape never
    has in train (the held-out pair) is the least likely one for that shape, and a held-out episode with that pair
    looks up its shape's row whatever the question's wording."""
    from llamavid import LlamaVidProcessor
    from llamavid.synth import QUESTION_TYPES, generate_items
    from llamavid.synth.world import HELDOUT_PAIRS, SHAPES
    from llamavid.train.losses import AnswerPrior, prior_key

    processor = LlamaVidProcessor.from_pretrained(ASSET)
    train = generate_items(
        "train", 6 * 600, seed=0, kind="long_qa", episode_frames=60, balanced_needles=True, phrasing="varied"
    )
    prior = AnswerPrior(train, processor.tokenizer, ["long_visual_needle"])
    colours = list(QUESTION_TYPES["long_visual_needle"])
    assert set(prior.log_prior) == {("long_visual_needle", f"needle {s}") for s in SHAPES}
    for shape, colour in HELDOUT_PAIRS:
        if colour in colours:
            row = prior.log_prior[("long_visual_needle", f"needle {shape}")]
            assert int(row.argmin()) == colours.index(colour)
    held = [
        item
        for item in generate_items(
            "heldout",
            6 * 40,
            seed=2,
            kind="long_qa",
            episode_frames=60,
            balanced_needles=True,
            phrasing="varied",
        )
        if item.question_type == "long_visual_needle"
        and (item.media.needle_shape, item.media.needle_colour) in HELDOUT_PAIRS
    ]
    assert len({item.question for item in held}) > 1
    for item in held:
        token_ids, log_prior = prior.lookup(item)
        assert prior_key(item) == ("long_visual_needle", f"needle {item.media.needle_shape}")
        assert torch.equal(log_prior, prior.log_prior[prior_key(item)])
        assert int(log_prior.argmin()) == colours.index(item.media.needle_colour)
    other = next(item for item in train if item.question_type == "long_subtitle_needle")
    assert prior_key(other) == (other.question_type, other.question)
    clips = generate_items("train", 700, seed=0, kind="video_qa", phrasing="varied")
    changes = [item for item in clips if item.question_type == "video_colour_change"]
    assert {prior_key(item) for item in changes} == {("video_colour_change", f"shape {s}") for s in SHAPES}
    assert all(prior_key(item)[1].split()[1] in item.question.lower() for item in changes)


def test_a_phase_with_an_answer_prior_trains_the_llm(tmp_path: Path) -> None:
    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.synth import generate_items
    from llamavid.train.losses import AnswerPrior, LossSettings

    model = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET), dtype=torch.float32)
    model.model.vision_tower.requires_grad_(False)
    processor = LlamaVidProcessor.from_pretrained(ASSET)
    items = generate_items("train", 8, seed=0, kind="image_qa")
    cache = _features(tmp_path, items, model.model.vision_tower)
    types = ("image_shape", "image_colour")
    prior = AnswerPrior(items, processor.tokenizer, types)
    loss, terms = _step(model, LossSettings(answer_prior=types), items, cache, processor, prior=prior)
    assert loss > 0 and set(terms) == {"lm"}
    grad = model.model.language_model.layers[0].mlp.up_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_scene_targets_count_background_changes_so_far() -> None:
    from llamavid.synth import generate_items
    from llamavid.synth.world import BACKGROUNDS
    from llamavid.train.losses import MAX_SCENE_CHANGES, scene_targets

    items = generate_items("train", 80, seed=1, kind="video_qa")
    scene = [i for i in items if i.question_type == "video_scene_change"]
    assert scene and {i.answer for i in scene} - {"0"}
    for item in scene:
        backgrounds, so_far = scene_targets(item)
        assert [BACKGROUNDS[int(b)] for b in backgrounds] == [f.background for f in item.media.frames]
        assert so_far[0] == 0 and int(so_far[-1]) == min(int(item.answer), MAX_SCENE_CHANGES)
        assert bool((so_far.diff() >= 0).all())
    others = [i for i in items if i.question_type == "video_direction"]
    assert others and all(int(scene_targets(i)[1].max()) == 0 for i in others)
    assert scene_targets(generate_items("train", 1, seed=0, kind="image_qa")[0]) is None
    assert scene_targets(generate_items("train", 1, seed=0, kind="text_qa")[0]) is None


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_a_phase_with_scene_probes_trains_them_and_the_llm_below_them(tmp_path: Path) -> None:
    """The scene probes read clip frames' hidden states inside the LLM and send gradients into it."""
    from llamavid.synth import generate_items
    from llamavid.train.losses import AuxiliaryHeads, LossSettings
    from llamavid.train.tiny import make_batch

    model, processor = _asset_to_train()
    items = generate_items("train", 40, seed=1, kind="video_qa")
    items = [i for i in items if i.question_type == "video_scene_change"][:4] + items[:2]
    items += generate_items("train", 2, seed=0, kind="image_qa") + generate_items(
        "train", 1, seed=0, kind="text_qa"
    )
    cache = _features(tmp_path, items, model.model.vision_tower)
    aux = AuxiliaryHeads(model.config.text_config.hidden_size)
    layers = model.model.language_model.layers
    kept: list[torch.Tensor] = []
    hook = layers[1].register_forward_hook(lambda _m, _a, output: kept.append(output))
    batch = make_batch(items, cache, range(len(items)), processor)
    model(**batch)
    hook.remove()
    placeholder = batch["input_ids"] == model.config.image_token_index
    loss = aux.scene_loss(kept[0], kept[0], placeholder, items)
    assert loss > 0
    assert aux.scene_loss(kept[0], kept[0], placeholder[-3:], items[-3:]) == 0  # no clips: no loss
    with pytest.raises(ValueError, match="do not split into"):
        broken = placeholder.clone()
        broken[0, int(broken[0].nonzero()[0])] = False  # a clip row one visual token short
        aux.scene_loss(kept[0], kept[0], broken, items)

    loss, terms = _step(model, LossSettings(scene=1.0), items, cache, processor, heads=aux)
    assert set(terms) == {"lm", "aux_scene"} and terms["aux_scene"] > 0
    assert aux.changes.weight.grad is not None and aux.changes.weight.grad.abs().sum() > 0
    assert layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # the probes read the LLM's hidden states
    assert layers[-1].mlp.up_proj.weight.grad.abs().sum() > 0  # the LM loss still trains the top layer
    assert all(not layer._forward_hooks for layer in layers)  # the probes' hooks are removed afterwards


def test_count_targets_are_the_shapes_on_screen_and_their_running_union() -> None:
    from llamavid.synth import generate_items
    from llamavid.synth.world import SHAPES
    from llamavid.train.losses import count_targets

    items = generate_items("train", 60, seed=3, kind="video_qa", clip_frames=(5, 30))
    counted = [i for i in items if i.question_type == "video_count"]
    assert len({i.answer for i in counted}) > 2
    for item in counted:
        shown, so_far = count_targets(item)
        assert shown.shape == (len(item.media.frames), len(SHAPES)) and so_far.shape == (
            len(item.media.frames),
        )
        for t, frame in enumerate(item.media.frames):
            assert {SHAPES[int(k)] for k in shown[t].nonzero()} == {o.shape for o in frame.objects}
        assert bool((so_far.diff() >= 0).all())
        assert int(so_far[-1]) == int(item.answer)  # the running count ends at the question's answer
    assert count_targets(generate_items("train", 1, seed=0, kind="image_qa")[0]) is None
    assert count_targets(generate_items("train", 1, seed=0, kind="text_qa")[0]) is None


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_a_phase_with_count_probes_trains_the_context_path_and_the_llm(tmp_path: Path) -> None:
    """``count``: the ``shapes`` probe reads count clips' context tokens, ``seen`` the LLM's late hidden states."""
    from llamavid.synth import generate_items
    from llamavid.train.losses import AuxiliaryHeads, LossSettings

    model, processor = _asset_to_train()
    clips = generate_items("train", 40, seed=1, kind="video_qa", clip_frames=(5, 12))
    items = [i for i in clips if i.question_type == "video_count"][:3] + [
        i for i in clips if i.question_type == "video_direction"
    ][:2]
    items += generate_items("train", 2, seed=0, kind="image_qa")
    tower = model.model.vision_tower
    cache = _features(tmp_path, items, tower)
    aux = AuxiliaryHeads(model.config.text_config.hidden_size)
    loss, terms = _step(model, LossSettings(count=1.0), items, cache, processor, heads=aux)
    assert (
        set(terms) == {"lm", "aux_context", "aux_count"}
        and terms["aux_count"] > 0
        and terms["aux_context"] > 0
    )
    assert aux.shapes.weight.grad.abs().sum() > 0 and aux.seen.weight.grad.abs().sum() > 0
    assert aux.changes.weight.grad is None and aux.cell.weight.grad is None  # only the selected probes
    assert model.model.vlm_att_query.grad.abs().sum() > 0  # the text queries learn what a count clip shows
    layers = model.model.language_model.layers
    assert layers[0].mlp.up_proj.weight.grad.abs().sum() > 0 and not any(
        layer._forward_hooks for layer in layers
    )
    model.zero_grad()
    rest = items[3:]  # no count clip
    _, terms = _step(
        model, LossSettings(count=1.0), rest, _features(tmp_path / "rest", rest, tower), processor, aux
    )
    assert terms["aux_context"] == 0 and terms["aux_count"] > 0  # `seen` still reads the direction clips


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_answer_prior_on_the_answer_head_shifts_only_prior_questions(tmp_path: Path) -> None:
    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.synth import generate_items
    from llamavid.train.losses import AnswerPrior, AuxiliaryHeads
    from llamavid.train.tiny import make_batch

    model = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET), dtype=torch.float32)
    processor = LlamaVidProcessor.from_pretrained(ASSET)
    pool = generate_items("train", 400, seed=0, kind="image_qa")
    shape = next(i for i in pool if i.question_type == "image_shape")
    count = next(i for i in pool if i.question_type == "image_count")
    cache = _features(tmp_path, [shape, count], model.model.vision_tower)
    with torch.no_grad():
        visual = model(**make_batch([shape, count], cache, range(2), processor)).visual
    aux = AuxiliaryHeads(model.config.text_config.hidden_size)
    prior = AnswerPrior(pool, processor.tokenizer, ["image_shape"])
    plain = aux.loss(visual, [shape, count], 1.0, 0.0)
    assert aux.loss(visual, [count, count], 1.0, 0.0, prior) == aux.loss(visual, [count, count], 1.0, 0.0)
    assert not torch.isclose(aux.loss(visual, [shape, count], 1.0, 0.0, prior), plain)


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
def test_batches_from_cached_features_match_the_processor_from_pixels() -> None:
    """make_batch (training from cached features) builds what LlamaVidProcessor builds from pixels: the same ids
    for images with earlier turns, clips and text, and the same next-token logits up to the fp16 cache."""
    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.synth import FrameSpec, generate_items
    from llamavid.train.tiny import encode_frames, item_frames, make_batch, prompt_for

    model = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET), dtype=torch.float32).eval()
    processor = LlamaVidProcessor.from_pretrained(ASSET)
    items = generate_items("train", 2, seed=0, kind="image_qa", turns=(3, 3), phrasing="varied")
    items += generate_items("train", 1, seed=0, kind="video_qa") + generate_items(
        "train", 1, seed=0, kind="text_qa"
    )
    assert all(len(item.earlier_turns) == 2 for item in items[:2])
    for item in items:
        frames = item_frames(item, 64)
        count = 0 if frames is None else len(frames)
        features = (
            encode_frames(model.model.vision_tower, frames) if frames is not None else torch.zeros(0, 1, 1)
        )
        cache = {"features": features, "offsets": torch.tensor([0]), "counts": torch.tensor([count])}
        batch = make_batch([item], cache, [0], processor, train=False)
        media = {} if frames is None else {"images": [frames[0]]} if isinstance(item.media, FrameSpec) else {}
        if frames is not None and not media:
            media = {"videos": [frames]}
        reference = processor(prompt_for(item, processor), **media)
        assert torch.equal(reference["input_ids"], batch["input_ids"]), item.question_type
        if item.earlier_turns:
            assert prompt_for(item, processor).count("ASSISTANT:") == 3
        with torch.no_grad():
            ours, theirs = model(**batch).logits[0, -1], model(**reference).logits[0, -1]
        torch.testing.assert_close(ours, theirs, atol=5e-3, rtol=0)


def test_length_groups_are_the_cheapest_cut_of_the_sorted_rows() -> None:
    import itertools
    import random

    from llamavid.train.tiny_phase import length_groups

    rng = random.Random(0)
    for _ in range(40):
        lengths = [rng.randint(5, 200) for _ in range(rng.randint(1, 7))]
        overhead = rng.choice([0, 16, 128, 10**6])
        groups = length_groups(lengths, overhead)
        assert sorted(row for rows in groups for row in rows) == list(range(len(lengths)))

        def cost(groups, lengths=lengths, overhead=overhead):
            return sum(len(rows) * max(lengths[r] for r in rows) + overhead for rows in groups)

        order = sorted(range(len(lengths)), key=lambda r: (lengths[r], r))
        best = min(
            cost([order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))])
            for k in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), k)
        )
        assert cost(groups) == best
    assert length_groups([40, 41, 42], overhead=10**6) == [[0, 1, 2]]  # cutting does not pay: one call


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="tiny model asset not built")
@pytest.mark.parametrize("with_prior", [False, True], ids=["lm", "answer-prior"])
def test_the_llm_run_per_length_group_trains_like_one_padded_call(
    tmp_path: Path, monkeypatch, with_prior
) -> None:
    """Rows of very different lengths (clips of 5-60 frames, images, text): the grouped LLM gives every loss term
    and every gradient (LLM, visual side, auxiliary heads) of one padded call."""
    import llamavid.train.tiny_phase as tiny_phase
    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.synth import generate_items
    from llamavid.train.losses import AnswerPrior, AuxiliaryHeads, LossSettings

    model = LlamaVidForConditionalGeneration.from_pretrained(str(ASSET), dtype=torch.float32)
    model.model.vision_tower.requires_grad_(False)
    processor = LlamaVidProcessor.from_pretrained(ASSET)
    clips = generate_items("train", 40, seed=1, kind="video_qa", clip_frames=(5, 60), turns=(1, 3))
    items = [i for i in clips if i.question_type == "video_scene_change"][:3] + clips[:5]
    items += generate_items("train", 4, seed=0, kind="image_qa") + generate_items(
        "train", 2, seed=0, kind="text_qa"
    )
    cache = _features(tmp_path, items, model.model.vision_tower)
    types = ("image_shape", "image_colour")
    prior = AnswerPrior(items, processor.tokenizer, types) if with_prior else None
    losses = LossSettings(answer_head=0.5, grounding=0.5, scene=1.0, answer_prior=types if with_prior else ())
    heads = AuxiliaryHeads(model.config.text_config.hidden_size)
    calls: list[int] = []
    hook = model.model.language_model.register_forward_hook(lambda _m, args, kwargs_out: calls.append(1))

    def run():
        calls.clear()
        model.zero_grad(set_to_none=True)
        heads.zero_grad(set_to_none=True)
        loss, terms = _step(model, losses, items, cache, processor, heads=heads, prior=prior)
        grads = {
            n: p.grad.clone()
            for n, p in [*model.named_parameters(), *heads.named_parameters()]
            if p.grad is not None
        }
        return float(loss.detach()), terms, grads, len(calls)

    grouped = run()
    monkeypatch.setattr(tiny_phase, "length_groups", lambda lengths: [list(range(len(lengths)))])
    single = run()
    hook.remove()
    assert grouped[3] > 1 and single[3] == 1  # the LLM ran once per group, then once
    assert grouped[0] == pytest.approx(single[0], rel=1e-5)
    assert set(grouped[1]) == set(single[1]) >= {"lm", "aux_context", "aux_scene"}
    for name, value in single[1].items():
        assert grouped[1][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert grouped[2].keys() == single[2].keys()
    for name, grad in single[2].items():
        torch.testing.assert_close(grouped[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)
