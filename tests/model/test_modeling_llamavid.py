"""LlamaVidForConditionalGeneration on the tiny seeded config: token counts, the paper's formulas, batching, caching."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from llamavid import LlamaVidConfig, LlamaVidForConditionalGeneration
from llamavid.model import IMAGE_TOKEN_INDEX
from llamavid.model.modeling_llamavid import (
    LlamaVidContentPooling,
    index_frame_pairs,
    interleave_visual_tokens,
)
from tiny_helpers import build_tiny_model, moving_square_video, tiny_config_kwargs

VISUAL_KEYS = (
    "pixel_values",
    "vision_features",
    "frame_counts",
    "media_is_image",
    "qformer_input_ids",
    "qformer_attention_mask",
    "block_media",
    "block_question",
)


def visual_inputs(batch) -> dict:
    return {key: batch[key] for key in VISUAL_KEYS if key in batch}


def question_prompt(processor, question: str) -> str:
    return processor.apply_chat_template([{"role": "user", "content": f"<image>\n{question}"}])


# Token counts ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("compress", "per_frame"),
    # 4x4 patches; grid:g pools with kernel = stride = 4 // g, giving (4 // (4 // g))^2 tokens:
    # grid:3 -> kernel 1 -> 16 tokens.
    [
        (None, 1 + 16),
        ("none", 1 + 16),
        ("mean", 1 + 1),
        ("grid:2", 1 + 4),
        ("grid:3", 1 + 16),
        ("grid:4", 1 + 16),
    ],
)
def test_tokens_per_frame_for_each_compression(compress, per_frame):
    model = build_tiny_model(compress_type=compress, image_compress_type="same")
    assert model.config.tokens_per_frame() == per_frame
    frames, questions = 3, 2
    features = torch.randn(frames, 17, 32)
    out = model.model.get_visual_tokens(
        features,
        frame_counts=torch.tensor([frames]),
        qformer_input_ids=torch.randint(1000, 2000, (questions, 5)),
        qformer_attention_mask=torch.ones(questions, 5, dtype=torch.long),
        block_media=torch.tensor([0, 0]),
        block_question=torch.tensor([0, 1]),
    )
    assert out.tokens.shape == (questions * frames * per_frame, 32)
    assert out.context_tokens.shape == (questions * frames, 32)


@pytest.mark.parametrize(
    ("context", "compress", "image_compress", "video_tokens", "image_tokens"),
    [(False, "mean", "grid:2", 1, 4), (True, "off", "off", 1, 1), (True, "off", "grid:2", 1, 5)],
)
def test_ablation_settings_drop_context_or_content(
    context, compress, image_compress, video_tokens, image_tokens
):
    """The paper's ablation: content-only (no context token) and context-only (no content token) models."""
    model = build_tiny_model(
        context_token=context, compress_type=compress, image_compress_type=image_compress
    )
    assert model.config.tokens_per_frame() == video_tokens
    assert model.config.tokens_per_frame(is_image=True) == image_tokens
    features = torch.randn(3, 17, 32)
    inputs = {
        "frame_counts": torch.tensor([2, 1]),
        "media_is_image": torch.tensor([False, True]),
        "qformer_input_ids": torch.randint(1000, 2000, (2, 5)),
        "qformer_attention_mask": torch.ones(2, 5, dtype=torch.long),
        "block_media": torch.tensor([0, 1]),
        "block_question": torch.tensor([0, 1]),
    }
    out = model.model.get_visual_tokens(features, **inputs)
    assert out.tokens.shape == (2 * video_tokens + image_tokens, 32)
    if not context:  # the content tokens alone, in frame order: the video's means, then the image's grid
        pooled = torch.cat(
            [
                model.model.pool_patches(features[:2, 1:], "mean").flatten(0, 1),
                model.model.pool_patches(features[2:, 1:], "grid:2").flatten(0, 1),
            ]
        )
        torch.testing.assert_close(out.tokens, model.model.mm_projector(pooled))
    else:  # context tokens first in each frame's segment
        torch.testing.assert_close(out.tokens[0], out.context_tokens[0])
    width = 2 + max(2 * video_tokens, image_tokens)
    rows = [[5] + [IMAGE_TOKEN_INDEX] * count for count in (2 * video_tokens, image_tokens)]
    ids = torch.tensor([row + [6] * (width - len(row)) for row in rows])
    loss = model(input_ids=ids, labels=ids, vision_features=features, **inputs).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_content_only_model_needs_some_visual_token():
    with pytest.raises(ValueError, match="no visual token"):
        LlamaVidConfig(**tiny_config_kwargs(context_token=False, compress_type="off"))


