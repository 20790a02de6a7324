"""How long the console script takes: ``--help`` and ``ask`` on a short clip, against ``python -c pass``.

Every command is run as a fresh process (what a user waits for), several times; the median wall time and its
ratio to the bare interpreter start are printed in one table. ``ask`` runs twice over: cold (``--no-cache``:
decode + encode + answer) and warm (features from the feature cache, as after ``llamavid ingest`` or an
earlier ``ask``). The embedded tiny model answers a 13-second clip of its synthetic world.

Run: ``python benchmarks/cli_startup.py [--repeat 5] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (median reported)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)

    from llamavid.demo import synthetic_question_clip, write_clip

    with tempfile.TemporaryDirectory(prefix="llamavid-startup-") as folder:
        frames, question, _ = synthetic_question_clip(0)
        clip = write_clip(frames, Path(folder) / "clip.mkv")
        env = {**os.environ, "LLAMAVID_CACHE": str(Path(folder) / "cache"), "HF_HUB_OFFLINE": "1"}
        cli = [sys.executable, "-m", "llamavid.cli.main"]
        ask = [*cli, "ask", str(clip), question, "--temperature", "0", "--quiet"]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "llamavid --help": [*cli, "--help"],
            "llamavid ask --help": [*cli, "ask", "--help"],
            "llamavid ask (cold, --no-cache)": [*ask, "--no-cache"],
            "llamavid ask (warm, cached features)": ask,
        }
        wall(ask, env)  # fills the cache for the warm rows
        rows = []
        for name, command in commands.items():
            times = [wall(command, env) for _ in range(args.repeat)]
            rows.append({"command": name, "median_s": statistics.median(times), "min_s": min(times)})
    base = rows[0]["median_s"]
    print(f"{len(frames)}-frame clip, {args.repeat} runs each, {os.cpu_count()} CPUs")
    print(f"{'command':40} {'median s':>9} {'min s':>7} {'x python':>9}")
    for row in rows:
        row["ratio_to_python"] = row["median_s"] / base
        print(f"{row['command']:40} {row['median_s']:9.2f} {row['min_s']:7.2f} {row['ratio_to_python']:9.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
