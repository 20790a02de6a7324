"""Fuzzing of every file a user hands llamavid: videos, images, subtitles and training JSON.

A fixed-seed corpus of damaged files (:func:`build_corpus`) goes through the public entry points a user reaches
each kind by, and every outcome must be either success or a `llamavid.errors.LlamaVidError` whose message names
the file. Anything else is a finding: another exception type (the console script would print a traceback), an
error that does not name the file, a case that runs past its timeout (a hang) or a crashed worker.

The entry points, called in a worker process that loads the embedded tiny model once:

- video: what ``llamavid ingest VIDEO`` runs (`inspect_video`, then `Engine.ingest`) or, every other case, what
  ``llamavid ask VIDEO q`` runs (`Engine.prepare_question`: probe, budget check, decode, encode); with
  ``--probe``, also `probe_video` (the server's child-process probe);
- image: what ``llamavid ask IMAGE q`` runs (`Engine.prepare_question`);
- subtitles: what ``llamavid ask VIDEO q --subtitles FILE`` runs (`SubtitleTrack.read`, then the question about a
  valid clip with those subtitles, which aligns them to its frames);
- training JSON: what ``llamavid train`` runs on ``data.train_files`` (`read_training_json` before the model is
  built, then `LlavaJsonDataset` validation and the first records' rendering, media loading and tokenisation).

The parent (:func:`run_corpus`) bounds every case with a timeout: a hang or a crash kills the worker, is
recorded, and a fresh worker resumes with the next case. ``tests/security/test_fuzz_media.py`` runs a small
corpus in CI; this script is the longer campaign:

    .venv/bin/python benchmarks/fuzz_media.py --per-kind 150 --seed 1

The seeds are written here (PyAV and Pillow), nothing is downloaded, and a run is reproducible from its seed.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

KINDS = ("video", "image", "subtitle", "json")
QUESTION = "What happens in the video?"
# Generous for a 4-frame clip on a loaded 2-core machine; a hang is a case that never ends.
CASE_TIMEOUT_S = 20.0
STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Case:
    """One fuzz input: its kind, the file, and how it was made (enough to rebuild it from the seed)."""

    index: int
    kind: str
    path: str
    mutation: str


@dataclass
class Outcome:
    """What one case did. ``status``: ok, error (ours, naming the file), or a finding (see `FINDINGS`)."""

    case: Case
    status: str
    seconds: float = 0.0
    error_type: str | None = None
    message: str | None = None
    detail: str | None = None


# Statuses that are bugs: a foreign exception (traceback), an error without the file name, a hang, a crash.
FINDINGS = ("traceback", "unnamed", "hang", "crash")


# ---------------------------------------------------------------------------------------------------------
# Seeds: small valid files of every kind, written here.


def _picture(index: int, width: int, height: int) -> Any:
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    red = (x * 255 // max(1, width - 1) + index * 37) % 256
    green = (y * 255 // max(1, height - 1)) % 256
    blue = np.full_like(x, (index * 53) % 256)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def _write_video(
    path: Path, codec: str, num_frames: int, rate: int, size: tuple[int, int] = (48, 32)
) -> Path:
    import av

    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(rate))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        elif codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_picture(index, width, height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


SRT_SEED = (
    "1\n00:00:00,000 --> 00:00:01,200\nA red square <i>enters</i> from the left.\n\n"
    "2\n00:00:01,500 --> 00:00:02,800\nIt moves right...\n\n"
    "3\n00:00:03,000 --> 00:00:03,900\n- Where does it go?\n- Off the edge.\n"
)
VTT_SEED = (
    "WEBVTT\n\nNOTE written for the fuzz corpus\n\n"
    "intro\n00:00.000 --> 00:01.200 align:start\n<v Narrator>A red square enters.</v>\n\n"
    "00:00:01.500 --> 00:00:02.800\nIt moves right &amp; fades.\n\n"
    "00:00:03.000 --> 00:00:03.900\n<c.yellow>Gone.</c>\n"
)


def _training_records() -> list[dict[str, Any]]:
    return [
        {
            "id": "image-0",
            "image": "seed.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the corner?"},
                {"from": "gpt", "value": "Red."},
            ],
        },
        {
            "id": "video-0",
            "video": "seed.mp4",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat moves?"},
                {"from": "gpt", "value": "A square."},
                {"from": "human", "value": "Which way?"},
                {"from": "gpt", "value": "Right."},
            ],
        },
        {
            "id": "text-0",
            "conversations": [
                {"from": "human", "value": "Say hello."},
                {"from": "gpt", "value": "Hello."},
            ],
        },
    ]


def write_seeds(folder: Path) -> dict[str, list[Path]]:
    """Valid files of every kind in ``folder`` (seconds to write); the corpus mutates copies of them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    videos = [
        _write_video(folder / "seed.mp4", "libx264", num_frames=8, rate=2),
        _write_video(folder / "seed.mkv", "mpeg4", num_frames=10, rate=5),
        _write_video(folder / "seed.webm", "libvpx-vp9", num_frames=6, rate=2),
        _write_video(folder / "seed.avi", "mjpeg", num_frames=6, rate=2),
    ]
    picture = Image.fromarray(_picture(1, 40, 30))
    images = []
    for suffix, options in (
        (".png", {}),
        (".jpg", {"quality": 80}),
        (".webp", {"quality": 80}),
        (".bmp", {}),
        (".tiff", {}),
    ):
        images.append(folder / f"seed{suffix}")
        picture.save(images[-1], **options)
    gif = folder / "seed.gif"
    frames = [Image.fromarray(_picture(i, 24, 16)) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    images.append(gif)
    subtitles = [folder / "seed.srt", folder / "seed.vtt"]
    subtitles[0].write_text(SRT_SEED, encoding="utf-8")
    subtitles[1].write_text(VTT_SEED, encoding="utf-8")
    training = folder / "seed.json"
    training.write_text(json.dumps(_training_records(), indent=1), encoding="utf-8")
    return {"video": videos, "image": images, "subtitle": subtitles, "json": [training]}


# ---------------------------------------------------------------------------------------------------------
# Mutations. Each returns the new bytes and a short description; all randomness comes from `rng`.

INTERESTING_U32 = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _flip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    count = rng.randint(1, 16)
    for _ in range(count):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out), f"flip {count} bits"