def test_images_and_videos_use_their_own_compression(tiny_processor, tiny_model, rng):
    # tiny config: images keep all 16 patches (1 + 16), video frames are pooled to 1 (1 + 1)
    video = moving_square_video(frames=5)
    image = rng.integers(0, 255, (40, 70, 3), dtype="uint8")
    prompts = [
        question_prompt(tiny_processor, "what moves?"),
        question_prompt(tiny_processor, "what colour?"),
    ]
    batch = tiny_processor(prompts, media=[video, image], questions=["what moves?", "what colour?"])
    placeholders = (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum(dim=1).tolist()
    assert placeholders == [5 * 2, 1 * 17]
    out = tiny_model(**batch)
    assert out.visual.tokens.shape[0] == 5 * 2 + 17


def test_grid_pooling_is_row_major(tiny_model):
    # Patch (r, c) of the 4x4 grid carries the value 10*r + c; grid:2 must average 2x2 blocks row by row.
    patches = torch.zeros(1, 16, 32)
    for row in range(4):
        for col in range(4):
            patches[0, row * 4 + col] = 10 * row + col
    pooled = tiny_model.model.pool_patches(patches, "grid:2")[0, :, 0]
    expected = torch.tensor(
        [(0 + 1 + 10 + 11) / 4, (2 + 3 + 12 + 13) / 4, (20 + 21 + 30 + 31) / 4, (22 + 23 + 32 + 33) / 4]
    )
    torch.testing.assert_close(pooled, expected)


# The paper's context token, written out ----------------------------------------------------------------------------
def test_tokens_follow_the_reference_context_token(tiny_model, qformer_tokenizer):
    torch.manual_seed(1)
    model = tiny_model.model
    features = torch.randn(2, 17, 32)  # CLS + 16 patches
    question = qformer_tokenizer(["what colour is the square?"], return_tensors="pt")
    out = model.get_visual_tokens(
        features,
        frame_counts=torch.tensor([2]),
        qformer_input_ids=question["input_ids"],
        qformer_attention_mask=question["attention_mask"],
        block_media=torch.tensor([0]),
        block_question=torch.tensor([0]),
        from_pixels=True,
    )
    assert (
        model.vlm_att_ln is not None
    )  # qformer_pretrain: the Q-Former reads CLS + patches through a LayerNorm
    with torch.no_grad():
        patches = features[:, 1:]  # context and content tokens use the patches only, without that LayerNorm
        context = model.context_token(
            patches, features, question["input_ids"].expand(2, -1), question["attention_mask"].expand(2, -1)
        )
        content = model.mm_projector(patches.mean(dim=1))  # mean compression
    torch.testing.assert_close(out.tokens[0::2], context, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.tokens[1::2], content, rtol=1e-5, atol=1e-6)


# A CLIP tower as the official CLIP option builds it, as wide as the tiny EVA.
TINY_CLIP = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=56,
    patch_size=14,
)

# Media layouts for the reference check: frames per media item, which media are images, and the (media, question)
# of each block in placeholder order.
LAYOUTS = {
    "one_video": {"frame_counts": [5], "images": [False], "blocks": [(0, 0)]},
    "images": {"frame_counts": [1, 1, 1], "images": [True, True, True], "blocks": [(0, 0), (1, 1), (2, 2)]},
    "mixed": {
        "frame_counts": [3, 1, 4],
        "images": [False, True, False],
        "blocks": [(0, 0), (0, 1), (1, 2), (2, 0), (2, 2)],
    },
    "questions_about_one_video": {"frame_counts": [4], "images": [False], "blocks": [(0, 0), (0, 1), (0, 2)]},
}


def reference_visual_tokens(model, features, layout, questions, from_pixels):
    """Visual tokens built pair by pair in Python: `context_token` for the context, pooled patches for the content.

    Returns ``(context tokens (pairs, D), all tokens (positions, D))`` in placeholder order.
    """
    config, core = model.config, model.model
    with_cls = features.shape[1] == config.num_patches + 1
    patches = features[:, 1:] if with_cls else features
    sees_cls = config.qformer_sees_cls if from_pixels else config.features_qformer_sees_cls
    qformer_visual = features if with_cls and sees_cls else patches
    starts = np.cumsum([0, *layout["frame_counts"]])
    pairs = [
        (int(starts[media]) + rank, question, layout["images"][media])
        for media, question in layout["blocks"]
        for rank in range(layout["frame_counts"][media])
    ]
    frames = [frame for frame, _, _ in pairs]
    asked = [question for _, question, _ in pairs]
    context = core.context_token(
        patches[frames],
        qformer_visual[frames],
        questions["input_ids"][asked],
        questions["attention_mask"][asked],
    )
    tokens = []
    for index, (frame, _, is_image) in enumerate(pairs):
        kind = config.resolved_image_compress_type if is_image else config.compress_type
        pooled = core.pool_patches(patches[frame : frame + 1], kind)[0]  # (n, C)
        tokens += [context[index : index + 1], core.mm_projector(pooled)]
    return context, torch.cat(tokens)


