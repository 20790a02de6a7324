"""End-to-end check of the lmms-eval plugin with the REAL lmms-eval (run inside .venv-lmms).

Builds a random tiny LLaMA-VID, a 4-document local task (images generated on the fly, a JSON dataset, no hub),
and runs ``python -m lmms_eval --model llamavid ... --batch_size 2``. Passing means: the entry point is found,
the chat path batches documents, answers come back and lmms-eval aggregates a metric.
Usage: .venv-lmms/bin/python tools/lmms_eval_smoke.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

UTILS = """
from PIL import Image


def doc_to_visual(doc):
    return [Image.new("RGB", (32, 32), doc["color"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_messages(doc, lmms_eval_specific_kwargs=None):
    return [{"role": "user", "content": [{"type": "image", "url": doc_to_visual(doc)[0]},
                                         {"type": "text", "text": doc["question"]}]}]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
"""

TASK = """task: llamavid_smoke
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_messages: !function utils.doc_to_messages
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  until: ["</s>"]
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def main() -> int:
    from llamavid.demo import build_random_demo_model

    with tempfile.TemporaryDirectory(prefix="llamavid-lmms-") as folder:
        root = Path(folder)
        model, processor = build_random_demo_model(0)
        model.save_pretrained(root / "model")
        processor.save_pretrained(root / "model")
        data = root / "data.jsonl"
        rows = [
            {"question": "What color is the image?", "color": c, "answer": c}
            for c in ("red", "blue", "green", "red")
        ]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tasks = root / "tasks"
        tasks.mkdir()
        (tasks / "utils.py").write_text(UTILS)
        (tasks / "llamavid_smoke.yaml").write_text(TASK.format(data=data))
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        command = [
            sys.executable,
            "-m",
            "lmms_eval",
            "--model",
            "llamavid",
            "--model_args",
            f"pretrained={root / 'model'}",
            "--tasks",
            "llamavid_smoke",
            "--include_path",
            str(tasks),
            "--batch_size",
            "2",
            "--output_path",
            str(root / "out"),
            "--log_samples",
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
        sys.stdout.write(result.stdout[-4000:])
        sys.stderr.write(result.stderr[-6000:])
        if result.returncode != 0 or "exact_match" not in result.stdout:
            sys.stderr.write(f"lmms-eval smoke FAILED (exit {result.returncode})\n")
            return 1
    sys.stdout.write("lmms-eval smoke OK\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
