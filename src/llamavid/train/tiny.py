"""The tiny LLaMA-VID trained on the synthetic world: tokenizers, model, cached features, training and scoring.

Why a dedicated module: the generic recipe (``llamavid train CONFIG.yaml``, branch ``train``) did not exist yet when
this was written; this keeps one small loop (AdamW, cosine, masked next-token loss as spec §9.3) over *cached*
frozen stage-0 features, which is what makes the tiny model trainable on 2 shared CPU cores. When the generic
recipe lands, stages 1-3 should move to it; the pieces here (tokenizers, ``build_tiny_model``, feature caches,
``score_items``) are what it needs.

Design (measured reasons in ``docs/tiny-model.md``):

* vision: the stage-0 tower (64 px, patch 8 -> 8x8 patches, width 128), frozen;
* text decoder: an instruction-aware Q-Former (2 layers, width 128, 8 queries) with a WordPiece vocab built
  from the synth vocabulary (every word whole; characters as fallback);
* images keep ``grid:4`` content tokens (16, one per grid cell, aligned with the stage-0 cell targets) + 1 context
  token; video frames ``mean`` (1 + 1 = 2 tokens per frame, as the released video checkpoints);
* LLM: a from-scratch Llama (4 layers x 256) with a word-level tokenizer over the synth vocabulary.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from llamavid.model.configuration_llamavid import IGNORE_INDEX, LlamaVidConfig
from llamavid.model.conversation import _VICUNA_SYSTEM, DEFAULT_IMAGE_TOKEN, build_long_video_message
from llamavid.model.modeling_llamavid import LlamaVidForConditionalGeneration
from llamavid.model.processing_llamavid import LlamaVidProcessor, load_qformer_tokenizer
from llamavid.synth import QUESTION_TYPES, FrameSpec, generate_items, render_frame
from llamavid.synth._common import QAItem
from llamavid.synth.world import BACKGROUNDS, COLOURS, NAMES, QUADRANTS, SHAPES, SIZES, WORDS
from llamavid.train.stage0_vision import Stage0Settings, load_tower, normalise, tiny_vision_config

logger = logging.getLogger(__name__)

TEMPLATE = "synth_v1"
_WORD_RE = re.compile(r"\w+|[^\w\s]")
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


# Tokenizers -------------------------------------------------------------------------------------------------------
def synth_corpus(samples: int = 400) -> list[str]:
    """Every kind of text the synthetic world produces (questions, answers, captions, subtitles, templates)."""
    texts = [_VICUNA_SYSTEM, "USER: ASSISTANT:", build_long_video_message([""], "")]
    texts += [" ".join(SHAPES + COLOURS + BACKGROUNDS + SIZES + WORDS + NAMES + QUADRANTS)]
    texts += [" ".join(options) for options in QUESTION_TYPES.values()]
    for kind in ("image_qa", "video_qa", "text_qa", "image_caption", "video_caption"):
        for item in generate_items("train", samples, seed=99, kind=kind):
            texts += [item.question, item.answer]
    for item in generate_items("train", 40, seed=99, kind="stage3", episode_frames=200):
        texts += [item.question, item.answer]
        texts += [cue.text for cue in item.media.subtitles]
    return texts


def build_llm_tokenizer(out_dir: Path, corpus: Iterable[str]) -> Any:
    """A word-level tokenizer (one id per synth word or punctuation mark) saved as ``tokenizer.json``.

    Why: the answers are single words; one token per word keeps sequences short (long videos are ~2 tokens per
    frame plus subtitles) and makes exact-match answers a 1-2 step decode. Unknown words map to ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in corpus for w in _WORD_RE.findall(text)})
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(
        prefix="##", cleanup=True
    )  # joins words with spaces, tidies punctuation
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_qformer_vocab(out_dir: Path, corpus: Iterable[str]) -> Any:
    """A BERT WordPiece vocab: specials, every lower-cased synth word whole, then characters as a fallback."""
    words = sorted({w for text in corpus for w in _WORD_RE.findall(text.lower())})
    chars = sorted({c for w in words for c in w})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tokens += [c for c in chars if c not in tokens] + ["##" + c for c in chars]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    tokenizer = load_qformer_tokenizer(out_dir)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