@pytest.mark.parametrize(
    ("overrides", "layout", "with_cls", "from_pixels"),
    [
        pytest.param({}, "one_video", True, True, id="video-with-cls"),
        pytest.param({}, "one_video", False, False, id="video-without-cls"),
        pytest.param(
            {"features_qformer_sees_cls": False},
            "one_video",
            True,
            False,
            id="cached-cls-hidden-from-qformer",
        ),
        pytest.param({"image_compress_type": "grid:2"}, "images", True, True, id="images-grid"),
        pytest.param({}, "mixed", True, True, id="mixed-video-mean-image-none"),
        pytest.param(
            {"compress_type": "grid:2", "image_compress_type": "mean"},
            "mixed",
            True,
            True,
            id="mixed-video-grid",
        ),
        pytest.param(
            {"compress_type": None, "image_compress_type": "same"}, "one_video", True, True, id="none"
        ),
        pytest.param({}, "questions_about_one_video", True, True, id="several-questions"),
        pytest.param({"bert_type": "raw_bert"}, "mixed", True, True, id="raw-bert"),
        pytest.param({"bert_type": "qformer_pretrain"}, "mixed", True, True, id="qformer-pretrain"),
        pytest.param({"bert_type": "qformer"}, "mixed", False, True, id="qformer-without-ln"),
        pytest.param({"frame_chunk_size": 2}, "mixed", True, True, id="chunk-smaller-than-frames"),
        pytest.param(
            {"frame_chunk_size": 3}, "questions_about_one_video", True, True, id="chunk-shared-by-questions"
        ),
        pytest.param(
            {"compress_type": "off", "image_compress_type": "off"}, "mixed", True, True, id="context-only"
        ),
        # A pretrained Q-Former made for wider features (official: 1408) on a 32-wide tower: vlm_att_bert_proj.
        pytest.param({"qformer_input_width": 48}, "mixed", True, True, id="projected-pretrain"),
        pytest.param(
            {"qformer_input_width": 48, "bert_type": "qformer_pretrain_freeze_all"},
            "questions_about_one_video",
            True,
            False,
            id="projected-cached-features",
        ),
        pytest.param(
            {"qformer_input_width": 48, "features_qformer_sees_cls": False, "frame_chunk_size": 2},
            "mixed",
            True,
            False,
            id="projected-cls-hidden-chunked",
        ),
        pytest.param(
            {"qformer_input_width": 48, "bert_type": "qformer"},
            "mixed",
            True,
            True,
            id="projected-without-ln",
        ),
        pytest.param(
            {"vision_config": TINY_CLIP, "qformer_input_width": 48, "qformer_sees_cls": False},
            "mixed",
            True,
            True,
            id="clip-tower-projected",
        ),
    ],
)
def test_batched_tokens_equal_the_reference(overrides, layout, with_cls, from_pixels, qformer_tokenizer):
    """`get_visual_tokens` (frame chunks, keys shared across questions, one gather) equals the readable path."""
    model = build_tiny_model(**overrides)
    if overrides.get("bert_type") == "qformer_pretrain":
        assert model.model.vlm_att_ln is not None
    if "qformer_input_width" in overrides:  # vision width 32 -> 48 before the Q-Former (and its LayerNorm)
        assert tuple(model.model.vlm_att_bert_proj.weight.shape) == (48, 32)
        ln = model.model.vlm_att_ln
        if overrides.get("bert_type") == "qformer":
            assert ln is None
        else:
            assert tuple(ln.weight.shape) == (48,)
    setup = LAYOUTS[layout]
    questions = qformer_tokenizer(
        ["what moves?", "how many red squares are there?", "colour?"], padding=True, return_tensors="pt"
    )
    torch.manual_seed(4)
    features = torch.randn(sum(setup["frame_counts"]), 17 if with_cls else 16, 32)
    with torch.no_grad():
        out = model.model.get_visual_tokens(
            features,
            torch.tensor(setup["frame_counts"]),
            questions["input_ids"],
            questions["attention_mask"],
            torch.tensor([media for media, _ in setup["blocks"]]),
            torch.tensor([question for _, question in setup["blocks"]]),
            media_is_image=torch.tensor(setup["images"]),
            from_pixels=from_pixels,
        )
        context, tokens = reference_visual_tokens(model, features, setup, questions, from_pixels)
    assert out.context_tokens.shape == context.shape and out.tokens.shape == tokens.shape
    assert (out.context_tokens - context).abs().max() <= 1e-6
    assert (out.tokens - tokens).abs().max() <= 1e-6


# Per-frame work shared by a frame's questions ------------------------------------------------------------------------
QUESTION_TEXTS = (
    "what moves?",
    "how many red squares are there?",
    "colour?",
    "is the square to the left of the circle at the end?",
)


def question_sensitive_model(seed: int = 0, **overrides):
    """The tiny model with its text decoder and `vlm_att_*` matrices redrawn at std 0.2.

    At the default std (0.02) the context tokens of two questions about one frame differ by about 1e-5, so an
    equality check at that tolerance could not see a pair served with the wrong question's queries.
    """
    model = build_tiny_model(seed, **overrides)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, parameter in model.model.named_parameters():
            if name.startswith("vlm_att") and parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def several_questions_layout(layout: str, num_questions: int) -> dict:
    """One video asked every question, or three media asked different subsets (uneven pairs per frame)."""
    if layout == "one_video":
        return {"frame_counts": [5], "images": [False], "blocks": [(0, q) for q in range(num_questions)]}
    blocks = [(0, q) for q in range(num_questions)] + [(1, num_questions - 1)]
    blocks += [(2, q) for q in range(0, num_questions, 2)]
    return {"frame_counts": [3, 1, 4], "images": [False, True, False], "blocks": blocks}


