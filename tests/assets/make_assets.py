"""Regenerate the tiny test assets (deterministic): a sentencepiece LLM tokenizer trained on a small corpus and a
small BERT WordPiece vocab for tiny Q-Former checkpoints.

Run: ``.venv/bin/python tests/assets/make_assets.py``. The output folder ``tests/assets/tiny_llm_tokenizer`` is
committed; tests never train tokenizers themselves.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import sentencepiece as spm

HERE = Path(__file__).resolve().parent

WORDS = (
    "a an the is are was what which who where when how many color colour shape red green blue yellow purple "
    "orange white black circle square triangle star left right up down top bottom middle moves moving first "
    "last before after appears disappears video image frame scene movie says said character answer question "
    "one two three four five six seven eight nine ten zero yes no there in on of to and with describe briefly "
    "object objects count number big small large tiny"
).split()


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
    out = HERE / "tiny_bert_tokenizer"
    out.mkdir(exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"?.,'!:;-()\"", *digits, *letters]
    tokens += ["##" + c for c in letters + digits]
    tokens += sorted(set(WORDS) - set(tokens))
    (out / "vocab.txt").write_text("\n".join(tokens) + "\n")


def main() -> None:
    write_tiny_bert_vocab()
    out = HERE / "tiny_llm_tokenizer"
    out.mkdir(exist_ok=True)
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
