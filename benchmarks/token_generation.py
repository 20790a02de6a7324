"""Benchmark LLaMA-VID token generation: every frame -> 1 context token + n content tokens.

Compares the vectorised path (one `LlamaVidModel.get_visual_tokens` call for T frames of one video and
Q questions, i.e. Q blocks over one media item) with a per-frame, per-question loop (one call per
(frame, question) pair), at two sizes:

* ``tiny``: the test-suite config (vision/Q-Former/LLM width 32, 2 layers, 4 queries, 56-px frames).
* ``spec``: the released widths that token generation touches: 1408-wide EVA features at 224 px
  (N = 256 patches + CLS), the BERT-base Q-Former (768 wide, 12 layers, 12 heads, 32 queries,
  vocab 30523) and a 4096-wide LLM for the projectors. The EVA tower and the LLM body do not run here,
  so they are built shrunk (1 layer each; see `spec_config_kwargs`) to keep memory modest.

Inputs are random precomputed ``vision_features`` of shape ``(T, 1+N, C)``, so the vision tower is not timed.
Each variant runs in a fresh subprocess, which makes its peak-RSS reading its own: the kernel's
peak-RSS counter (``VmHWM``) is reset after the model and inputs are built and read after the runs.

``--variants previous`` adds the path before per-frame sharing (`LlamaVidModel.pairwise_context_tokens`: the
Q-Former runs per (frame, question) pair, recomputing a frame's cross-attention keys/values for each question).
With it, the report adds a FLOP count per frame for both paths (`context_token_flops`), the FLOP-proportional
ideal time of the new path, and the achieved GFLOP/s against the peak of a large fp32 matmul measured in the same
run (`matmul_peak_gflops`, at the start and at the end).

Run: ``python benchmarks/token_generation.py --sizes tiny,spec --json results.json``
FLOP comparison: ``python benchmarks/token_generation.py --sizes spec --questions 1,4 --variants vectorised,previous
--chunks 64``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

# Real-looking questions; tokenised together (padded) by the BERT-uncased Q-Former tokenizer.
QUESTIONS = (
    "What is happening in this video?",
    "How many people appear in the scene?",
    "What colour is the car that drives past?",
    "Where does this video take place?",
)


# Model sizes -----------------------------------------------------------------------------------------------------
def tiny_config_kwargs() -> dict[str, Any]:
    """The test suite's tiny model (`llamavid.testing`); the LLM never runs here, so its vocabulary is 99."""
    from llamavid.testing import tiny_config_kwargs as tiny

    return tiny(vocab_size=99)


def spec_config_kwargs() -> dict[str, Any]:
    """Released widths for everything token generation runs; shrunk depth for the parts it does not run.

    Token generation uses the Q-Former (full BERT-base size here), `vlm_att_*` and `mm_projector`
    (mlp2x_gelu 1408 -> 4096 -> 4096, value projector 1408 -> 4096). The EVA tower keeps its width
    (the Q-Former's cross-attention width follows it) but only 1 block, since features are precomputed.
    The LLM keeps hidden 4096 (the projectors' output width) with 1 layer, intermediate 1024 and vocab 1000:
    `LlamaVidForConditionalGeneration` always builds one, but token generation never calls it.
    """
    return dict(
        vision_config=dict(
            hidden_size=1408,
            intermediate_size=6144,
            num_hidden_layers=1,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        qformer_config=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            vocab_size=30523,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=1000,
            hidden_size=4096,
            intermediate_size=1024,
            num_hidden_layers=1,
            num_attention_heads=32,
            num_key_value_heads=32,
        ),
        num_query=32,
        compress_type="mean",
        mm_projector_type="mlp2x_gelu",
    )


SIZES = {"tiny": tiny_config_kwargs, "spec": spec_config_kwargs}
SIZE_NOTES = {
    "tiny": "vision/Q-Former/LLM width 32, 2 layers, 4 queries, N=16 patches + CLS",
    "spec": (
        "EVA width 1408, N=256 patches + CLS (224 px); Q-Former BERT-base (768, 12 layers, 12 heads, 32 queries, "
        "vocab 30523); projectors 1408->4096 (mm_projector mlp2x_gelu, value projector). EVA tower built with 1 "
        "block and LLM built with 1 layer, intermediate 1024, vocab 1000: neither runs in token generation"
    ),
}


