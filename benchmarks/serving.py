"""Serving throughput and latency of the OpenAI-compatible server, batching on vs off.

    PYTHONPATH=src python benchmarks/serving.py [--model FOLDER] [--requests 32] [--max-tokens 16]

Starts the server in-process on 127.0.0.1, sends greedy requests about one generated 8-second video (sent
as a data: URL; the server's media cache makes repeats skip decoding, as a multi-turn client would) from
1, 4 and 16 concurrent clients, and prints requests/s and p50/p95 latency for `--max-batch-size 16` vs 1.
Without --model it uses the random tiny model (widths 64), so the numbers measure the serving path, not a
real LLM. Record hardware, dtype, batch size, frame count and commit with the results.
"""

from __future__ import annotations

import argparse
import base64
import platform
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from llamavid.demo import write_demo_video
from llamavid.inference.engine import Engine
from llamavid.serve.app import RunningServer, ServerConfig, create_app


def run_load(url: str, body: dict, clients: int, requests: int) -> tuple[float, list[float]]:
    """`requests` POSTs spread over `clients` threads; returns (wall seconds, per-request latencies)."""
    latencies: list[float] = []

    def one(_: int) -> None:
        started = time.perf_counter()
        response = httpx.post(url, json=body, timeout=600)
        response.raise_for_status()
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    return time.perf_counter() - started, latencies


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="llamavid folder (default: random tiny model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    engine = (
        Engine.from_pretrained(args.model, device=args.device)
        if args.model
        else Engine.random(0, args.device)
    )
    with tempfile.TemporaryDirectory() as folder:
        video = write_demo_video(Path(folder) / "clip.mp4", seconds=8)
        data = base64.b64encode(video.read_bytes()).decode()
    body = {
        "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}},
            {"type": "text", "text": "Describe the video."}]}],
        "temperature": 0,
        "max_tokens": args.max_tokens,
    }  # fmt: skip
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"# {engine.name} on {engine.device} ({engine.dtype}), torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, commit {commit}; 8 frames (16 visual tokens), "
        f"{args.max_tokens} new tokens, {args.requests} requests per row"
    )
    print(f"{'clients':>7} {'batching':>8} {'req/s':>7} {'p50 s':>7} {'p95 s':>7}")
    results: dict[tuple[int, bool], float] = {}
    for batching in (False, True):
        config = ServerConfig(max_batch_size=16 if batching else 1, batch_wait_ms=10, max_queue=256)
        with RunningServer(create_app(engine, config)) as server:
            url = f"{server.url}/v1/chat/completions"
            run_load(url, body, 1, 2)  # warm-up: media cache, first-call overheads
            for clients in args.clients:
                seconds, latencies = run_load(url, body, clients, args.requests)
                results[clients, batching] = args.requests / seconds
                print(
                    f"{clients:>7} {'on' if batching else 'off':>8} {args.requests / seconds:>7.2f} "
                    f"{statistics.median(latencies):>7.3f} {percentile(latencies, 95):>7.3f}"
                )
    for clients in args.clients:
        print(
            f"batching speed-up at {clients:>2} clients: {results[clients, True] / results[clients, False]:.2f}x"
        )


if __name__ == "__main__":
    main()
