"""Serving throughput and latency: `llamavid serve` (batching off / on) and vLLM with the llamavid plugin.

    PYTHONPATH=src python benchmarks/serving.py [--model FOLDER] [--requests 32] [--max-tokens 16] [--vllm]

Starts each server on 127.0.0.1, sends greedy streamed requests about one generated 8-second video (sent as a
data: URL; `llamavid serve`'s media cache and vLLM's feature cache make repeats skip encoding, as a multi-turn
client would) from 1, 4 and 16 concurrent clients, and prints requests/s, p50/p95 latency and p50 time to first
token for `llamavid serve --max-batch-size 1` and `16`, then (with --vllm) for vLLM serving the same folder from
.venv-vllm (`make vllm-venv`). Without --model the llamavid rows use the random tiny model (widths 64) and vLLM
is skipped (it needs a folder). Record hardware, dtype, batch size, frame count and commit with the results.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from llamavid.demo import write_demo_video
from llamavid.inference.engine import Engine
from llamavid.serve.app import RunningServer, ServerConfig, create_app

ROOT = Path(__file__).resolve().parents[1]


def run_load(url: str, body: dict, clients: int, requests: int) -> tuple[float, list[float], list[float]]:
    """`requests` streamed POSTs over `clients` threads: (wall seconds, latencies, times to first token)."""
    latencies: list[float] = []
    first_tokens: list[float] = []

    def one(_: int) -> None:
        started = time.perf_counter()
        first = None
        with httpx.stream("POST", url, json={**body, "stream": True}, timeout=600) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if first is None and line.startswith("data: ") and line != "data: [DONE]":
                    delta = json.loads(line[6:])["choices"]
                    if delta and delta[0].get("delta", {}).get("content"):
                        first = time.perf_counter() - started
        latencies.append(time.perf_counter() - started)
        first_tokens.append(first if first is not None else latencies[-1])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    return time.perf_counter() - started, latencies, first_tokens


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


@contextmanager
def vllm_server(model: str, threads: int):
    """vLLM's OpenAI server from .venv-vllm on a free port (the plugin registers LLaMA-VID); yields its URL."""
    python = Path(os.environ.get("LLAMAVID_VLLM_VENV", ROOT / ".venv-vllm")) / "bin" / "python"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": str(threads)}
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
        "--max-num-seqs", "16", "--media-io-kwargs", json.dumps({"video": {"video_backend": "llamavid"}}),
    ]  # fmt: skip
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server did not start; log: {log.name}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="llamavid folder (default: random tiny model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--vllm", action="store_true", help="also measure vLLM serving --model (needs .venv-vllm)"
    )
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
    print(f"{'clients':>7} {'server':>22} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'TTFT p50 s':>10}")
    results: dict[tuple[int, str], float] = {}

    def measure(name: str, url: str, model: str) -> None:
        request = {**body, "model": model}
        run_load(url, request, 1, 2)  # warm-up: media/feature cache, first-call overheads
        for clients in args.clients:
            seconds, latencies, first = run_load(url, request, clients, args.requests)
            results[clients, name] = args.requests / seconds
            print(
                f"{clients:>7} {name:>22} {args.requests / seconds:>7.2f} {statistics.median(latencies):>7.3f} "
                f"{percentile(latencies, 95):>7.3f} {statistics.median(first):>10.3f}"
            )

    for batching in (False, True):
        config = ServerConfig(max_batch_size=16 if batching else 1, batch_wait_ms=10, max_queue=256)
        with RunningServer(create_app(engine, config)) as server:
            measure(
                f"llamavid batch {16 if batching else 1}", f"{server.url}/v1/chat/completions", engine.name
            )
    if args.vllm and args.model:
        with vllm_server(str(args.model), torch.get_num_threads()) as url:
            measure("vllm (plugin)", f"{url}/v1/chat/completions", str(args.model))
    for clients in args.clients:
        line = f"at {clients:>2} clients: batching {results[clients, 'llamavid batch 16'] / results[clients, 'llamavid batch 1']:.2f}x"
        if (clients, "vllm (plugin)") in results:
            line += f", vLLM vs llamavid batch 16 {results[clients, 'vllm (plugin)'] / results[clients, 'llamavid batch 16']:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
