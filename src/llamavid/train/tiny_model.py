"""The tiny LLaMA-VID of the synthetic world: its sizes, how a fresh one is built, saved and scored.

Design (measured reasons in ``docs/tiny-model.md``):

* vision: the stage-0 tower (64 px, patch 8 -> 8x8 patches, width 128), frozen;
* text decoder: an instruction-aware Q-Former (2 layers, width 128, 8 queries) with a WordPiece vocab built
  from the synth vocabulary (every word whole; characters as fallback);
* images keep ``grid:4`` content tokens (16, one per grid cell, aligned with the stage-0 cell targets) + 1 context
  token; video frames ``mean`` (1 + 1 = 2 tokens per frame, as the released video checkpoints);
* LLM: a from-scratch Llama (4 layers x 256) with a tokenizer built from the synth world.

Training is ``llamavid train`` with a ``data.tiny`` section (:mod:`llamavid.train.tiny_phase`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llamavid.inference.text import normalize_answer
from llamavid.model.configuration_llamavid import LlamaVidConfig
from llamavid.model.modeling_llamavid import VISUAL_INPUT_NAMES, LlamaVidForConditionalGeneration
from llamavid.model.processing_llamavid import LlamaVidProcessor
from llamavid.synth import Episode
from llamavid.synth._common import QAItem
from llamavid.train.stage0_vision import load_tower, tiny_vision_config
from llamavid.train.tiny import make_batch

TEMPLATE = "synth_v1"


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
    context_token: bool = True  # False / compress "off": the ablation's content-only / context-only models


def load_tokenizers(work: Path, llm: str = "word", qformer: str = "synth") -> tuple[Any, Any]:
    """The LLM and text-decoder tokenizers of a tiny model, built from the synth world's text the first time.

    ``llm``: ``"word"`` (v4: one id per synth word, others ``<unk>``) or ``"subword"`` (byte-level BPE, no unknown
    token, merges learnt from the trained phrasings only). ``qformer``: ``"synth"`` (v4: WordPiece of the synth
    words) or ``"bert"`` (the released BERT-uncased vocab, nothing to build). Built tokenizers are kept under
    ``work`` (one folder per kind), so every phase and rerun reads the same ones.
    """
    from transformers import AutoTokenizer

    from llamavid.model.processing_llamavid import load_qformer_tokenizer
    from llamavid.synth.tokenizers import (
        build_llm_tokenizer,
        build_qformer_vocab,
        build_subword_tokenizer,
        subword_corpus,
        synth_corpus,
    )

    llm_dir = work / ("llm_tokenizer" if llm == "word" else f"llm_tokenizer_{llm}")
    if not (llm_dir / "tokenizer.json").is_file():
        if llm == "word":
            build_llm_tokenizer(llm_dir, synth_corpus())
        else:
            build_subword_tokenizer(llm_dir, subword_corpus())
    if qformer == "bert":
        qformer_tokenizer = load_qformer_tokenizer()
    else:
        if not (work / "qformer_tokenizer" / "vocab.txt").is_file():
            build_qformer_vocab(work / "qformer_tokenizer", synth_corpus())
        qformer_tokenizer = load_qformer_tokenizer(work / "qformer_tokenizer")
    return AutoTokenizer.from_pretrained(str(llm_dir)), qformer_tokenizer


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
        context_token=settings.context_token,
        mm_projector_type="mlp2x_gelu",
    )
    model = LlamaVidForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.vision_tower.requires_grad_(False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


@torch.no_grad()
def score_items(
    model: LlamaVidForConditionalGeneration,
    processor: LlamaVidProcessor,
    items: Sequence[QAItem],
    cache: dict[str, Tensor],
    batch_size: int = 32,
    max_new_tokens: int = 4,
) -> dict[str, Any]:
    """Greedy-decode every item and report exact-match accuracy per question type (and held-out-combo items).

    The answers come from the inference core (`Engine.answer_batch`, the path ``llamavid ask`` takes); only the
    visual tokens are computed here, from the cached features instead of pixels. Long videos go one per batch
    (their prompts differ in length by thousands of tokens).
    """
    from llamavid.inference.engine import Engine, GenerationRequest
    from llamavid.inference.settings import SamplingSettings

    model.eval()
    engine = Engine(model, processor)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=max_new_tokens)
    hits: dict[str, list[int]] = defaultdict(list)
    combo: list[int] = []
    every: list[int] = []
    examples: list[dict[str, str]] = []
    if any(isinstance(item.media, Episode) for item in items):
        batch_size = 1
    for start in range(0, len(items), batch_size):
        indices = list(range(start, min(start + batch_size, len(items))))
        batch = make_batch(items, cache, indices, processor, train=False)
        visual = None
        if "vision_features" in batch:
            inputs = {key: batch[key].to(engine.device) for key in VISUAL_INPUT_NAMES if key in batch}
            inputs["vision_features"] = inputs["vision_features"].to(engine.dtype)
            visual = model.model.get_visual_tokens(**inputs, from_pixels=False).tokens
        requests, used = [], 0
        for row, index in enumerate(indices):
            ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]  # this row without its padding
            count = int((ids == model.config.image_token_index).sum())
            tokens = None if visual is None or not count else visual[used : used + count]
            requests.append(GenerationRequest(ids.tolist(), tokens, greedy, items[index].question))
            used += count
        texts = [answer.text for answer in engine.answer_batch(requests)]
        for index, text in zip(indices, texts, strict=True):
            item = items[index]
            correct = int(normalize_answer(text) == normalize_answer(item.answer))
            hits[item.question_type].append(correct)
            every.append(correct)
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
        "correct": every,  # per item, in order (paired comparisons between models)
        "examples": examples,
    }


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
    "build_tiny_model",
    "load_tokenizers",
    "save_tiny_model",
    "score_items",
]
