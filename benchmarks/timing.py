"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``run`` after one warm-up call, and the last call's result."""
    result = run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def parse_arguments(description: str) -> argparse.Namespace:
    """``--repeats``, ``--threads`` (applied to torch here) and ``--json``, the options these benchmarks share."""
    import torch

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs after one warm-up (median reported)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args
