"""Peak memory of `llamavid convert` on a synthetic 4-shard checkpoint in the official layout.

The converter streams one input file at a time; its peak *anonymous* memory (heap, not the page cache of
memory-mapped inputs) should stay near one input shard, however many shards there are. This script writes a
synthetic official checkpoint whose LLM layers make each ``.bin`` shard about ``--shard-mb`` MB, converts it in a
fresh subprocess and reports that subprocess's peak RssAnon (sampled every 2 ms) and VmHWM over its baseline
after imports, as a ratio to the largest input file.

Run: ``PYTHONPATH=src python benchmarks/convert.py --shard-mb 150``. Record hardware, commit and numbers in
``benchmarks/README.md`` when they change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "model"))
from official_layout import (  # noqa: E402
    TinySizes,
    eva_state_dict,
    official_config,
    official_state_dict,
    write_official_folder,
)

CHILD = r"""
import json, sys, threading, time
from pathlib import Path

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0

from llamavid.model.convert_original_checkpoint import convert  # imports done: baseline from here
base_anon, base_hwm = status("RssAnon"), status("VmHWM")
peak = [base_anon]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.002)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
args = json.loads(sys.argv[1])
start = time.perf_counter()
convert(args["folder"], args["eva"], args["out"], bert_tokenizer_folder=args["bert"], save_processor=False,
        vision_overrides=args["vision"], qformer_overrides=args["qformer"])
seconds = time.perf_counter() - start
stop.set(); thread.join()
print(json.dumps({"peak_anon": peak[0] - base_anon, "hwm": status("VmHWM") - base_hwm, "seconds": seconds}))
"""


def build(root: Path, shard_mb: int, shards: int) -> dict:
    """A checkpoint whose LLM layers are wide enough that each of `shards` files is about `shard_mb` MB."""
    # LLM layers dominate: 4*h*h (attention) + 3*h*mlp (MLP) floats per layer, mlp = 2h.
    width = 512
    per_layer = (4 * width * width + 3 * width * 2 * width) * 4
    layers = max(shards, round(shards * shard_mb * 1e6 / per_layer))
    sizes = TinySizes(llm_width=width, llm_mlp=2 * width, llm_layers=layers, llm_heads=8)
    folder = root / "llama-vid-synthetic"
    write_official_folder(folder, official_state_dict(sizes), official_config(sizes), num_shards=shards)
    torch.save(eva_state_dict(sizes), root / "eva_vit_g.pth")
    return {
        "folder": str(folder),
        "eva": str(root / "eva_vit_g.pth"),
        "out": str(root / "converted"),
        "bert": str(ROOT / "tests" / "assets" / "tiny_bert_tokenizer"),
        "vision": sizes.vision_overrides,
        "qformer": sizes.qformer_overrides,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-mb", type=int, default=150)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = build(root, args.shard_mb, args.shards)
        inputs = sorted(Path(spec["folder"]).glob("pytorch_model-*.bin")) + [Path(spec["eva"])]
        largest = max(path.stat().st_size for path in inputs)
        total = sum(path.stat().st_size for path in inputs)
        result = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(spec)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        stats = json.loads(result.stdout.strip().splitlines()[-1])
    mb = 1e6
    print(f"input files: {len(inputs)}, total {total / mb:.0f} MB, largest {largest / mb:.0f} MB")
    print(f"conversion time: {stats['seconds']:.1f} s")
    print(
        f"peak anonymous RSS over baseline: {stats['peak_anon'] / mb:.0f} MB "
        f"= {stats['peak_anon'] / largest:.2f} x largest input file"
    )
    print(
        f"VmHWM over baseline (includes mapped file pages): {stats['hwm'] / mb:.0f} MB "
        f"= {stats['hwm'] / largest:.2f} x largest input file"
    )


if __name__ == "__main__":
    main()