def _overwrite(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    at = rng.randrange(len(out))
    patch = rng.randbytes(rng.randint(1, 64))
    out[at : at + len(patch)] = patch
    return bytes(out), f"overwrite {len(patch)} B at {at}"


def _truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    keep = rng.randint(1, max(1, len(data) - 1))
    return data[:keep], f"truncate to {keep} of {len(data)} B"


def _insert(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(len(data) + 1)
    patch = rng.randbytes(rng.randint(1, 256))
    return data[:at] + patch + data[at:], f"insert {len(patch)} B at {at}"


def _delete(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    size = rng.randint(1, max(1, len(data) // 8))
    return data[:at] + data[at + size :], f"delete {size} B at {at}"


def _duplicate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    size = rng.randint(1, max(1, min(4096, len(data) - at)))
    return data[: at + size] + data[at : at + size] * rng.randint(1, 8) + data[at + size :], (
        f"repeat {size} B at {at}"
    )


def _interesting(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    # Containers and image headers keep sizes, counts and offsets as 32-bit fields near the start.
    out = bytearray(data)
    at = rng.randrange(max(1, min(len(out) - 4, 512)))
    value = rng.choice(INTERESTING_U32)
    out[at : at + 4] = struct.pack(rng.choice((">I", "<I")), value)
    return bytes(out[: max(len(data), at + 4)]), f"u32 {value:#x} at {at}"


def _splice(data: bytes, rng: random.Random, other: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    start = rng.randrange(len(other))
    return data[:at] + other[start : start + rng.randint(16, 4096)], f"splice another seed at {at}"


BYTE_MUTATIONS: tuple[Callable[[bytes, random.Random], tuple[bytes, str]], ...] = (
    _flip,
    _overwrite,
    _truncate,
    _insert,
    _delete,
    _duplicate,
    _interesting,
)


def mutate_bytes(data: bytes, rng: random.Random, others: Sequence[bytes] = ()) -> tuple[bytes, str]:
    """One to three stacked byte-level mutations (bit flips, patches, cuts, repeats, 32-bit boundary values)."""
    steps = []
    for _ in range(rng.randint(1, 3)):
        if others and rng.random() < 0.1:
            data, step = _splice(data, rng, rng.choice(others))
        else:
            data, step = rng.choice(BYTE_MUTATIONS)(data, rng)
        steps.append(step)
        if not data:
            data = b"\x00"
    return data, "; ".join(steps)


def _png_with_size(width: int, height: int) -> bytes:
    """A valid-looking PNG header declaring ``width`` x ``height`` over one tiny compressed row (a bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def image_structured(rng: random.Random) -> tuple[bytes, str, str]:
    """Header-level image attacks: huge or zero declared sizes, a wrong extension, an empty or text file."""
    choice = rng.randrange(6)
    if choice == 0:
        side = rng.choice((12_000, 30_000, 65_535, 100_000))
        return _png_with_size(side, side), ".png", f"PNG declaring {side}x{side}"
    if choice == 1:
        return _png_with_size(rng.choice((0, 1)), 0), ".png", "PNG declaring a zero side"
    if choice == 2:
        return b"", rng.choice((".png", ".jpg")), "empty image file"
    if choice == 3:
        return b"GIF89a" + struct.pack("<HH", 65_535, 65_535) + b"\x00" * 7, ".gif", "GIF header 65535x65535"
    if choice == 4:
        return "not an image \u00e9\n".encode() * 10, ".jpg", "text named .jpg"
    return rng.randbytes(rng.randint(1, 300)), rng.choice((".webp", ".bmp", ".tif")), "random bytes"


def _timestamp(rng: random.Random, vtt: bool) -> str:
    choice = rng.randrange(8)
    sep = "." if vtt else ","
    if choice == 0:
        return f"{rng.randint(0, 10**12)}:00:00{sep}000"
    if choice == 1:
        return f"-00:00:0{rng.randint(0, 9)}{sep}000"
    if choice == 2:
        return f"00:{rng.randint(60, 99)}:{rng.randint(60, 99)}{sep}{rng.randint(1000, 9999)}"
    if choice == 3:
        return rng.choice(("nan", "inf", "1e309", "00:00:0x" + sep + "000", "", "--", "٠٠:٠٠:٠١,٠٠٠"))
    if choice == 4:
        return f"00:00:{rng.randint(0, 59):02d}"
    return f"00:00:{rng.randint(0, 59):02d}{sep}{rng.randint(0, 999):03d}"


def subtitle_structured(rng: random.Random) -> tuple[bytes, str, str]:
    """Text-level subtitle attacks: odd timestamps, huge or nested cues, encodings, control characters."""
    vtt = rng.random() < 0.5
    suffix = ".vtt" if vtt else ".srt"
    choice = rng.randrange(10)
    if choice < 4:  # cues with random timestamps
        lines = ["WEBVTT", ""] if vtt else []
        for number in range(rng.randint(1, 6)):
            if not vtt:
                lines.append(str(rng.choice((number + 1, -1, 10**30, "x"))))
            lines.append(f"{_timestamp(rng, vtt)} --> {_timestamp(rng, vtt)}")
            lines.append(rng.choice(("text", "", "<b><i>bold", "\u202e\u0000\ufffd", "-->", "WEBVTT")))
            lines.append("")
        return "\n".join(lines).encode(), suffix, "random timestamps"
    if choice == 4:
        depth = rng.choice((1_000, 50_000))
        text = "<i>" * depth + "deep" + "</i>" * depth
        body = f"1\n00:00:00,000 --> 00:00:01,000\n{text}\n"
        return (
            (("WEBVTT\n\n" + body.replace(",", ".")) if vtt else body).encode(),
            suffix,
            f"tags nested {depth}",
        )
    if choice == 5:
        count = rng.choice((5_000, 40_000))
        sep = "." if vtt else ","
        body = "".join(
            f"{i + 1}\n00:00:{i % 60:02d}{sep}000 --> 00:00:{i % 60:02d}{sep}500\ncue {i}\n\n"
            for i in range(count)
        )
        return (("WEBVTT\n\n" + body) if vtt else body).encode(), suffix, f"{count} cues"
    if choice == 6:
        encoding = rng.choice(("utf-16", "utf-16-be", "utf-32", "cp1252", "gb2312", "shift_jis", "koi8_r"))
        text = SRT_SEED.replace("square", rng.choice(("carré", "方块", "四角", "квадрат")))
        source = (VTT_SEED if vtt else text).encode(encoding, errors="replace")
        return source, suffix, f"encoded as {encoding}"
    if choice == 7:
        text = (VTT_SEED if vtt else SRT_SEED).encode()
        junk = rng.choice((b"\xed\xa0\x80", b"\xff\xfe", b"\x00" * 7, codecs.BOM_UTF8, b"\r", b"\x1b[2J"))
        at = rng.randrange(len(text))
        return text[:at] + junk + text[at:], suffix, f"bytes {junk!r} at {at}"
    if choice == 8:
        text = (VTT_SEED if vtt else SRT_SEED).replace("\n", rng.choice(("\r", "\r\n", "\u2028", "\x0b")))
        return text.encode(), suffix, "other line endings"
    return rng.choice((b"", b" \n\t\n", b"WEBVTT", b"1\n", rng.randbytes(200))), suffix, "empty or junk"


def _json_value(rng: random.Random) -> Any:
    return rng.choice(
        (None, 0, -1, 10**40, 1.5, "", "x" * 10_000, [], {}, [None], {"a": 1}, True, "<image>" * 50)
    )


def json_structured(rng: random.Random) -> tuple[bytes, str, str]:
    """Training-JSON attacks: deep nesting, encodings, wrong shapes and types, bad media paths."""
    records = _training_records()
    choice = rng.randrange(12)
    if choice == 0:
        depth = rng.choice((1_000, 100_000))
        opener, closer = rng.choice((("[", "]"), ('{"a":', "}")))
        return (opener * depth + "1" + closer * depth).encode(), ".json", f"nested {depth} deep"
    if choice == 1:
        encoding = rng.choice(("latin-1", "cp1252", "utf-16", "utf-32", "gb2312"))
        text = json.dumps(records, ensure_ascii=False).replace("Red", "Rouge é 红")
        return text.encode(encoding, errors="replace"), ".json", f"encoded as {encoding}"
    if choice == 2:
        whole = rng.choice(([], {}, "records", 3, None, [[]], [None], [1, 2]))
        return json.dumps(whole).encode(), ".json", f"whole file {whole!r}"
    if choice == 3:  # a record field of the wrong type
        record = rng.choice(records)
        key = rng.choice(("id", "image", "video", "conversations", "subtitles"))
        record[key] = _json_value(rng)
        return json.dumps(records).encode(), ".json", f"{record.get('id')!r}.{key} wrong type"
    if choice == 4:  # a turn of the wrong shape
        record = rng.choice(records)
        turn = rng.choice(record["conversations"])
        key = rng.choice(("from", "value", "extra"))
        turn[key] = _json_value(rng) if rng.random() < 0.7 else rng.choice(("system", "gpt", "human"))
        if rng.random() < 0.3:
            record["conversations"].append(_json_value(rng))
        return json.dumps(records).encode(), ".json", f"turn {key} wrong"
    if choice == 5:  # media paths that escape, do not exist or are not media
        record = records[rng.randrange(2)]
        key = "image" if "image" in record else "video"
        record[key] = rng.choice(
            ("../../../etc/passwd", "/dev/zero", "missing.mp4", "seed.json", ".", "seed.srt", "a\x00b.png")
        )
        return json.dumps(records).encode(), ".json", f"{key} = {record[key]!r}"
    if choice == 6:
        text = json.dumps(records)
        return (
            text.replace("1", rng.choice(("NaN", "Infinity", "1e999", "-0"))).encode(),
            ".json",
            "odd numbers",
        )
    if choice == 7:  # <image> counts that do not match the media
        record = records[rng.randrange(2)]
        record["conversations"][0]["value"] = rng.choice(("no marker", "<image><image>", "<image>" * 300, ""))
        return json.dumps(records).encode(), ".json", "wrong <image> count"
    if choice == 8:
        record = records[1]
        record["subtitles"] = rng.choice(("seed.srt", "missing.srt", "seed.mp4", 7))
        return json.dumps(records).encode(), ".json", f"long video with subtitles {record['subtitles']!r}"
    if choice == 9:
        return (codecs.BOM_UTF8 + json.dumps(records).encode()), ".json", "UTF-8 BOM"
    if choice == 10:
        turns = [{"from": "human", "value": "\ud800 hi"}, {"from": "gpt", "value": "\udfff"}]
        records.append({"id": "surrogates", "id ": 1, "conversations": turns})
        return json.dumps(records).encode(), ".json", "lone surrogate in a turn"
    return json.dumps(records * rng.randint(50, 400)).encode(), ".json", "many records"


def build_corpus(
    folder: str | os.PathLike[str], *, seed: int = 0, per_kind: int | Mapping[str, int] = 60
) -> list[Case]:
    """Write seeds and damaged files into ``folder``; the same seed gives the same bytes.

    ``per_kind`` is the number of damaged files of each kind, or a count per kind (missing kinds get none).

    About half of each kind are byte-level mutations of a seed (`mutate_bytes`), the rest structured attacks
    on the format (`image_structured`, `subtitle_structured`, `json_structured`); videos are byte-level only,
    with most mutations aimed at the container headers where sizes and offsets live.
    """
    root = Path(folder)
    seeds = write_seeds(root / "seeds")
    seed_bytes = {kind: [path.read_bytes() for path in paths] for kind, paths in seeds.items()}
    cases: list[Case] = []
    structured = {"image": image_structured, "subtitle": subtitle_structured, "json": json_structured}
    for kind in KINDS:
        kind_folder = root / kind
        kind_folder.mkdir(exist_ok=True)
        rng = random.Random(
            f"{seed}-{kind}"
        )  # one stream per kind: a kind's files do not depend on the others
        count = per_kind if isinstance(per_kind, int) else per_kind.get(kind, 0)
        for number in range(count):
            if kind in structured and number % 2:
                data, suffix, how = structured[kind](rng)
            else:
                which = rng.randrange(len(seeds[kind]))
                source = seeds[kind][which]
                original = seed_bytes[kind][which]
                if kind == "video" and rng.random() < 0.5:  # aim at the header
                    head = min(len(original), 2048)
                    mutated, how = mutate_bytes(original[:head], rng)
                    data = mutated + original[head:]
                else:
                    data, how = mutate_bytes(original, rng, seed_bytes[kind])
                suffix, how = source.suffix, f"{source.name}: {how}"
            path = kind_folder / f"{kind}-{number:04d}{suffix}"
            path.write_bytes(data)
            cases.append(Case(len(cases), kind, str(path), how))
    return cases


# ---------------------------------------------------------------------------------------------------------
# The worker: runs cases through the public entry points and reports one JSON line per case.


class _Worker:
    """The entry points per kind. ``mode`` ``fuzz`` alternates the ingest and ask paths for videos and asks
    about images and subtitled clips; ``plain`` (real media) runs what ``llamavid ingest VIDEO`` runs with default
    flags for every video, loads and encodes images, and reads subtitles and aligns them to a clip."""

    def __init__(self, seeds: Path, probe: bool, mode: str = "fuzz") -> None:
        self._engine: Any = None
        self.seeds = seeds
        self.probe = probe
        self.plain = mode == "plain"
        self.videos_seen = 0

    @property
    def engine(self) -> Any:
        """The embedded tiny model, loaded by the first case that needs it (once per worker)."""
        if self._engine is None:
            from llamavid.inference.engine import Engine

            self._engine = Engine.from_pretrained(None, device="cpu", dtype="float32")
            self._engine.progress = False
        return self._engine

    def harness(self, path: str) -> None:
        """Checks of the harness itself: the file says whether to hang, crash, raise or return."""
        action = Path(path).read_text().strip()
        if action == "hang":
            time.sleep(3600)
        elif action == "crash":
            os.abort()
        elif action == "raise":
            raise RuntimeError("not a llamavid error")

    def video(self, path: str) -> None:
        from llamavid.data.video import inspect_video, probe_video

        if self.probe:
            probe_video(path, timeout=CASE_TIMEOUT_S / 2)
        self.videos_seen += 1
        if self.plain or self.videos_seen % 2:
            inspect_video(path)  # `llamavid ingest` checks the file before the model load
            self.engine.ingest(path, fps=1.0)
        else:
            self.engine.prepare_question(path, QUESTION)

    def image(self, path: str) -> None:
        if self.plain:
            self.engine.load_media(path)
        else:
            self.engine.prepare_question(path, "What is in the picture?")

    def subtitle(self, path: str) -> None:
        from llamavid.data.subtitles import SubtitleTrack

        track = SubtitleTrack.read(path)  # `llamavid ask --subtitles` reads it before the model load
        if self.plain:
            self.engine.load_media(self.seeds / "seed.mp4", subtitles=track)
        else:
            self.engine.prepare_question(self.seeds / "seed.mp4", QUESTION, subtitles=track)

    def json(self, path: str) -> None:
        from llamavid.train.datasets import LlavaJsonDataset, read_training_json

        read_training_json(path)  # `llamavid train` checks every file before building the model
        # The recipe's dataset, with media resolved against the seeds (a fuzzed record names seed.png, ...).
        dataset = LlavaJsonDataset(
            [path],
            self.engine.processor.tokenizer,
            "imgsp_v1",
            image_folder=self.seeds,
            video_folder=self.seeds,
            max_frames=6,
            add_bos=self.engine.processor.add_bos,
        )
        for position in range(min(len(dataset), 4)):
            dataset[position]


# Worker reports start with this, so anything else a library prints on stdout is ignored.
_MARK = "@@fuzz "


def _report(line: dict[str, Any]) -> None:
    sys.stdout.write(_MARK + json.dumps(line) + "\n")
    sys.stdout.flush()


def worker_main(cases_file: Path, start: int, probe: bool, mode: str = "fuzz") -> int:
    """Run ``cases_file``'s cases from index ``start``, one JSON line before and after each."""
    import logging
    import traceback
    import warnings

    from llamavid.errors import LlamaVidError

    logging.disable(logging.WARNING)  # the package warns about odd input on purpose; outcomes are what count
    warnings.simplefilter("ignore")
    payload = json.loads(cases_file.read_text())
    cases = [Case(**row) for row in payload["cases"]]
    worker = _Worker(Path(payload["seeds"]), probe, mode)
    if any(case.kind != "harness" for case in cases[start:]):
        worker.engine  # noqa: B018 - loaded before "ready": the startup timeout covers it, not the first case's
    _report({"ready": True})
    for case in cases[start:]:
        _report({"start": case.index})
        began = time.perf_counter()
        row: dict[str, Any] = {"done": case.index, "status": "ok"}
        try:
            getattr(worker, case.kind)(case.path)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # noqa: BLE001 - classifying every exception is the point
            message = str(error)
            row.update(
                error_type=f"{type(error).__module__}.{type(error).__qualname__}", message=message[:2000]
            )
            if not isinstance(error, LlamaVidError):
                row.update(status="traceback", detail=traceback.format_exc()[-4000:])
            elif Path(case.path).name not in message:
                row.update(status="unnamed")
            else:
                row.update(status="error")
        row["seconds"] = round(time.perf_counter() - began, 3)
        _report(row)
    return 0


# ---------------------------------------------------------------------------------------------------------
# The parent: one worker at a time, every case bounded.


class _Reports:
    """The worker's reports, read unbuffered: select() then sees every byte the worker wrote, none of it can
    wait in a Python buffer while the deadline runs."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.pending = b""
        self.lines: list[bytes] = []
        self.closed = False

    def next(self, deadline: float) -> str | None:
        """The next report (its JSON text), or None when the worker closed its output or the deadline passed."""
        while True:
            while self.lines:
                line = self.lines.pop(0).decode("utf-8", "replace")
                if line.startswith(_MARK):
                    return line[len(_MARK) :]
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                self.closed = not chunk
                *complete, self.pending = (self.pending + chunk).split(b"\n")
                self.lines += complete


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def run_corpus(
    cases: Sequence[Case],
    *,
    seeds: str | os.PathLike[str],
    case_timeout: float = CASE_TIMEOUT_S,
    startup_timeout: float = STARTUP_TIMEOUT_S,
    probe: bool = False,
    mode: str = "fuzz",
    env: dict[str, str] | None = None,
    work: str | os.PathLike[str] | None = None,
) -> list[Outcome]:
    """Run every case in worker processes; a case past ``case_timeout`` seconds is a hang, a dead worker a crash.

    Either kills the worker; a fresh one resumes after the case. Returns one `Outcome` per case, in order.
    The case list, worker logs and the feature cache go to ``work`` (default: a new temporary folder).
    """
    if any(case.index != position for position, case in enumerate(cases)):
        raise ValueError(
            "cases must be numbered 0, 1, ... in order (renumber a subset with dataclasses.replace)"
        )
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="fuzz-cases-"))
    work.mkdir(parents=True, exist_ok=True)
    cases_file = work / "cases.json"
    cases_file.write_text(json.dumps({"seeds": os.fspath(seeds), "cases": [asdict(case) for case in cases]}))
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("LLAMAVID_CACHE", str(work / "feature-cache"))
    child_env.setdefault("HF_HUB_OFFLINE", "1")
    child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    child_env.setdefault("OMP_NUM_THREADS", "2")
    src = str(Path(__file__).resolve().parents[1] / "src")
    child_env["PYTHONPATH"] = src + (
        os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else ""
    )
    outcomes: dict[int, Outcome] = {}
    start = 0
    while start < len(cases):
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            str(cases_file),
            "--start",
            str(start),
        ]
        command += ["--mode", mode] + (["--probe"] if probe else [])
        # stderr goes to a file: a pipe nobody reads would fill up and stall the worker (a false hang).
        log = work / f"worker-{start}.log"
        with open(log, "w") as stderr:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=stderr, bufsize=0, env=child_env, cwd=work
            )
            try:
                start = _drive(process, cases, start, outcomes, case_timeout, startup_timeout, log)
            finally:
                _stop(process)
    return [outcomes[case.index] for case in cases]


def _drive(
    process: subprocess.Popen[bytes],
    cases: Sequence[Case],
    start: int,
    outcomes: dict[int, Outcome],
    case_timeout: float,
    startup_timeout: float,
    log: Path,
) -> int:
    """Feed on one worker's reports; returns the index to resume from (len(cases) when all are done)."""
    reports = _Reports(process)
    line = reports.next(time.monotonic() + startup_timeout)
    if line is None or not json.loads(line).get("ready"):
        _stop(process)
        stderr = log.read_text(errors="replace")
        raise RuntimeError(f"the fuzz worker did not start: {stderr[-3000:]}")
    current = start  # the case running, or next to run
    began = time.monotonic()
    while current < len(cases):
        line = reports.next(began + case_timeout)
        if line is None:  # past the deadline, or the worker died
            dead = reports.closed  # output closed: the worker died (a hang keeps it open)
            _stop(process)
            stderr = log.read_text(errors="replace")
            outcomes[current] = Outcome(
                cases[current],
                "crash" if dead else "hang",
                seconds=round(time.monotonic() - began, 3),
                detail=(f"exit code {process.returncode}: " if dead else f"over {case_timeout:g} s; ")
                + stderr[-2000:],
            )
            return current + 1
        row = json.loads(line)
        if "start" in row:
            current, began = row["start"], time.monotonic()
            continue
        index = row.pop("done")
        outcomes[index] = Outcome(cases[index], **row)
        current, began = index + 1, time.monotonic()
    return len(cases)


def _signature(outcome: Outcome) -> str:
    """Findings with the same status, exception type and innermost frame are one bug."""
    where = ""
    for line in (outcome.detail or "").splitlines():
        if line.strip().startswith("File "):
            where = line.strip()
    return f"{outcome.status} {outcome.error_type or ''} {where}"


def summarise(outcomes: Sequence[Outcome], examples: int = 2) -> str:
    """Counts per kind and status, then each distinct finding with a count and its first examples."""
    counts = Counter((outcome.case.kind, outcome.status) for outcome in outcomes)
    lines = []
    for kind in (kind for kind in KINDS if any(outcome.case.kind == kind for outcome in outcomes)):
        row = ", ".join(
            f"{status} {counts[kind, status]}"
            for status in ("ok", "error", *FINDINGS)
            if counts[kind, status]
        )
        total = sum(outcome.seconds for outcome in outcomes if outcome.case.kind == kind)
        lines.append(f"{kind:8s} {row} ({total:.1f} s in cases)")
    groups: dict[str, list[Outcome]] = {}
    for outcome in findings(outcomes):
        groups.setdefault(_signature(outcome), []).append(outcome)
    for signature, group in groups.items():
        lines.append(f"\n{len(group)} x {signature}")
        for outcome in group[:examples]:
            lines.append(
                f"  {outcome.case.path} ({outcome.case.mutation}): {(outcome.message or '')[:300]!r}"
            )
        lines.append("  " + (group[0].detail or "")[-1500:].replace("\n", "\n  "))
    return "\n".join(lines)


def findings(outcomes: Sequence[Outcome]) -> Iterator[Outcome]:
    return (outcome for outcome in outcomes if outcome.status in FINDINGS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-kind", type=int, default=150, help="damaged files per kind (default 150)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (CI uses 0)")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS)
    )
    parser.add_argument("--probe", action="store_true", help="also probe every video in a child process")
    parser.add_argument("--out", type=Path, help="keep the corpus in this folder (default: a temporary one)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("fuzz", "plain"), default="fuzz", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker, args.start, args.probe, args.mode)
    folder = args.out or Path(tempfile.mkdtemp(prefix="fuzz-media-"))
    kinds = set(args.kinds.split(","))
    began = time.perf_counter()
    corpus = build_corpus(folder, seed=args.seed, per_kind=args.per_kind)
    cases = [replace(case, index=i) for i, case in enumerate(case for case in corpus if case.kind in kinds)]
    built = time.perf_counter() - began
    outcomes = run_corpus(cases, seeds=folder / "seeds", probe=args.probe)
    print(
        f"{len(cases)} cases (corpus built in {built:.1f} s, run in {time.perf_counter() - began - built:.1f} s)"
    )
    print(summarise(outcomes))
    return 1 if any(True for _ in findings(outcomes)) else 0


if __name__ == "__main__":
    sys.exit(main())
