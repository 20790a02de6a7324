"""Regenerate the demo/test LLM tokenizer (deterministic): a 512-piece sentencepiece BPE with byte fallback, and a
small BERT WordPiece vocab (``tests/assets/tiny_bert_tokenizer``) that keeps tiny Q-Former checkpoints small.

Run: ``.venv/bin/python tools/make_demo_tokenizer.py``. The output ``src/llamavid/assets/demo_tokenizer`` ships
in the package (the random demo model and the tests use it); nothing trains tokenizers at run time.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "llamavid" / "assets" / "demo_tokenizer"
TEST_ASSETS = ROOT / "tests" / "assets"

WORDS = [
    "a",
    "an",
    "the",
    "is",
    "are",
    "was",
    "what",
    "which",
    "who",
    "where",
    "when",
    "how",
    "many",
    "color",
    "colour",
    "shape",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "circle",
    "square",
    "triangle",
    "star",
    "left",
    "right",
    "up",
    "down",
    "top",
    "bottom",
    "middle",
    "moves",
    "moving",
    "first",
    "last",
    "before",
    "after",
    "appears",
    "disappears",
    "video",
    "image",
    "frame",
    "scene",
    "movie",
    "says",
    "said",
    "character",
    "answer",
    "question",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "zero",
    "yes",
    "no",
    "there",
    "in",
    "on",
    "of",
    "to",
    "and",
    "with",
    "describe",
    "briefly",
    "object",
    "objects",
    "count",
    "number",
    "big",
    "small",
    "large",
    "tiny",
]


def corpus() -> list[str]:
    lines = [
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions.",
        "USER: ASSISTANT:",
    ]
    for first, second, third in itertools.islice(itertools.product(WORDS, repeat=3), 0, 40000, 7):
        lines.append(f"{first} {second} {third}?")
    return lines


def write_tiny_bert_vocab() -> None:
    """A WordPiece vocab small enough for tiny Q-Former checkpoints: special tokens, punctuation, single letters
    (so every lowercase word tokenises) and the corpus words. The real one is bert-base-uncased (30,522)."""
    out = TEST_ASSETS / "tiny_bert_tokenizer"
    out.mkdir(exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"?.,'!:;-()\"", *digits, *letters]
    tokens += ["##" + c for c in letters + digits]
    tokens += sorted(set(WORDS) - set(tokens))
    (out / "vocab.txt").write_text("\n".join(tokens) + "\n")


def main() -> None:
    write_tiny_bert_vocab()
    out = OUT
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        vocab_size=512,
        normalization_rule_name="identity",  # LLaMA applies no normalisation either
        add_dummy_prefix=True,
        model_type="bpe",
        byte_fallback=True,  # any text tokenises, as with the LLaMA tokenizer
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        num_threads=1,
        seed_sentencepiece_size=10000,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())


if __name__ == "__main__":
    main()