# One variant, run in its own process ------------------------------------------------------------------------------
@dataclass
class VariantSpec:
    """Everything a worker process needs to time one variant."""

    size: str
    variant: str  # "vectorised", "previous" (pairwise Q-Former, before per-frame sharing) or "loop"
    frames: int
    questions: int
    frame_chunk_size: int
    repeats: int
    warmup_frames: int  # vectorised: frames in the warm-up call; loop: warm-up is one pair
    loop_pairs: int  # loop: number of (frame, question) pairs timed; <= frames * questions
    device: str
    threads: int
    seed: int
    tokens_path: str


@dataclass
class VariantResult:
    """Timings and memory of one variant; `tokens_path` holds the tokens for the equality check."""

    size: str
    variant: str
    frame_chunk_size: int
    pairs_timed: int
    repeats: int
    seconds: list[float] = field(default_factory=list)
    median_s: float = 0.0
    peak_rss_growth_mib: float | None = None
    peak_rss_mib: float = 0.0
    peak_device_mib: float | None = None
    cpu_utilisation: float = (
        0.0  # process CPU seconds / wall seconds over the timed repeats; ~threads if uncontended
    )
    parameters_m: float = 0.0
    tokens_path: str = ""


def _status_kib(name: str) -> int | None:
    """A ``VmXXX`` field of /proc/self/status in KiB (Linux only)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so it covers only what runs next (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _select_loop_pairs(frames: int, questions: int, count: int) -> list[tuple[int, int]]:
    """``count`` (frame, question) pairs: all questions of evenly spaced frames (all pairs if count covers them)."""
    if count >= frames * questions:
        frame_ids = list(range(frames))
    else:
        step = max(1, count // questions)
        frame_ids = torch.linspace(0, frames - 1, step).round().long().unique().tolist()
    return [(f, q) for f in frame_ids for q in range(questions)]


def run_variant(spec: VariantSpec) -> VariantResult:
    """Build the model and inputs, then time `spec.variant`; called in a fresh process per variant."""
    from llamavid import LlamaVidConfig, LlamaVidForConditionalGeneration
    from llamavid.model.processing_llamavid import load_qformer_tokenizer

    torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    torch.manual_seed(spec.seed)
    config = LlamaVidConfig(**SIZES[spec.size](), frame_chunk_size=spec.frame_chunk_size)
    model = LlamaVidForConditionalGeneration(config).eval().to(device=device, dtype=torch.float32).model
    if spec.variant == "previous":
        model.get_context_tokens = model.pairwise_context_tokens  # type: ignore[method-assign]
    batched = spec.variant in ("vectorised", "previous")
    parameters_m = sum(p.numel() for p in model.parameters()) / 1e6

    tokenizer = load_qformer_tokenizer()
    texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(spec.questions)]  # cycles past 4 questions
    questions = tokenizer(texts, padding=True, return_tensors="pt").to(device)
    ids, mask = questions["input_ids"], questions["attention_mask"]
    generator = torch.Generator().manual_seed(spec.seed + 1)
    width = config.vision_config.hidden_size
    # (T, 1+N, C): CLS + patches, as EVA emits them.
    features = torch.randn(spec.frames, config.num_patches + 1, width, generator=generator).to(device)
    tokens_per_frame = config.tokens_per_frame()

    one, zero = torch.tensor([1], device=device), torch.tensor([0], device=device)
    block_media = torch.zeros(spec.questions, dtype=torch.long, device=device)
    block_question = torch.arange(spec.questions, device=device)

    def vectorised(frames: int) -> torch.Tensor:
        # Q blocks over one video of `frames` frames: tokens (Q * T * (1+n), D), block after block.
        return model.get_visual_tokens(
            features[:frames], torch.tensor([frames], device=device), ids, mask, block_media, block_question
        ).tokens

    pairs = _select_loop_pairs(spec.frames, spec.questions, spec.loop_pairs)

    def loop() -> torch.Tensor:
        out = [
            model.get_visual_tokens(
                features[f : f + 1], one, ids[q : q + 1], mask[q : q + 1], zero, zero
            ).tokens
            for f, q in pairs
        ]
        return torch.stack(out)  # (P, 1+n, D)

    result = VariantResult(
        size=spec.size,
        variant=spec.variant,
        frame_chunk_size=spec.frame_chunk_size,
        pairs_timed=spec.frames * spec.questions if batched else len(pairs),
        repeats=spec.repeats,
        parameters_m=parameters_m,
        tokens_path=spec.tokens_path,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline_kib = _status_kib("VmRSS")
    reset = _reset_peak_rss()
    with torch.inference_mode():
        if batched:
            vectorised(spec.warmup_frames)
        else:
            model.get_visual_tokens(features[:1], one, ids[:1], mask[:1], zero, zero)
        _sync(device)
        tokens = None
        cpu_start = time.process_time()
        for _ in range(spec.repeats):
            start = time.perf_counter()
            tokens = vectorised(spec.frames) if batched else loop()
            _sync(device)
            result.seconds.append(time.perf_counter() - start)
        result.cpu_utilisation = (time.process_time() - cpu_start) / sum(result.seconds)
    peak_kib = _status_kib("VmHWM")
    max_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; whole-process peak
    result.peak_rss_mib = max_rss_kib / 1024
    if reset and peak_kib is not None and baseline_kib is not None:
        result.peak_rss_growth_mib = (peak_kib - baseline_kib) / 1024
    if device.type == "cuda":
        result.peak_device_mib = torch.cuda.max_memory_allocated(device) / 2**20
    result.median_s = statistics.median(result.seconds)

    if tokens is None:
        raise RuntimeError("no timed repeat ran; repeats must be >= 1")
    if batched:
        # (Q*T*(1+n), D) -> (T, Q, 1+n, D), indexed [frame, question] like the loop's pairs.
        grid = tokens.reshape(spec.questions, spec.frames, tokens_per_frame, -1).transpose(0, 1)
        torch.save({"grid": grid.cpu()}, spec.tokens_path)
    else:
        torch.save({"pairs": torch.tensor(pairs), "tokens": tokens.cpu()}, spec.tokens_path)
    return result


# FLOP model ------------------------------------------------------------------------------------------------------
def _matmul(rows: int, inner: int, cols: int) -> float:
    """FLOPs of a ``(rows, inner) @ (inner, cols)`` product (a multiply and an add per term)."""
    return 2.0 * rows * inner * cols


def context_token_flops(
    config: Any, questions: int, text_length: int, frames: int
) -> dict[str, dict[str, float]]:
    """Matmul FLOPs per frame of the context tokens for P questions, before and after per-frame sharing.

    Counts every matrix product the two paths run (LayerNorms, softmax, GELU and the residual adds are left out:
    together well under 1% at the released widths). `previous` runs the Q-Former per (frame, question) pair;
    `shared` computes each frame's cross-attention keys/values once, the layer-0 self-attention and question
    feed-forward once per question per call (spread over the `frames` frames of the call) and skips the last
    layer's question-token rows, which nothing reads. Content tokens are per frame on both paths.

    Args:
        config: the `LlamaVidConfig`.
        questions: P, the questions about every frame.
        text_length: L, the padded question length the Q-Former reads.
        frames: T, frames in the call (spreads the once-per-question work).

    Returns:
        ``{"previous": {part: FLOPs}, "shared": {part: FLOPs}}`` per frame, with a ``"total"`` entry each.
    """
    hidden, inner = config.qformer.hidden_size, config.qformer.intermediate_size
    layers, frequency = config.qformer.num_hidden_layers, config.qformer.cross_attention_frequency
    cross_layers = sum(1 for index in range(layers) if index % frequency == 0)
    width, llm_width, patches = config.vision.hidden_size, config.text.hidden_size, config.num_patches
    visual = patches + 1 if config.qformer_sees_cls else patches  # N': what the Q-Former cross-attends to
    queries = config.num_query
    rows = queries + text_length  # S: self-attention rows

    def self_attention(query_rows: int) -> float:  # Q/K/V projections, scores, weighted sum, output dense
        return (
            _matmul(query_rows, hidden, hidden) * 2
            + _matmul(rows, hidden, hidden) * 2
            + _matmul(query_rows, rows, hidden) * 2
        )

    cross_kv = 2 * _matmul(visual, width, hidden)  # one cross-attention layer's keys and values of one frame
    cross_rest = 2 * _matmul(queries, hidden, hidden) + 2 * _matmul(queries, visual, hidden)
    ffn = 2 * _matmul(1, hidden, inner)  # per row
    per_pair_tail = {
        "query projection (vlm_att_projector)": _matmul(queries, hidden, width),
        "context attention": 2 * _matmul(queries, patches, width),
        "value projection": _matmul(1, width, llm_width),
    }
    per_frame = {
        "key projection": _matmul(patches, width, width),
        "content tokens": _matmul(1, width, llm_width) + _matmul(1, llm_width, llm_width),
    }
    previous = {
        "Q-Former self-attention": questions * layers * self_attention(rows),
        "Q-Former cross-attention K/V": questions * cross_layers * cross_kv,
        "Q-Former cross-attention rest": questions * cross_layers * cross_rest,
        "Q-Former FFN": questions * layers * rows * ffn,
        **{name: questions * value for name, value in per_pair_tail.items()},
        **per_frame,
    }
    # Shared: layer 0's self-attention and question-token FFN once per question per call; the last layer's
    # self-attention computes query rows only (keys/values of all rows) and its FFN the query rows only.
    middle = max(layers - 2, 0)
    self_per_pair = middle * self_attention(rows) + (self_attention(queries) if layers > 1 else 0.0)
    ffn_per_pair = (queries + (layers - 2) * rows + queries) * ffn if layers > 1 else queries * ffn
    shared = {
        "Q-Former self-attention": questions * self_per_pair + questions * self_attention(rows) / frames,
        "Q-Former cross-attention K/V": cross_layers * cross_kv,
        "Q-Former cross-attention rest": questions * cross_layers * cross_rest,
        "Q-Former FFN": questions * ffn_per_pair
        + questions * (text_length * ffn if layers > 1 else 0.0) / frames,
        **{name: questions * value for name, value in per_pair_tail.items()},
        **per_frame,
    }
    for table in (previous, shared):
        table["total"] = sum(table.values())
    return {"previous": previous, "shared": shared}


def matmul_peak_gflops(threads: int, size: int = 2048, seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s of a ``size``-square matmul over about `seconds` (the machine's practical peak)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, _matmul(size, size, size) / (time.perf_counter() - start) / 1e9)
    return best


def flop_report(
    rows: list[dict[str, Any]], args: argparse.Namespace, peaks: list[float]
) -> tuple[str, list[dict]]:
    """Per size and P: FLOPs per frame of both paths, achieved GFLOP/s and the FLOP-proportional ideal."""
    from llamavid import LlamaVidConfig
    from llamavid.model.processing_llamavid import load_qformer_tokenizer

    tokenizer = load_qformer_tokenizer()
    peak = max(peaks)
    lines = [
        f"fp32 matmul peak ({2048}^3, {args.threads} threads): "
        + " / ".join(f"{p:.1f}" for p in peaks)
        + " GFLOP/s (start / end of run); the best is used below",
        "",
        "| size | P | L | path | GFLOP per frame | median s | GFLOP/s | % of peak | ideal s (FLOP-proportional) "
        "| measured / ideal | CPU s | measured / ideal in CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: list[dict] = []
    for size in dict.fromkeys(row["size"] for row in rows):
        config = LlamaVidConfig(**SIZES[size]())
        marginal: dict[str, dict[int, float]] = {"s": {}, "flops": {}, "rate": {}}
        for questions in args.questions:
            by_path = {r["path"]: r for r in rows if r["size"] == size and r["questions"] == questions}
            if "previous" not in by_path or "vectorised" not in by_path:
                continue
            texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(questions)]
            length = tokenizer(texts, padding=True, return_tensors="pt")["input_ids"].shape[1]
            flops = context_token_flops(config, questions, length, args.frames)
            previous_s = by_path["previous"]["median_s"]
            previous_cpu_s = previous_s * by_path["previous"]["cpu_utilisation"]
            for path, key in (("previous", "previous"), ("vectorised", "shared")):
                row = by_path[path]
                total = flops[key]["total"] * args.frames
                rate = total / row["median_s"] / 1e9
                share = flops[key]["total"] / flops["previous"]["total"]
                ideal = previous_s * share
                # CPU seconds (process CPU time) move less than wall time when other jobs share the cores.
                cpu_s = row["median_s"] * row["cpu_utilisation"]
                lines.append(
                    f"| {size} | {questions} | {length} | {'shared (new)' if key == 'shared' else 'previous'} "
                    f"| {flops[key]['total'] / 1e9:.2f} | {row['median_s']:.2f} | {rate:.1f} | {100 * rate / peak:.0f}% "
                    f"| {ideal:.2f} | {row['median_s'] / ideal:.2f} | {cpu_s:.2f} | {cpu_s / (previous_cpu_s * share):.2f} |"
                )
                summary.append(
                    {"size": size, "questions": questions, "text_length": length, "path": key,
                     "flops_per_frame": flops[key], "median_s": row["median_s"], "gflops": rate, "ideal_s": ideal,
                     "cpu_s": cpu_s}
                )  # fmt: skip
            marginal["s"][questions] = by_path["vectorised"]["median_s"]
            marginal["flops"][questions] = flops["shared"]["total"] * args.frames
            marginal["rate"][questions] = flops["previous"]["total"] * args.frames / previous_s
        if len(marginal["s"]) >= 2:
            low, high = min(marginal["s"]), max(marginal["s"])
            extra = high - low
            per_question_s = (marginal["s"][high] - marginal["s"][low]) / extra
            per_question_flops = (marginal["flops"][high] - marginal["flops"][low]) / extra
            floor_s = per_question_flops / marginal["rate"][high]
            lines += [
                "",
                f"{size}: each extra question (P {low} -> {high}) costs {per_question_s:.1f} s measured for "
                f"{per_question_flops / 1e9:.0f} GFLOP; its FLOP floor at the previous path's rate "
                f"({marginal['rate'][high] / 1e9:.1f} GFLOP/s) is {floor_s:.1f} s: {per_question_s / floor_s:.2f}x; "
                f"at the matmul peak it is {per_question_flops / peak / 1e9:.1f} s.",
            ]
    breakdown = [r for r in summary if r["questions"] == max(args.questions)]
    if breakdown:
        parts = list(breakdown[0]["flops_per_frame"])
        lines += ["", "GFLOP per frame by part at P = " + str(max(args.questions)) + ":", ""]
        lines.append("| part | " + " | ".join(f"{r['size']} {r['path']}" for r in breakdown) + " |")
        lines.append("|---|" + "---|" * len(breakdown))
        for part in parts:
            lines.append(
                f"| {part} | "
                + " | ".join(f"{r['flops_per_frame'][part] / 1e9:.3f}" for r in breakdown)
                + " |"
            )
    return "\n".join(lines), summary


# Parent: run the variants, compare, report -----------------------------------------------------------------------
def _spawn(spec: VariantSpec) -> VariantResult:
    """Run one variant in a fresh interpreter so its peak memory is its own."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(spec))]
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{spec.size}/{spec.variant} worker failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        )
    return VariantResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def hardware_info(device: torch.device, threads: int) -> dict[str, Any]:
    """CPU model, core count, library versions and the checkout's commit (read-only git calls)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)

    commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    if git("diff", "--quiet", "HEAD", "--", "src/llamavid").returncode == 1:
        commit += " (+ uncommitted changes under src/llamavid)"
    import transformers

    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "commit": commit,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _max_abs_diff(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    grid = reference["grid"]  # (T, Q, 1+n, D)
    if "grid" in other:
        return (grid - other["grid"]).abs().max().item()
    pairs = other["pairs"]
    return (grid[pairs[:, 0], pairs[:, 1]] - other["tokens"]).abs().max().item()


def benchmark_size(
    size: str, questions: int, args: argparse.Namespace, workdir: Path
) -> list[dict[str, Any]]:
    """Time `args.variants` for one size and question count; return one table row per variant."""
    is_spec = size == "spec"
    repeats = args.spec_repeats if is_spec else args.repeats
    loop_pairs = (
        args.loop_pairs if args.loop_pairs is not None else (64 if is_spec else args.frames * questions)
    )
    total_pairs = args.frames * questions
    # Warm-up: at spec width one chunk's worth of pairs (same kernel shapes) instead of a full ~minute-long pass.
    warmup_frames = max(1, min(args.frames, 64 // questions)) if is_spec else args.frames
    plan = [("vectorised", chunk) for chunk in args.chunks] if "vectorised" in args.variants else []
    plan += [(variant, args.chunks[0]) for variant in ("previous", "loop") if variant in args.variants]
    results: list[VariantResult] = []
    for variant, chunk in plan:
        spec = VariantSpec(
            size=size,
            variant=variant,
            frames=args.frames,
            questions=questions,
            frame_chunk_size=chunk,
            repeats=args.loop_repeats if variant == "loop" and args.loop_repeats is not None else repeats,
            warmup_frames=warmup_frames,
            loop_pairs=loop_pairs,
            device=args.device,
            threads=args.threads,
            seed=args.seed,
            tokens_path=str(workdir / f"{size}_{questions}_{variant}_{chunk}.pt"),
        )
        print(
            f"  {size}, P={questions}: {variant} (frame_chunk_size={chunk}) ...", file=sys.stderr, flush=True
        )
        results.append(_spawn(spec))

    reference = torch.load(results[0].tokens_path)
    rows = []
    for result in results:
        pairs_per_s = result.pairs_timed / result.median_s
        is_loop = result.variant == "loop"
        label = {
            "loop": "loop, 1 call per (frame, question)",
            "vectorised": f"vectorised, frame_chunk_size={result.frame_chunk_size}",
            "previous": f"previous (pairwise Q-Former), frame_chunk_size={result.frame_chunk_size}",
        }[result.variant]
        extrapolated = is_loop and result.pairs_timed < total_pairs
        rows.append(
            {
                "size": size,
                "questions": questions,
                "path": result.variant,
                "variant": label,
                "frame_chunk_size": result.frame_chunk_size,
                "pairs_timed": result.pairs_timed,
                "extrapolated": extrapolated,
                "repeats": result.repeats,
                "median_s": result.median_s,
                "all_s": result.seconds,
                # Frames with all Q questions answered: pairs/s divided by Q.
                "frames_per_s": pairs_per_s / questions,
                "pairs_per_s": pairs_per_s,
                "full_run_s": total_pairs / pairs_per_s,
                "speedup_vs_loop": None,
                "peak_rss_growth_mib": result.peak_rss_growth_mib,
                "peak_rss_mib": result.peak_rss_mib,
                "cpu_utilisation": result.cpu_utilisation,
                "peak_device_mib": result.peak_device_mib,
                "parameters_m": result.parameters_m,
                "max_abs_diff_vs_vectorised": _max_abs_diff(reference, torch.load(result.tokens_path)),
            }
        )
    if rows[-1]["path"] == "loop":
        loop_pairs_per_s = rows[-1]["pairs_per_s"]
        for row in rows:
            row["speedup_vs_loop"] = row["pairs_per_s"] / loop_pairs_per_s
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (also readable in a terminal)."""
    header = (
        "| size | P | variant | pairs timed | repeats | median s (timed pairs) | frames/s | pairs/s | "
        "est. s for all pairs | speed-up vs loop | peak RSS growth MiB | CPU util | max abs diff vs vectorised |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        growth = "n/a" if row["peak_rss_growth_mib"] is None else f"{row['peak_rss_growth_mib']:.0f}"
        speedup = "n/a" if row["speedup_vs_loop"] is None else f"{row['speedup_vs_loop']:.1f}x"
        pairs = f"{row['pairs_timed']}" + (" (subset, extrapolated)" if row["extrapolated"] else "")
        lines.append(
            f"| {row['size']} | {row['questions']} | {row['variant']} | {pairs} | {row['repeats']} | {row['median_s']:.3f} | "
            f"{row['frames_per_s']:.2f} | {row['pairs_per_s']:.1f} | {row['full_run_s']:.2f} | "
            f"{speedup} | {growth} | {row['cpu_utilisation']:.2f} | {row['max_abs_diff_vs_vectorised']:.2e} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,spec", help="comma-separated subset of: " + ", ".join(SIZES))
    parser.add_argument("--frames", type=int, default=256, help="frames T of the one video (default 256)")
    parser.add_argument(
        "--questions",
        default="4",
        help="questions P asked about the video; a comma-separated list runs each (default 4)",
    )
    parser.add_argument(
        "--variants",
        default="vectorised,loop",
        help="comma-separated subset of: vectorised, previous (before per-frame sharing; adds the FLOP report), loop",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats at tiny size; the median is reported"
    )
    parser.add_argument(
        "--spec-repeats",
        type=int,
        default=1,
        help="timed repeats at spec size (a vectorised pass takes ~1 min on 2 cores)",
    )
    parser.add_argument(
        "--loop-repeats",
        type=int,
        default=None,
        help="timed passes of the loop (default: --repeats at tiny, --spec-repeats at spec)",
    )
    parser.add_argument(
        "--loop-pairs",
        type=int,
        default=None,
        help="(frame, question) pairs the loop times; default all at tiny, 64 at spec (then extrapolated per pair)",
    )
    parser.add_argument(
        "--chunks",
        default="64,16",
        help="frame_chunk_size values for the vectorised path; the first is the reference",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write hardware, settings and rows here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        unknown = [s for s in args.sizes.split(",") if s not in SIZES]
        if unknown:
            parser.error(f"--sizes got {unknown}; choose from {sorted(SIZES)}")
        args.questions = [int(q) for q in args.questions.split(",")]
        args.variants = args.variants.split(",")
        if set(args.variants) - {"vectorised", "previous", "loop"} or "vectorised" not in args.variants:
            parser.error(f"--variants got {args.variants}; include vectorised, optionally previous and loop")
        if min(args.frames, *args.questions, args.repeats, args.spec_repeats, args.loop_repeats or 1) < 1:
            parser.error("--frames, --questions, --repeats, --spec-repeats and --loop-repeats must be >= 1")
        args.chunks = [int(c) for c in args.chunks.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(asdict(run_variant(VariantSpec(**json.loads(args.worker))))))
        return
    device = torch.device(args.device)
    info = hardware_info(device, args.threads)
    settings = {
        "dtype": "float32",
        "mode": "torch.inference_mode()",
        "batch": f"1 video x {args.frames} frames x P questions (P = {', '.join(map(str, args.questions))})",
        "inputs": "random precomputed vision_features (T, 1+N, C); vision tower not timed",
        "compress_type": "mean (1 content token per frame, so 2 tokens per (frame, question))",
    }
    with_flops = "previous" in args.variants
    peaks = [matmul_peak_gflops(args.threads)] if with_flops else []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llamavid-bench-") as workdir:
        for size in args.sizes.split(","):
            for questions in args.questions:
                rows += benchmark_size(size, questions, args, Path(workdir))
    if with_flops:
        peaks.append(matmul_peak_gflops(args.threads))

    info["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print("## Token generation (context + content tokens)\n")
    print(f"command: python benchmarks/token_generation.py {' '.join(sys.argv[1:])}".rstrip())
    for key, value in {**info, **settings}.items():
        print(f"{key}: {value}")
    for size in dict.fromkeys(row["size"] for row in rows):
        params = next(row["parameters_m"] for row in rows if row["size"] == size)
        print(f"{size}: {SIZE_NOTES[size]} ({params:.0f}M parameters built)")
    print()
    print(format_table(rows))
    flops: list[dict[str, Any]] = []
    if with_flops:
        report, flops = flop_report(rows, args, peaks)
        print("\n" + report)
    print(
        "\nframes/s = frames with all questions answered per second (pairs/s / Q). Peak RSS growth = VmHWM after "
        "warm-up and timed runs minus VmRSS before them, one fresh process per variant. CPU util = process CPU "
        "time / wall time over the timed runs (about the thread count when no other process competes). Loop rows marked "
        "'subset' time that many pairs and extrapolate per-pair throughput to all pairs."
    )
    if args.json is not None:
        result = {
            "hardware": info,
            "settings": settings,
            "rows": rows,
            "matmul_peak_gflops": peaks,
            "flops": flops,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
