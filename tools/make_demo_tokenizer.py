"""Regenerate the demo/test LLM tokenizer (deterministic): a 512-piece sentencepiece BPE with byte fallback.

Run: ``.venv/bin/python tools/make_demo_tokenizer.py``. The output ``src/llamavid/assets/demo_tokenizer`` ships
in the package (the random demo model and the tests use it); nothing trains tokenizers at run time.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import sentencepiece as spm

OUT = Path(__file__).resolve().parents[1] / "src" / "llamavid" / "assets" / "demo_tokenizer"

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


def main() -> None:
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