def visual_tokens_for(model, features, setup, questions, **kwargs):
    return model.model.get_visual_tokens(
        features,
        torch.tensor(setup["frame_counts"]),
        questions["input_ids"],
        questions["attention_mask"],
        torch.tensor([media for media, _ in setup["blocks"]]),
        torch.tensor([question for _, question in setup["blocks"]]),
        media_is_image=torch.tensor(setup["images"]),
        **kwargs,
    )


@pytest.mark.parametrize("layout", ["one_video", "mixed"])
@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("num_questions", [1, 2, 4])
def test_shared_frame_work_equals_the_reference(num_questions, chunk, layout, qformer_tokenizer):
    """P questions share each frame's cross-attention keys/values, keys and LayerNorm; tokens stay the reference's."""
    model = question_sensitive_model(frame_chunk_size=chunk)
    setup = several_questions_layout(layout, num_questions)
    questions = qformer_tokenizer(list(QUESTION_TEXTS[:num_questions]), padding=True, return_tensors="pt")
    features = torch.randn(sum(setup["frame_counts"]), 17, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = visual_tokens_for(model, features, setup, questions)
        context, tokens = reference_visual_tokens(model, features, setup, questions, True)
    assert (out.context_tokens - context).abs().max() <= 1e-5
    assert (out.tokens - tokens).abs().max() <= 1e-5
    if num_questions > 1:  # the check can tell the questions apart: frame 0 of question 0 vs of question 1
        frames = setup["frame_counts"][0]
        assert (context[0] - context[frames]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "overrides", [{}, {"qformer_input_width": 48}], ids=["same-width", "projected-pretrain"]
)
def test_shared_path_matches_the_pairwise_path_with_attention_maps(overrides, qformer_tokenizer):
    model = question_sensitive_model(frame_chunk_size=2, **overrides)
    setup = several_questions_layout("mixed", 3)
    questions = qformer_tokenizer(list(QUESTION_TEXTS[:3]), padding=True, return_tensors="pt")
    features = torch.randn(8, 17, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        shared = visual_tokens_for(model, features, setup, questions, output_attentions=True)
        model.model.get_context_tokens = model.model.pairwise_context_tokens  # the path before sharing
        pairwise = visual_tokens_for(model, features, setup, questions, output_attentions=True)
    for name in ("tokens", "attention_weights", "frame_scores"):
        assert (getattr(shared, name) - getattr(pairwise, name)).abs().max() <= 1e-5, name


def test_cross_attention_keys_values_are_computed_once_per_frame(qformer_tokenizer):
    model = build_tiny_model(frame_chunk_size=2)
    core = model.model
    rows: dict[str, int] = {}

    def count(name):
        def hook(module, inputs, output):
            rows[name] = rows.get(name, 0) + inputs[0].shape[:-1].numel()

        return hook

    cross_layers = [layer for layer in core.vlm_att_encoder.encoder.layer if layer.has_cross_attention]
    for index, layer in enumerate(cross_layers):
        layer.crossattention.attention.key.register_forward_hook(count(f"cross_key_{index}"))
        layer.crossattention.attention.value.register_forward_hook(count(f"cross_value_{index}"))
    core.vlm_att_key_projector.register_forward_hook(count("key_projector"))
    core.vlm_att_ln.register_forward_hook(count("ln"))
    setup = several_questions_layout("one_video", 4)
    questions = qformer_tokenizer(list(QUESTION_TEXTS), padding=True, return_tensors="pt")
    with torch.no_grad():
        visual_tokens_for(model, torch.randn(5, 17, 32), setup, questions)
    frames = 5
    assert rows == {
        **{f"cross_{kind}_{i}": frames * 17 for i in range(len(cross_layers)) for kind in ("key", "value")},
        "key_projector": frames * 16,
        "ln": frames * 17,
    }


def _qformer_with_dropout(hidden: float, attention: float | None = None) -> dict:
    config = dict(tiny_config_kwargs()["qformer_config"])
    config.update(
        hidden_dropout_prob=hidden, attention_probs_dropout_prob=hidden if attention is None else attention
    )
    return config


def _qformer_gradients(model, features, setup, questions, pairwise: bool) -> tuple[torch.Tensor, dict]:
    core = model.model
    if pairwise:
        core.get_context_tokens = core.pairwise_context_tokens
    model.zero_grad(set_to_none=True)
    try:
        context = visual_tokens_for(model, features, setup, questions).context_tokens
        (context * torch.linspace(-1, 1, context.shape[-1])).square().sum().backward()
    finally:
        core.__dict__.pop("get_context_tokens", None)
    grads = {
        name: parameter.grad.clone()
        for name, parameter in core.named_parameters()
        if name.startswith(("vlm_att", "mm_projector"))
        and parameter.requires_grad
        and parameter.grad is not None
    }
    return context.detach(), grads


@pytest.mark.parametrize(
    "overrides", [{}, {"qformer_input_width": 48}], ids=["same-width", "projected-pretrain"]
)
def test_a_training_qformer_shares_the_frame_work_with_the_gradients_of_the_pairwise_path(
    overrides, qformer_tokenizer
):
    """Without dropout, checkpointing or sharding, a Q-Former that trains takes the shared path: the same
    context tokens and the same gradient for every weight as its layers' own forward (exactly zero for the last
    layer's question-token feed-forward, which nothing reads), so optimizers and DDP see every parameter."""
    model = question_sensitive_model(
        frame_chunk_size=3, qformer_config=_qformer_with_dropout(0.0), **overrides
    )
    model.train()
    setup = several_questions_layout("mixed", 2)
    questions = qformer_tokenizer(list(QUESTION_TEXTS[:2]), padding=True, return_tensors="pt")
    features = torch.randn(8, 17, 32, generator=torch.Generator().manual_seed(7))
    core = model.model
    assert not core._needs_pairwise_qformer()  # no dropout (as the committed tiny model)
    shared, shared_grads = _qformer_gradients(model, features, setup, questions, pairwise=False)
    pairwise, pairwise_grads = _qformer_gradients(model, features, setup, questions, pairwise=True)
    torch.testing.assert_close(shared, pairwise, rtol=1e-5, atol=1e-5)
    assert shared_grads.keys() == pairwise_grads.keys()
    trainable = [
        name for name, parameter in core.named_parameters()
        if name.startswith(("vlm_att_encoder.", "vlm_att_bert_proj.", "vlm_att_ln."))
        and parameter.requires_grad and "word_embeddings" not in name
    ]  # fmt: skip
    assert set(trainable) <= shared_grads.keys(), set(trainable) - shared_grads.keys()
    for name, grad in pairwise_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    last = len(core.qformer_layers()) - 1
    unread = [
        name
        for name in shared_grads
        if f"layer.{last}.intermediate." in name or f"layer.{last}.output." in name
    ]
    assert unread and all(shared_grads[name].abs().max() == 0 for name in unread)
    assert any(
        grad.abs().max() > 0
        for name, grad in shared_grads.items()
        if f"layer.{last}.intermediate_query" in name
    )
    if overrides:  # the projection trains with the Q-Former (official: no freeze variant freezes it)
        assert core.vlm_att_bert_proj.weight.grad.abs().sum() > 0


def test_qformer_dropout_in_training_takes_the_pairwise_path():
    """Dropout must be drawn per (frame, question) pair, which the shared path cannot do."""
    for hidden, attention in ((0.1, 0.0), (0.0, 0.1)):
        model = build_tiny_model(qformer_config=_qformer_with_dropout(hidden, attention))
        assert not model.model._needs_pairwise_qformer()  # dropout is off in eval mode
        model.train()
        assert model.model._needs_pairwise_qformer()
    model = build_tiny_model(qformer_config=_qformer_with_dropout(0.0)).train()
    assert not model.model._needs_pairwise_qformer()


def test_checkpointed_qformer_training_keeps_the_pairwise_path():
    model = build_tiny_model(qformer_config=_qformer_with_dropout(0.0))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    model.model.vlm_att_encoder.requires_grad_(False)
    assert model.model._needs_pairwise_qformer()  # checkpointing alone is reason enough
    with torch.no_grad():
        assert not model.model._needs_pairwise_qformer()


def test_shared_frame_work_at_released_widths(qformer_tokenizer):
    """Released Q-Former / EVA widths (768 wide, 12 heads, 32 queries, 1408-wide features, N = 256 + CLS),
    with 3 Q-Former layers (cross-attention in layers 0 and 2) and small LLM / EVA depth to stay quick."""
    config = LlamaVidConfig(
        vision_config=dict(
            hidden_size=1408, intermediate_size=64, num_hidden_layers=1, num_attention_heads=16, image_size=224
        ),
        qformer_config=dict(
            hidden_size=768, num_hidden_layers=3, num_attention_heads=12, intermediate_size=3072, vocab_size=30523
        ),
        text_config=dict(
            model_type="llama", vocab_size=99, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4,
        ),
        num_query=32,
        compress_type="mean",
        frame_chunk_size=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaVidForConditionalGeneration(config).eval()
    assert [layer.has_cross_attention for layer in model.model.vlm_att_encoder.encoder.layer] == [
        True,
        False,
        True,
    ]
    setup = several_questions_layout("one_video", 2)
    setup["frame_counts"] = [3]
    questions = qformer_tokenizer(list(QUESTION_TEXTS[:2]), padding=True, return_tensors="pt")
    features = torch.randn(3, 257, 1408, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = visual_tokens_for(model, features, setup, questions)
        context, _ = reference_visual_tokens(model, features, setup, questions, True)
    assert (out.context_tokens - context).abs().max() <= 1e-5
    assert (context[0] - context[3]).abs().max() > 1e-4  # the two questions give different tokens


def test_frame_pairs_and_interleaving_by_hand():
    pairs = index_frame_pairs(torch.tensor([2, 1, 3]), torch.tensor([2, 0, 2]), torch.tensor([0, 1, 2]))
    assert pairs.frame.tolist() == [3, 4, 5, 0, 1, 3, 4, 5]  # media 2 is frames 3..5, media 0 frames 0..1
    assert pairs.question.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert pairs.block_frame_counts.tolist() == [3, 2, 3]
    context = torch.tensor([[-1.0], [-2.0]])
    content = torch.tensor([[10.0], [11.0], [12.0]])  # frame 0 owns row 0, frame 1 rows 1..2
    offsets, counts = torch.tensor([0, 1]), torch.tensor([1, 2])
    assert interleave_visual_tokens(context, content, offsets, counts).flatten().tolist() == [
        -1.0, 10.0, -2.0, 11.0, 12.0
    ]  # fmt: skip
    assert interleave_visual_tokens(context, content, offsets, counts, with_context=False).flatten().tolist() == [
        10.0, 11.0, 12.0
    ]  # fmt: skip


def test_content_pooling_adds_no_state(tiny_model):
    model = tiny_model.model
    assert isinstance(model.content_pooling, LlamaVidContentPooling)
    assert not list(model.content_pooling.state_dict())
    assert not any(key.startswith("model.content_pooling") for key in tiny_model.state_dict())
    patches = torch.randn(3, 16, 32)
    torch.testing.assert_close(
        model.pool_patches(patches, "grid:2"), model.content_pooling(patches, "grid:2")
    )


def test_vectorised_equals_loop_over_frames_and_questions(tiny_model, qformer_tokenizer):
    torch.manual_seed(2)
    model = tiny_model.model
    frame_counts = torch.tensor([3, 1, 4])
    features = torch.randn(int(frame_counts.sum()), 17, 32)
    questions = qformer_tokenizer(
        ["what moves?", "how many?", "colour of the circle?"], padding=True, return_tensors="pt"
    )
    block_media, block_question = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 2, 0, 2])
    batched = model.get_visual_tokens(
        features,
        frame_counts,
        questions["input_ids"],
        questions["attention_mask"],
        block_media,
        block_question,
    ).tokens
    starts = torch.cumsum(frame_counts, 0) - frame_counts
    pieces = []
    for media, question in zip(block_media.tolist(), block_question.tolist(), strict=True):
        for frame in range(int(frame_counts[media])):
            index = int(starts[media]) + frame
            one = model.get_visual_tokens(
                features[index : index + 1],
                torch.tensor([1]),
                questions["input_ids"][question : question + 1],
                questions["attention_mask"][question : question + 1],
                torch.tensor([0]),
                torch.tensor([0]),
            ).tokens
            pieces.append(one)
    torch.testing.assert_close(batched, torch.cat(pieces), rtol=1e-5, atol=1e-6)


def test_frame_chunking_gives_identical_tokens(qformer_tokenizer):
    small = build_tiny_model(frame_chunk_size=1)
    large = build_tiny_model(frame_chunk_size=64)
    features = torch.randn(7, 17, 32)
    question = qformer_tokenizer(["where is it?"], return_tensors="pt")
    args = (
        features,
        torch.tensor([7]),
        question["input_ids"],
        question["attention_mask"],
        torch.tensor([0]),
        torch.tensor([0]),
    )
    torch.testing.assert_close(
        small.model.get_visual_tokens(*args).tokens, large.model.get_visual_tokens(*args).tokens
    )


# Attention maps -----------------------------------------------------------------------------------------------------
def test_frame_relevance_finds_the_matching_frame(tiny_model, qformer_tokenizer):
    model = tiny_model.model
    width = 32
    direction = torch.zeros(width)
    direction[3] = 1.0
    with torch.no_grad():
        # Hand-set weights: every text query equals `direction` whatever the Q-Former says, keys are the patches.
        model.vlm_att_projector.weight.zero_()
        model.vlm_att_projector.bias.copy_(4.0 * direction)
        model.vlm_att_key_projector.weight.copy_(torch.eye(width))
        model.vlm_att_key_projector.bias.zero_()
    torch.manual_seed(3)
    features = 0.1 * torch.randn(6, 16, width)  # no CLS: 16 patches
    features[4, 9] += 5.0 * direction  # frame 4, patch 9 matches the query
    question = qformer_tokenizer(["find the bright patch"], return_tensors="pt")
    out = model.get_visual_tokens(
        features,
        torch.tensor([6]),
        question["input_ids"],
        question["attention_mask"],
        torch.tensor([0]),
        torch.tensor([0]),
        output_attentions=True,
    )
    assert out.attention_weights.shape == (6, 4, 16)  # (T, Q, N) for the one question
    torch.testing.assert_close(out.attention_weights.sum(-1), torch.ones(6, 4))
    assert int(out.frame_scores.argmax()) == 4
    assert int(out.attention_weights[4].mean(0).argmax()) == 9
    # Each frame's weights sum to one, so the raw weights cannot rank frames; the scores can.
    relevance = out.frame_scores.softmax(0)
    others = torch.cat([relevance[:4], relevance[5:]])
    assert relevance[4] > 2 * others.max()
    assert others.max() - others.min() < 0.05  # frames without the match are about equally (ir)relevant


# Generation, batching, caching ---------------------------------------------------------------------------------------
def test_greedy_generation_is_reproducible_and_cache_matches(tiny_model, tiny_processor):
    video = moving_square_video(frames=4)
    prompt = question_prompt(tiny_processor, "which way does the square move?")
    batch = tiny_processor(prompt, media=video, questions="which way does the square move?")
    cached = tiny_model.generate(**batch, max_new_tokens=8, do_sample=False)
    uncached = tiny_model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=False)
    new_tokens = cached[0, batch["input_ids"].shape[1] :].tolist()
    assert new_tokens == uncached[0, batch["input_ids"].shape[1] :].tolist()
    assert new_tokens == [452, 198, 32, 281, 273, 264, 209, 493]  # stored from a seeded run (fp32, CPU)
    # Placeholders never reach the returned ids (logits processors saw the pad id instead).
    assert (cached >= 0).all()


def test_left_padded_batch_equals_one_by_one(tiny_model, tiny_processor, rng):
    samples = [
        (moving_square_video(frames=3, seed=1), "which way does it move?"),
        (rng.integers(0, 255, (50, 50, 3), dtype="uint8"), "what colour is the big square in the image?"),
        (moving_square_video(frames=6, seed=2), "how many?"),
    ]
    prompts = [question_prompt(tiny_processor, question) for _, question in samples]
    batch = tiny_processor(prompts, media=[m for m, _ in samples], questions=[q for _, q in samples])
    together = tiny_model.generate(**batch, max_new_tokens=6, do_sample=False)[
        :, batch["input_ids"].shape[1] :
    ]
    for row, (media, question) in enumerate(samples):
        single = tiny_processor(prompts[row], media=media, questions=question)
        alone = tiny_model.generate(**single, max_new_tokens=6, do_sample=False)[
            :, single["input_ids"].shape[1] :
        ]
        assert together[row].tolist() == alone[0].tolist()


def test_cached_frame_features_equal_recompute_across_questions(tiny_model, tiny_processor):
    video = moving_square_video(frames=5)
    questions = ["which way does the square move?", "what colour is the square?"]
    features = tiny_model.model.get_vision_features(tiny_processor.image_processor(video, is_video=True))
    for question in questions:
        prompt = question_prompt(tiny_processor, question)
        from_pixels = tiny_model(**tiny_processor(prompt, media=video, questions=question)).logits
        from_cache = tiny_model(**tiny_processor(prompt, media=features, questions=question)).logits
        torch.testing.assert_close(from_pixels, from_cache, rtol=1e-5, atol=1e-5)


def test_several_questions_share_frames_but_not_context(tiny_model, tiny_processor):
    video = moving_square_video(frames=3)
    prompt = tiny_processor.apply_chat_template(
        [
            {"role": "user", "content": "<image>\nwhat moves?"},
            {"role": "assistant", "content": "a square"},
            {"role": "user", "content": "<image>\nwhich colour?"},
        ]
    )
    batch = tiny_processor(prompt, media=video, questions=["what moves?", "which colour?"])
    out = tiny_model(**batch)
    tokens = out.visual.tokens.reshape(2, 3, 2, -1)  # (P, T, 1 + n, D)
    torch.testing.assert_close(tokens[0, :, 1], tokens[1, :, 1])  # content tokens: identical copies
    assert not torch.allclose(tokens[0, :, 0], tokens[1, :, 0])  # context tokens follow the question


def test_training_loss_ignores_visual_positions_and_falls(tiny_processor):
    model = build_tiny_model().train()
    video = moving_square_video(frames=2)
    batch = tiny_processor(
        question_prompt(tiny_processor, "what moves?") + " a red square",
        media=video,
        questions="what moves?",
        padding_side="right",
    )
    labels = batch["input_ids"].clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert math.isfinite(losses[0])
    assert losses[-1] < losses[0]


# Persistence ---------------------------------------------------------------------------------------------------------
def test_save_and_load_give_identical_logits(tmp_path, tiny_model, tiny_processor):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    video = moving_square_video(frames=3)
    batch = tiny_processor(question_prompt(tiny_processor, "what?"), media=video, questions="what?")
    tiny_model.save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    assert AutoConfig.from_pretrained(tmp_path).model_type == "llama_vid"
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, LlamaVidForConditionalGeneration)
    again = processor(question_prompt(processor, "what?"), media=video, questions="what?")
    for key in batch:
        torch.testing.assert_close(batch[key], again[key])
    torch.testing.assert_close(tiny_model(**batch).logits, reloaded(**again).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "bert_type", ["qformer", "qformer_pretrain_freeze_all", "raw_bert", "qformer_pretrain layer:1"]
)
def test_text_decoder_variants_build_and_run(bert_type, qformer_tokenizer):
    model = build_tiny_model(bert_type=bert_type)
    question = qformer_tokenizer(
        ["what moves?", "a longer question here?"], padding=True, return_tensors="pt"
    )
    out = model.model.get_visual_tokens(
        torch.randn(2, 17, 32),
        torch.tensor([2]),
        question["input_ids"],
        question["attention_mask"],
        torch.tensor([0, 0]),
        torch.tensor([0, 1]),
    )
    assert out.tokens.shape == (2 * 2 * 2, 32)
    assert torch.isfinite(out.tokens).all()
    if bert_type.endswith("layer:1"):
        assert len(model.model.vlm_att_encoder.encoder.layer) == 1
    if bert_type == "raw_bert":
        assert model.model.vlm_att_query is None and model.model.vlm_att_bert_proj is not None
    frozen = model.frozen_module_names()
    assert ("model.vlm_att_key_projector" in frozen) == bert_type.endswith("freeze_all")


