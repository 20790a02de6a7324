"""Tokenizers built from the synthetic world's text, for the tiny LLaMA-VID.

* :func:`build_subword_tokenizer` (v5): a byte-level BPE for the LLM. Every string has an encoding (any byte is
  a token), so there is no unknown token: "color", typos, emoji and CJK all reach the model as bytes or
  subwords, and decoding gives the input back exactly. Its merges are learnt from the world's text in every
  *trained* phrasing (:func:`subword_corpus`); the held-out templates are left out so that they stay unseen.
* :func:`build_llm_tokenizer` (v4, kept to rebuild the committed model): word-level, one id per synth word;
  any other word is ``<unk>`` (what made "color" cost the v4 model 0.59).
* :func:`build_qformer_vocab` (v4): the text decoder's WordPiece vocab from the synth words. v5 keeps the
  released BERT-uncased vocab for the text decoder instead
  (:func:`llamavid.model.processing_llamavid.load_qformer_tokenizer` without a folder).

``tokenizers`` and ``transformers`` are imported inside the builders, so ``llamavid.synth`` stays numpy-only to
import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llamavid.errors import InvalidInputError
from llamavid.synth.dataset import QUESTION_TYPES, generate_items
from llamavid.synth.world import BACKGROUNDS, COLOURS, NAMES, QUADRANTS, SHAPES, SIZES, WORDS

SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>")
"""The v4 word-level tokenizer's special tokens (ids 0-3)."""

SUBWORD_SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "</s>", "<pad>")
"""The byte-level tokenizer's special tokens (ids 0-2); no ``<unk>``: every byte has a token."""

DEFAULT_SUBWORD_VOCAB = 1024
"""Subword vocabulary size: 256 bytes + 3 specials + merges. At 1,024 every answer option of every question type
is a single token after a space (measured; :func:`build_subword_tokenizer`), at 256 x 1,024 = 0.26 M embedding
parameters for a 256-wide LLM."""

_WORD_RE = re.compile(r"\w+|[^\w\s]")


def _template_texts() -> list[str]:
    from llamavid.model.conversation import _VICUNA_SYSTEM, build_long_video_message

    return [_VICUNA_SYSTEM, "USER: ASSISTANT:", build_long_video_message([""], "")]


def synth_corpus(samples: int = 400) -> list[str]:
    """Every kind of text the synthetic world produces in its canonical wording (questions, answers, captions,
    subtitles, templates): the v4 tokenizers' corpus, unchanged."""
    texts = _template_texts()
    texts += [" ".join(SHAPES + COLOURS + BACKGROUNDS + SIZES + WORDS + NAMES + QUADRANTS)]
    texts += [" ".join(options) for options in QUESTION_TYPES.values()]
    for kind in ("image_qa", "video_qa", "text_qa", "image_caption", "video_caption"):
        for item in generate_items("train", samples, seed=99, kind=kind):
            texts += [item.question, item.answer]
    for item in generate_items("train", 40, seed=99, kind="stage3", episode_frames=200):
        texts += [item.question, item.answer]
        texts += [cue.text for cue in item.media.subtitles]
    return texts


def subword_corpus(samples: int = 400, varied_seeds: tuple[int, ...] = (99, 98, 97)) -> list[str]:
    """:func:`synth_corpus` plus the world's questions in the ``"varied"`` phrasing (train templates with
    American spellings, polite and terse forms, typos), ``samples`` items per kind and seed.

    Held-out templates are *not* included: a phrasing that is never trained is not learnt by the tokenizer
    either. Deterministic (fixed seeds, fixed order).
    """
    texts = synth_corpus(samples)
    for seed in varied_seeds:
        items = [
            item
            for kind in ("image_qa", "video_qa", "text_qa")
            for item in generate_items(
                "train", samples, seed=seed, kind=kind, phrasing="varied", turns=(1, 2)
            )
        ]
        items += generate_items("train", 60, seed=seed, kind="long_qa", episode_frames=60, phrasing="varied")
        for item in items:
            # As the LLM reads them (the synth_v1 roles), so the roles' words are learnt as often as they occur.
            for turn in [*item.earlier_turns, {"question": item.question, "answer": item.answer}]:
                texts.append(f"USER: {turn['question']} ASSISTANT: {turn['answer']}</s>")
    # Captions in American spelling too (answers stay British, but people type "gray").
    captions = [t for t in texts if "background" in t and ("grey" in t or "colour" in t)]
    texts += [t.replace("grey", "gray").replace("colour", "color") for t in captions]
    return texts


def build_subword_tokenizer(
    out_dir: Path | None, corpus: Iterable[str], vocab_size: int = DEFAULT_SUBWORD_VOCAB
) -> Any:
    """A byte-level BPE LLM tokenizer learnt from ``corpus``, saved as a transformers fast tokenizer.

    Byte-level (as GPT-2 and Qwen): text is split into words (a space stays attached to the word after it, so
    ``" down"`` is one token) and every word is encoded from its UTF-8 bytes, each of which is in the base
    vocabulary. Hence no unknown token exists and ``decode(encode(text)) == text`` for every string. Special
    tokens: ``<s>`` (0), ``</s>`` (1), ``<pad>`` (2); no BOS is added by the tokenizer (the processor adds it).

    Args:
        out_dir: where ``tokenizer.json`` and ``tokenizer_config.json`` go; ``None`` keeps it in memory.
        corpus: training texts (:func:`subword_corpus`), duplicates included (merges follow frequencies).
        vocab_size: total size including the 256 bytes and the specials (at least 259).

    Returns:
        The ``PreTrainedTokenizerFast``.

    Raises:
        InvalidInputError: on a vocabulary smaller than bytes + specials or an empty corpus.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = 256 + len(SUBWORD_SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise InvalidInputError(f"vocab_size={vocab_size} is below the {minimum} bytes and special tokens.")
    texts = list(corpus)  # frequencies matter: duplicates stay
    if not texts:
        raise InvalidInputError("the tokenizer corpus is empty.")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SUBWORD_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,  # exact round trips: "a ." stays "a ."
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_llm_tokenizer(out_dir: Path, corpus: Iterable[str]) -> Any:
    """The v4 word-level tokenizer (one id per synth word or punctuation mark) saved as ``tokenizer.json``.

    Why (v4): the answers are single words; one token per word keeps sequences short (long videos are ~2 tokens
    per frame plus subtitles) and makes exact-match answers a 1-2 step decode. Unknown words map to ``<unk>``;
    v5 uses :func:`build_subword_tokenizer` instead.
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
    """The v4 text-decoder WordPiece vocab: specials, every lower-cased synth word whole, then characters."""
    from llamavid.model.processing_llamavid import load_qformer_tokenizer

    words = sorted({w for text in corpus for w in _WORD_RE.findall(text.lower())})
    chars = sorted({c for w in words for c in w})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tokens += [c for c in chars if c not in tokens] + ["##" + c for c in chars]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    tokenizer = load_qformer_tokenizer(out_dir)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


__all__ = [
    "DEFAULT_SUBWORD_VOCAB",
    "SPECIAL_TOKENS",
    "SUBWORD_SPECIAL_TOKENS",
    "build_llm_tokenizer",
    "build_qformer_vocab",
    "build_subword_tokenizer",
    "subword_corpus",
    "synth_corpus",
]
