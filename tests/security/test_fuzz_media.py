"""Fuzz: a fixed-seed corpus of damaged videos, images, subtitles and training JSON through the public entry points.

The corpus, the worker that feeds each file to the entry point a user reaches it by (``ingest``/``ask`` for videos,
``ask`` for images, ``ask --subtitles`` for subtitles, ``train``'s data checks for training JSON) and the per-case
timeout live in ``benchmarks/fuzz_media.py``, whose command line runs the longer campaign. Here every case must
end in success or a `LlamaVidError` naming the file, none may hang (each is bounded by a timeout) or crash the
worker, and a handful of the same files go through the real console script. Budget: under 60 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SEED = 0
# Training JSON cases are cheap (no decoding): more of them.
PER_KIND = {"video": 40, "image": 40, "subtitle": 40, "json": 80}
CLI_TIMEOUT_S = 120


def _fuzz_module() -> ModuleType:
    module = sys.modules.get("fuzz_media")
    if module is None:
        spec = importlib.util.spec_from_file_location("fuzz_media", REPO / "benchmarks" / "fuzz_media.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["fuzz_media"] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return module


fuzz = _fuzz_module()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("fuzz-corpus")
    return folder, fuzz.build_corpus(folder, seed=SEED, per_kind=PER_KIND)


@pytest.fixture(scope="module")
def outcomes(corpus: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> list:
    folder, cases = corpus
    return fuzz.run_corpus(cases, seeds=folder / "seeds", work=tmp_path_factory.mktemp("fuzz-work"))


def test_every_case_succeeds_or_fails_naming_the_file(outcomes: list) -> None:
    assert len(outcomes) == sum(PER_KIND.values())
    found = list(fuzz.findings(outcomes))
    assert not found, f"{len(found)} finding(s):\n{fuzz.summarise(outcomes)}"


def test_the_corpus_reaches_past_the_first_check(outcomes: list) -> None:
    """Some damaged files of every kind still load: the mutations exercise decoding, not just the header check."""
    statuses = Counter((outcome.case.kind, outcome.status) for outcome in outcomes)
    for kind in fuzz.KINDS:
        assert statuses[kind, "ok"] >= 3, (kind, statuses)
        assert statuses[kind, "error"] >= 10, (kind, statuses)
    # The bombs are refused from the header, by the pixel limit.
    bombs = [o for o in outcomes if re.fullmatch(r"PNG declaring \d+x\d+", o.case.mutation)]
    assert bombs and all(o.status == "error" and "megapixels" in (o.message or "") for o in bombs), bombs


def test_the_corpus_is_the_same_for_the_same_seed(corpus: tuple[Path, list], tmp_path: Path) -> None:
    _, cases = corpus
    again = fuzz.build_corpus(tmp_path, seed=SEED, per_kind={"image": 6, "subtitle": 6, "json": 6})
    first = {(case.kind, Path(case.path).name): case for case in cases}
    for case in again:
        original = first[case.kind, Path(case.path).name]
        assert case.mutation == original.mutation
        digest = hashlib.sha256(Path(case.path).read_bytes()).hexdigest()
        assert digest == hashlib.sha256(Path(original.path).read_bytes()).hexdigest(), case


def _console_script() -> list[str]:
    script = shutil.which("llamavid", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "llamavid.cli.main"]


def _first(outcomes: list, kind: str, status: str, message_start: str = "") -> object:
    for outcome in outcomes:
        message = outcome.message or ""
        if outcome.case.kind == kind and outcome.status == status and message.startswith(message_start):
            return outcome
    pytest.fail(
        f"the corpus has no {kind} case with status {status} and a message starting {message_start!r}"
    )


def test_the_console_script_fails_cleanly_on_fuzzed_files(
    corpus: tuple[Path, list], outcomes: list, tmp_path: Path
) -> None:
    """One failing file per kind (and one decodable damaged video) through the real ``llamavid`` command."""
    folder, _ = corpus
    seeds = folder / "seeds"
    cache = ["--cache-dir", str(tmp_path / "cache"), "-q"]
    video = _first(outcomes, "video", "error")
    image = _first(outcomes, "image", "error")
    subtitle = _first(outcomes, "subtitle", "error")
    # A file `llamavid train` refuses before it builds the model (the per-record checks need the model's tokenizer).
    training = next(
        outcome
        for outcome in outcomes
        if outcome.case.kind == "json"
        and outcome.status == "error"
        and (outcome.message or "").startswith(outcome.case.path + ": ")
    )
    decodable = _first(outcomes, "video", "ok")
    runs = {
        video.case.path: ["ingest", video.case.path, *cache],
        image.case.path: ["ask", image.case.path, "What is it?", "--max-new-tokens", "2", *cache],
        subtitle.case.path: [
            "ask",
            str(seeds / "seed.mp4"),
            "What happens?",
            "--subtitles",
            subtitle.case.path,
            *cache,
        ],
        training.case.path: [
            "train",
            "tiny_debug",
            f"data.train_files=[{training.case.path}]",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = {
        path: subprocess.Popen(
            [*_console_script(), *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for path, arguments in runs.items()
    }
    answered = subprocess.run(
        [*_console_script(), "ask", decodable.case.path, "What happens?", "--max-new-tokens", "3", *cache],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        cwd=tmp_path,
    )
    assert answered.returncode == 0, answered.stderr[-2000:]
    assert answered.stdout.strip()
    for path, process in started.items():
        try:
            stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail(f"llamavid {runs[path][0]} {path} ran past {CLI_TIMEOUT_S} s")
        assert process.returncode == 2, (runs[path], process.returncode, stderr[-2000:])
        assert "Traceback" not in stderr, stderr[-2000:]
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr[-2000:]
        assert lines[0].startswith(f"llamavid {runs[path][0]}: error: "), lines[0]
        assert Path(path).name in lines[0], lines[0]


def test_the_harness_reports_hangs_crashes_and_tracebacks(tmp_path: Path) -> None:
    """The checks above can fail: a case that hangs, aborts or raises a foreign error is reported as such, and
    the cases after it still run (in a fresh worker)."""
    actions = ["ok", "hang", "raise", "crash", "ok"]
    cases = []
    for index, action in enumerate(actions):
        path = tmp_path / f"case-{index}.txt"
        path.write_text(action)
        cases.append(fuzz.Case(index, "harness", str(path), action))
    outcomes = fuzz.run_corpus(cases, seeds=tmp_path, case_timeout=3, work=tmp_path / "work")
    assert [outcome.status for outcome in outcomes] == ["ok", "hang", "traceback", "crash", "ok"]
    assert "RuntimeError" in (outcomes[2].error_type or "")
    assert outcomes[1].seconds < 30