# Errors --------------------------------------------------------------------------------------------------------------
def test_wrong_placeholder_count_is_a_clear_error(tiny_model, tiny_processor):
    batch = tiny_processor(
        question_prompt(tiny_processor, "what?"), media=moving_square_video(frames=3), questions="what?"
    )
    ids = batch["input_ids"]
    position = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero()[0])
    batch["input_ids"] = torch.cat([ids[:, :position], ids[:, position + 1 :]], dim=1)
    batch["attention_mask"] = batch["attention_mask"][:, 1:]
    with pytest.raises(ValueError, match=r"5 visual placeholder ids .* produce 6 visual tokens"):
        tiny_model(**batch)


def test_wrong_image_size_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r"\(frames, 3, 56, 56\).*got \(2, 3, 64, 64\)"):
        tiny_model.model.get_vision_features(torch.zeros(2, 3, 64, 64))


def test_frames_without_a_question_are_an_error(tiny_model, qformer_tokenizer):
    question = qformer_tokenizer(["what?"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"media \[1\] have frames but no question"):
        tiny_model.model.get_visual_tokens(
            torch.randn(3, 17, 32),
            torch.tensor([2, 1]),
            question["input_ids"],
            question["attention_mask"],
            torch.tensor([0]),
            torch.tensor([0]),
        )


def test_empty_video_is_an_error(tiny_processor, tiny_model, qformer_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        tiny_processor(
            question_prompt(tiny_processor, "what?"), media=np.zeros((0, 8, 8, 3), "uint8"), questions="what?"
        )
    question = qformer_tokenizer(["what?"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"media \[1\] have no frames"):
        tiny_model.model.get_visual_tokens(
            torch.randn(2, 17, 32),
            torch.tensor([2, 0]),
            question["input_ids"],
            question["attention_mask"],
            torch.tensor([0, 1]),
            torch.tensor([0, 0]),
        )


def test_bad_config_values_are_value_errors():
    with pytest.raises(ValueError, match="compress_type='grid:1'"):
        LlamaVidConfig(**tiny_config_kwargs(compress_type="grid:1"))
    with pytest.raises(ValueError, match="mm_projector_type"):
        LlamaVidConfig(**tiny_config_kwargs(mm_projector_type="mlp2x_relu"))
    with pytest.raises(ValueError, match="bert_type"):
        LlamaVidConfig(**tiny_config_kwargs(bert_type="t5"))
    assert LlamaVidConfig().model_type == "llama_vid"


def test_default_config_matches_the_released_video_checkpoint():
    config = LlamaVidConfig()
    assert config.vision_config.num_hidden_layers == 39 and config.vision_config.hidden_size == 1408
    assert config.vision_config.layer_norm_eps == 1e-6 and config.vision_config.intermediate_size == 6144
    assert config.qformer_config.vocab_size == 30523 and config.qformer_config.cross_attention_frequency == 2
    assert config.text_config.hidden_size == 4096 and config.text_config.vocab_size == 32000
    assert config.num_query == 32 and config.tokens_per_frame() == 2 and config.num_patches == 256


def test_source_never_hard_codes_cuda():
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for folder in ("src", "benchmarks", "examples")
        for path in (root / folder).rglob("*.py")
        if re.search(r"\.cuda\(", path.read_text())
    ]
    assert offenders == []


def test_attention_maps_per_media_and_question(tiny_model, tiny_processor, rng):
    video = moving_square_video(frames=5)
    image = rng.integers(0, 255, (40, 40, 3), dtype="uint8")
    prompts = ["<image> what moves? <image> what colour?", "<image> describe"]
    batch = tiny_processor(
        prompts, media=[video, image], questions=[["what moves?", "what colour?"], "describe"]
    )
    maps = tiny_model.get_attention_maps(**batch)
    assert [m["weights"].shape for m in maps] == [(2, 5, 4, 16), (1, 1, 4, 16)]  # (P, T, Q, N)
    assert maps[0]["relevance"].shape == (2, 5)
    torch.testing.assert_close(maps[0]["relevance"].sum(-1), torch.ones(2))
    assert maps[0]["questions"].tolist() == [0, 1] and maps[1]["questions"].tolist() == [2]