# Model ------------------------------------------------------------------------------------------------------------
@dataclass
class TinyModelSettings:
    llm_hidden: int = 256
    llm_layers: int = 4
    llm_heads: int = 4
    llm_intermediate: int = 768
    max_positions: int = 4096
    qformer_hidden: int = 128
    qformer_layers: int = 2
    qformer_heads: int = 4
    num_query: int = 8
    image_compress_type: str = "grid:4"
    compress_type: str = "mean"


def build_tiny_model(
    stage0_dir: Path, tokenizer: Any, qformer_tokenizer: Any, settings: TinyModelSettings
) -> LlamaVidForConditionalGeneration:
    """A LLaMA-VID with the frozen stage-0 tower loaded and everything else freshly initialised."""
    tower, stage0 = load_tower(stage0_dir)
    vision = tiny_vision_config(stage0)
    config = LlamaVidConfig(
        vision_config=vision.to_dict(),
        qformer_config={
            "vocab_size": len(qformer_tokenizer),
            "hidden_size": settings.qformer_hidden,
            "num_hidden_layers": settings.qformer_layers,
            "num_attention_heads": settings.qformer_heads,
            "intermediate_size": settings.qformer_hidden * 2,
            "max_position_embeddings": 256,
            "cross_attention_frequency": 1,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "pad_token_id": qformer_tokenizer.pad_token_id,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": settings.llm_hidden,
            "intermediate_size": settings.llm_intermediate,
            "num_hidden_layers": settings.llm_layers,
            "num_attention_heads": settings.llm_heads,
            "num_key_value_heads": settings.llm_heads,
            "max_position_embeddings": settings.max_positions,
            "rope_theta": 10000.0,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": True,
        },
        num_query=settings.num_query,
        bert_type="qformer_pretrain",
        compress_type=settings.compress_type,
        image_compress_type=settings.image_compress_type,
        mm_projector_type="mlp2x_gelu",
    )
    model = LlamaVidForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.vision_tower.requires_grad_(False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# Cached features --------------------------------------------------------------------------------------------------
def item_frames(item: QAItem, size: int) -> np.ndarray | None:
    """``(T, H, W, 3)`` uint8 frames of an item's medium (T = 1 for images), or None for text-only items."""
    if item.media is None:
        return None
    if isinstance(item.media, FrameSpec):
        return render_frame(item.media, size)[None]
    return item.media.render(size)


@torch.no_grad()
def encode_frames(tower: torch.nn.Module, frames: np.ndarray, chunk: int = 256) -> Tensor:
    """Frozen tower features ``(T, 1+N, C)`` in fp16 (what the cache stores)."""
    parts = [tower(normalise(frames[i : i + chunk])).half() for i in range(0, len(frames), chunk)]
    return torch.cat(parts)


def build_feature_cache(
    path: Path, items: Sequence[QAItem], tower: torch.nn.Module, size: int
) -> dict[str, Tensor]:
    """Features of every item's medium, concatenated, with per-item offsets; saved as fp16 safetensors.

    Returns the loaded cache if ``path`` exists (resumable ``make tiny-model``). Items sharing a medium (long
    video questions) are encoded once.
    """
    if path.is_file():
        return load_file(path)
    started = time.time()
    offsets, counts, chunks = [], [], []
    seen: dict[str, tuple[int, int]] = {}
    total = 0
    for index, item in enumerate(items):
        key = item.meta.get("media_id", item.id)
        if item.media is None:
            offsets.append(0)
            counts.append(0)
            continue
        if key not in seen:
            frames = item_frames(item, size)
            assert frames is not None
            features = encode_frames(tower, frames)
            seen[key] = (total, len(features))
            chunks.append(features)
            total += len(features)
        offsets.append(seen[key][0])
        counts.append(seen[key][1])
        if index % 2000 == 0:
            logger.info("cache %s: %d/%d items (%.0f s)", path.name, index, len(items), time.time() - started)
    cache = {
        "features": torch.cat(chunks) if chunks else torch.zeros(0, 1, 1, dtype=torch.float16),
        "offsets": torch.tensor(offsets, dtype=torch.long),
        "counts": torch.tensor(counts, dtype=torch.long),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(cache, path)
    logger.info(
        "cached %d frames for %d items in %.0f s -> %s", total, len(items), time.time() - started, path
    )
    return cache


# Batches ----------------------------------------------------------------------------------------------------------
def prompt_for(item: QAItem, processor: LlamaVidProcessor) -> str:
    """The user turn in the model's template; media go first (``<image>\\n`` + question), as synth records do."""
    content = item.question if item.media is None else DEFAULT_IMAGE_TOKEN + "\n" + item.question
    return processor.apply_chat_template([{"role": "user", "content": content}])


def make_batch(
    items: Sequence[QAItem],
    cache: dict[str, Tensor],
    indices: Sequence[int],
    processor: LlamaVidProcessor,
    train: bool = True,
) -> dict[str, Tensor]:
    """Model inputs from cached features: right-padded with labels (train) or left-padded prompts (eval).

    Mirrors what `LlamaVidProcessor.__call__` builds from pixels, but from cached features and with
    ``media_is_image`` set, so images keep their ``grid`` content tokens (the processor marks every feature
    tensor as a video).
    """
    tokenizer = processor.tokenizer
    sequences, label_rows, features, frame_counts, is_image, questions = [], [], [], [], [], []
    for index in indices:
        item = items[index]
        prompt = prompt_for(item, processor)
        lengths: list[int] = []
        if item.media is not None:
            start, count = int(cache["offsets"][index]), int(cache["counts"][index])
            image = isinstance(item.media, FrameSpec)
            per_frame = processor.image_tokens_per_frame if image else processor.video_tokens_per_frame
            lengths = [count * per_frame]
            features.append(cache["features"][start : start + count])
            frame_counts.append(count)
            is_image.append(image)
            questions.append(item.question)
        ids = processor.tokenize_prompt(prompt, lengths)
        labels = [IGNORE_INDEX] * len(ids)
        if train:
            answer = tokenizer(" " + item.answer, add_special_tokens=False)["input_ids"] + [
                tokenizer.eos_token_id
            ]
            ids, labels = ids + answer, labels + answer
        sequences.append(ids)
        label_rows.append(labels)
    longest = max(len(s) for s in sequences)
    pad = processor.pad_token_id
    input_ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
    label_ids = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, (ids, labs) in enumerate(zip(sequences, label_rows, strict=True)):
        span = slice(0, len(ids)) if train else slice(longest - len(ids), longest)
        input_ids[row, span] = torch.tensor(ids)
        label_ids[row, span] = torch.tensor(labs)
        mask[row, span] = 1
    batch: dict[str, Tensor] = {"input_ids": input_ids, "attention_mask": mask}
    if train:
        batch["labels"] = label_ids
    if features:
        encoded = processor.qformer_tokenizer(questions, padding="longest", return_tensors="pt")
        batch.update(
            vision_features=torch.cat(features).float(),
            frame_counts=torch.tensor(frame_counts),
            media_is_image=torch.tensor(is_image),
            qformer_input_ids=encoded["input_ids"],
            qformer_attention_mask=encoded["attention_mask"],
            block_media=torch.arange(len(features)),
            block_question=torch.arange(len(features)),
        )
    return batch


# Scoring ----------------------------------------------------------------------------------------------------------
def normalise_answer(text: str) -> str:
    return " ".join(_WORD_RE.findall(text.lower()))


@torch.no_grad()
def score_items(
    model: LlamaVidForConditionalGeneration,
    processor: LlamaVidProcessor,
    items: Sequence[QAItem],
    cache: dict[str, Tensor],
    batch_size: int = 32,
    max_new_tokens: int = 4,
) -> dict[str, Any]:
    """Greedy-decode every item and report exact-match accuracy per question type (and held-out-combo items)."""
    model.eval()
    hits: dict[str, list[int]] = defaultdict(list)
    combo: list[int] = []
    examples: list[dict[str, str]] = []
    for start in range(0, len(items), batch_size):
        indices = list(range(start, min(start + batch_size, len(items))))
        batch = make_batch(items, cache, indices, processor, train=False)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.batch_decode(output[:, batch["input_ids"].shape[1] :])
        for index, text in zip(indices, texts, strict=True):
            item = items[index]
            correct = int(normalise_answer(text) == normalise_answer(item.answer))
            hits[item.question_type].append(correct)
            if item.meta.get("heldout_combo"):
                combo.append(correct)
            if len(examples) < 12:
                examples.append({"q": item.question, "answer": item.answer, "predicted": text})
    model.train()
    per_type = {name: float(np.mean(values)) for name, values in sorted(hits.items())}
    return {
        "per_type": per_type,
        "mean": float(np.mean(list(per_type.values()))) if per_type else 0.0,
        "heldout_combo": float(np.mean(combo)) if combo else None,
        "count": len(items),
        "examples": examples,
    }


# Training ---------------------------------------------------------------------------------------------------------
@dataclass
class TrainPhase:
    """One phase of the curriculum: a mixture of cached item sets sampled by weight."""

    name: str
    steps: int
    mixture: dict[str, float]
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 30
    eval_every: int = 0
    seed: int = 0  # added to the run seed for this phase's batch sampling


@dataclass
class TrainLog:
    curve: list[dict[str, Any]] = field(default_factory=list)


def train_phase(
    model: LlamaVidForConditionalGeneration,
    processor: LlamaVidProcessor,
    phase: TrainPhase,
    data: dict[str, tuple[list[QAItem], dict[str, Tensor]]],
    evals: dict[str, tuple[list[QAItem], dict[str, Tensor]]],
    log: TrainLog,
    seed: int = 0,
) -> None:
    """AdamW + warmup/cosine over a weighted mixture; every trainable module except the frozen tower learns."""
    rng = random.Random(seed + phase.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.0, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < phase.warmup:
            return (step + 1) / phase.warmup
        progress = (step - phase.warmup) / max(1, phase.steps - phase.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    names, weights = zip(*phase.mixture.items(), strict=True)
    started = time.time()
    running = 0.0
    model.train()
    for step in range(phase.steps):
        name = rng.choices(names, weights)[0]
        items, cache = data[name]
        indices = [rng.randrange(len(items)) for _ in range(phase.batch_size)]
        batch = make_batch(items, cache, indices, processor)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        running = 0.98 * running + 0.02 * float(loss.detach()) if step else float(loss.detach())
        if step % 50 == 0:
            logger.info(
                "%s step %d/%d loss %.3f (%.0f s)",
                phase.name,
                step,
                phase.steps,
                running,
                time.time() - started,
            )
        last = step == phase.steps - 1
        if (phase.eval_every and step and step % phase.eval_every == 0) or last:
            point: dict[str, Any] = {
                "phase": phase.name,
                "step": step,
                "loss": running,
                "seconds": time.time() - started,
            }
            for eval_name, (eval_items, eval_cache) in evals.items():
                result = score_items(model, processor, eval_items, eval_cache)
                point[eval_name] = {"mean": result["mean"], "per_type": result["per_type"]}
                logger.info(
                    "%s step %d %s: mean %.3f %s",
                    phase.name,
                    step,
                    eval_name,
                    result["mean"],
                    json.dumps({k: round(v, 2) for k, v in result["per_type"].items()}),
                )
            log.curve.append(point)


def save_tiny_model(
    model: LlamaVidForConditionalGeneration, processor: LlamaVidProcessor, out_dir: Path
) -> None:
    """A complete llamavid folder in fp16 (config, weights, processor, both tokenizers)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(str(out_dir), safe_serialization=True)
    model.float()
    processor.save_pretrained(out_dir)


__all__ = [
    "TEMPLATE",
    "TinyModelSettings",
    "TrainPhase",
    "TrainLog",
    "build_feature_cache",
    "build_llm_tokenizer",
    "build_qformer_vocab",
    "build_tiny_model",
    "make_batch",
    "save_tiny_model",
    "score_items",
    "synth_corpus",
    "train_phase",
    "Stage0Settings",
]
