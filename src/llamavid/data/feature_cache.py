"""A resumable, validated on-disk cache of per-frame vision-encoder features for long videos.

Why: a 3-hour movie at 1 fps is ~10,800 frames; running EVA over it takes far longer than answering a question,
and the features do not depend on the question. So they are computed once, stored as fp16 safetensors chunks
(CLS included, so both the pixel and the long-video CLS conventions stay possible), and streamed back chunk by
chunk, memory-mapped, so memory does not grow with video length.

Key (STYLE §3.6): sha256 over the video's content hash, the sampling (fps / num_frames / max_frames), the vision
encoder id and the preprocessing id. Any change gives another key, so a stale entry misses instead of loading.

On-disk layout of one entry, ``<root>/<digest>/``::

    meta.json              sidecar, written last (atomically) with ``complete: true``
    progress.json          while ingesting: the finished chunks (atomically rewritten after each chunk)
    chunk_00000.safetensors  ``features`` (t, 1+N, C) float16 and ``timestamps`` (t,) float64

A reader accepts an entry only if ``meta.json`` says complete, the format version matches, every chunk exists with
the recorded size and (when verified) sha256. Anything else is a miss with a reason, or :class:`CacheEntryError`
when an entry is opened explicitly. :meth:`FeatureCache.verify` lists every bad chunk, and :meth:`FeatureCache.ensure`
(what readers call) re-encodes only those when the sidecar itself is sound; the rest of the entry is kept.

This module never imports the model package: the encoder is any object with ``encoder_id``, ``preprocessing_id``
and ``__call__(frames uint8 (T, H, W, 3)) -> (T, 1+N, C)`` (see ``llamavid.inference.media.FrameEncoder``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llamavid.errors import InvalidInputError, LlamaVidError

from .errors import VideoDecodeError
from .pipeline import DEFAULT_QUEUE_DEPTH, PipelineItem, PipelineStats, run_pipeline
from .subtitles import SubtitleCue, SubtitleTrack, align_subtitles, read_subtitles
from .video import Frames, VideoInfo, inspect_video, iter_video_frames

__all__ = [
    "CACHE_ENV",
    "FORMAT_VERSION",
    "PREPROCESSING_VERSION",
    "CacheEntry",
    "CacheEntryError",
    "CacheKey",
    "CacheWriteError",
    "FeatureCache",
    "FrameEncoderLike",
    "IngestReport",
    "atomic_write_bytes",
    "checkpoint_sha256",
    "default_cache_root",
    "expected_frames",
    "file_sha256",
    "module_sha256",
    "preprocessing_id",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "LLAMAVID_CACHE"
# 2: encoder ids hash the weights in one canonical dtype, so every command (fp16 ingest, fp32 ask) shares entries.
FORMAT_VERSION = 2
# Bump when the frame pipeline changes in a way `to_dict()` cannot see (decoder colour conversion, resize code).
PREPROCESSING_VERSION = "1"
DEFAULT_CHUNK_FRAMES = 64
_META = "meta.json"
_PROGRESS = "progress.json"
_HASH_BLOCK = 1 << 20


class CacheEntryError(LlamaVidError, ValueError):
    """A cache entry is incomplete, stale or corrupted; the message names the entry and the reason."""


class CacheWriteError(LlamaVidError, OSError):
    """The cache folder cannot take a write (disk full, quota, read-only, no permission).

    The message names the cache folder, the bytes that were being written and what to do. Everything written
    before stays valid, so the same command resumes once there is room.
    """


# A full disk and an exhausted quota have the same remedy.
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class FrameEncoderLike(Protocol):
    """What :meth:`FeatureCache.ingest` needs from an encoder (duck-typed so this module stays model-free).

    An encoder that also has ``preprocess(frames) -> pixels`` and ``encode(pixels) -> features`` (with
    ``__call__`` equal to ``encode(preprocess(frames))``, as ``llamavid.inference.media.FrameEncoder``) gets
    the two as separate pipeline stages running at once; otherwise ``__call__`` is the encode stage.

    An encoder with a ``decode_resize`` attribute ``(size, crop_size)`` (not None) gets frames resized and
    centre-cropped by the decoder's scaler (``iter_video_frames(size=, crop_size=)``) instead of full-size
    ones; its ``preprocessing_id`` must say so (``preprocessing_id(..., fast_resize=True)``).
    """

    encoder_id: str
    preprocessing_id: str

    def __call__(self, frames: np.ndarray) -> Any:
        """``(T, H, W, 3)`` uint8 -> ``(T, 1+N, C)`` features (torch tensor or numpy array)."""


# ---------------------------------------------------------------------------------------------------------
# Identities.


def default_cache_root() -> Path:
    """``$LLAMAVID_CACHE`` if set, else ``~/.cache/llamavid/features``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llamavid" / "features"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Streaming sha256 of a file's bytes: the content, not the name or mtime, identifies a video."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def module_sha256(module: Any) -> str:
    """sha256 over a module's state dict (names, shapes and the weights rounded to bfloat16), in name order.

    The encoder id of a model that exists only in memory (training, tests); models loaded from a folder use
    `checkpoint_sha256` instead. Why: the checkpoint path says nothing about the weights behind it (fine-tuned
    towers share names), while the values do. Rounding to bfloat16 first makes the id the same for a float16
    or bfloat16 model whether it is held in its own dtype or in float32. Hashing a 1B-parameter tower reads
    ~2 GB once per process, cheap next to encoding a movie.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu")
        if data.is_floating_point():
            data = data.to(torch.bfloat16)
        data = data.contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_sha256(folder: str | os.PathLike[str], prefix: str) -> str | None:
    """sha256 over the stored tensors under `prefix` in a safetensors checkpoint folder (single or sharded).

    The encoder id of a model loaded from a folder: the weights *as saved*, so it is the same whatever dtype
    or device a command loads them in (an fp16 ``ingest`` and an fp32 ``ask`` share cache entries). Returns
    None when the folder holds no safetensors weights under `prefix`.
    """
    import torch
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: folder / file for name, file in weight_map.items() if name.startswith(prefix)}
    elif (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            files = {name: folder / "model.safetensors" for name in handle.keys() if name.startswith(prefix)}  # noqa: SIM118
    else:
        return None
    if not files:
        return None
    digest = hashlib.sha256()
    for name in sorted(files):
        with safe_open(str(files[name]), framework="pt") as handle:
            tensor = handle.get_tensor(name).contiguous()
        digest.update(f"{name[len(prefix) :]}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "ckpt-" + digest.hexdigest()


def expected_frames(
    info: Any, *, fps: float | None, num_frames: int | None = None, max_frames: int | None = None
) -> int | None:
    """How many frames sampling will give, from a probe (`VideoInfo`) alone; None when the duration is unknown.

    Lets a caller refuse an over-budget request before decoding anything.
    """
    if num_frames is not None:
        return num_frames
    duration = getattr(info, "duration", None)
    if not duration or fps is None:
        return None
    expected = max(1, int(np.ceil(duration * fps - 1e-6)))
    return min(expected, max_frames) if max_frames else expected


def preprocessing_id(image_processor: Any, *, fast_resize: bool = False) -> str:
    """Hash of an image processor's ``to_dict()`` plus :data:`PREPROCESSING_VERSION`.

    ``fast_resize``: frames resized in the decoder's scaler (``llamavid ingest --fast-resize``) rather than by
    the processor's PIL bicubic resize; their features differ slightly, so they get another id and never share
    an entry with the faithful ones (the faithful id is the same as before this option existed).
    """
    content: dict[str, Any] = {"processor": image_processor.to_dict(), "version": PREPROCESSING_VERSION}
    if fast_resize:
        content["resize"] = "decoder-scaler-bicubic"
    payload = json.dumps(content, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything the cached features depend on; :attr:`digest` names the entry folder.

    Attributes:
        video_sha256: :func:`file_sha256` of the video.
        fps / num_frames / max_frames: the sampling passed to ``iter_video_frames``.
        encoder_id: identity of the vision encoder weights (:func:`module_sha256`).
        preprocessing_id: identity of the frame preprocessing (:func:`preprocessing_id`).
    """

    video_sha256: str
    fps: float | None
    num_frames: int | None
    max_frames: int | None
    encoder_id: str
    preprocessing_id: str

    @property
    def digest(self) -> str:
        payload = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------
# Atomic writes.


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then ``os.replace``: readers see old or new, never half.

    Raises the `OSError` of a failed write (the temp file is removed); `FeatureCache` methods turn it into a
    `CacheWriteError` saying what to do.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The name other modules used before `atomic_write_bytes` was public; kept until they have switched.
_atomic_write_bytes = atomic_write_bytes


def _mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def _write_error(
    root: Path, target: Path, size: int, error: OSError, remaining: int | None = None
) -> CacheWriteError:
    """A `CacheWriteError` saying which cache, which file, how many bytes and what to do."""
    if error.errno in _NO_SPACE:
        more = f"; about {_mib(remaining)} more to finish this video" if remaining else ""
        message = (
            f"feature cache {root}: no space left on the device while writing {target.name} of entry "
            f"{target.parent.name[:12]} ({size} bytes needed{more}). The chunks already written are kept: free "
            "some space and run the same command again to resume, or pass --cache-dir (or set "
            f"${CACHE_ENV}) to a folder on a disk with room."
        )
    else:
        message = (
            f"feature cache {root}: cannot write {target} ({error.strerror or error}). Pass --cache-dir (or set "
            f"${CACHE_ENV}) to a folder you can write to."
        )
    failure = CacheWriteError(message)
    failure.errno = error.errno  # callers that branch on errno still can; str() stays the message
    return failure


def _to_fp16_numpy(features: Any) -> np.ndarray:
    if hasattr(features, "detach"):  # torch tensor, converted without importing torch here
        features = features.detach().to("cpu")
        # float16 maps to numpy as it is; bfloat16 has no numpy dtype, so anything else goes through float32
        features = features.numpy() if str(features.dtype) == "torch.float16" else features.float().numpy()
    array = np.asarray(features)
    if array.ndim != 3:
        raise InvalidInputError(
            f"the encoder must return (frames, tokens, channels) features, got shape {array.shape}."
        )
    return np.ascontiguousarray(array, dtype=np.float16)


# ---------------------------------------------------------------------------------------------------------
# Reading.


@dataclass
class CacheEntry:
    """A complete, validated cache entry. Features are read lazily, one chunk at a time.

    Attributes:
        path: the entry folder.
        meta: the parsed ``meta.json`` sidecar.
    """

    path: Path
    meta: dict[str, Any]
    _verified: set[str] = field(default_factory=set, repr=False)

    @property
    def digest(self) -> str:
        return str(self.meta["digest"])

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def timestamps(self) -> np.ndarray:
        return np.asarray(self.meta["timestamps"], dtype=np.float64)

    @property
    def frame_texts(self) -> list[str]:
        """Subtitle text after each frame (docs/architecture.md §4 alignment), ``""`` everywhere when there are none."""
        subtitles = self.meta.get("subtitles") or {}
        return list(subtitles.get("per_frame") or [""] * self.num_frames)

    @property
    def feature_shape(self) -> tuple[int, int]:
        tokens, channels = self.meta["feature_shape"]
        return int(tokens), int(channels)

    def iter_chunks(self, *, framework: str = "pt", verify: bool = True) -> Iterator[Any]:
        """Yield ``(t, 1+N, C)`` float16 feature chunks in time order, memory-mapped via ``safe_open``.

        Args:
            framework: ``"pt"`` (torch tensors) or ``"np"``.
            verify: check each chunk's sha256 right before reading it (once per chunk and entry object), so a
                file corrupted after the entry was opened raises :class:`CacheEntryError` instead of feeding
                garbage to the model.
        """
        from safetensors import safe_open

        for chunk in self.meta["chunks"]:
            path = self.path / chunk["file"]
            if verify and chunk["file"] not in self._verified:
                _check_chunk(path, chunk, checksum=True, entry=self.path)
                self._verified.add(chunk["file"])
            with safe_open(str(path), framework=framework) as handle:
                yield handle.get_tensor("features")

    def load_features(self, framework: str = "pt") -> Any:
        """All features at once, ``(T, 1+N, C)``; for short videos and tests (memory grows with length)."""
        chunks = list(self.iter_chunks(framework=framework))
        if framework == "np":
            return np.concatenate(chunks)
        import torch

        return torch.cat(chunks)

    def summary(self) -> dict[str, Any]:
        """The ``--info`` row: what, how sampled, how big."""
        return {
            "digest": self.digest,
            "source": self.meta["source"]["path"],
            "video_sha256": self.meta["key"]["video_sha256"],
            "fps": self.meta["key"]["fps"],
            "max_frames": self.meta["key"].get("max_frames"),
            "num_frames": self.num_frames,
            "duration": self.meta.get("duration"),
            "feature_shape": list(self.feature_shape),
            "bytes": sum(int(c["bytes"]) for c in self.meta["chunks"]),
            "encoder_id": self.meta["key"]["encoder_id"][:16],
            "subtitles": (self.meta.get("subtitles") or {}).get("path"),
            "complete": bool(self.meta.get("complete")),
            "path": str(self.path),
        }


def _chunk_sha256(path: Path) -> str:
    return file_sha256(path)


def _check_chunk(path: Path, chunk: Mapping[str, Any], *, checksum: bool, entry: Path) -> None:
    if not path.is_file():
        raise CacheEntryError(f"cache entry {entry}: chunk {chunk['file']} is missing.")
    size = path.stat().st_size
    if size != int(chunk["bytes"]):
        raise CacheEntryError(
            f"cache entry {entry}: chunk {chunk['file']} has {size} bytes, the sidecar records {chunk['bytes']}."
        )
    if checksum and _chunk_sha256(path) != chunk["sha256"]:
        raise CacheEntryError(
            f"cache entry {entry}: chunk {chunk['file']} fails its sha256 checksum (corrupted)."
        )


def _bad_chunks(
    path: Path, meta: Mapping[str, Any], *, checksums: bool, stop_at_first: bool = False
) -> list[BadChunk]:
    """The chunks of a sound sidecar that are missing, of the wrong size or (with `checksums`) corrupted."""
    bad: list[BadChunk] = []
    for index, chunk in enumerate(meta["chunks"]):
        try:
            _check_chunk(path / chunk["file"], chunk, checksum=checksums, entry=path)
        except CacheEntryError as error:
            bad.append(BadChunk(index, str(chunk["file"]), str(error)))
            if stop_at_first:
                break
    return bad


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheEntryError(f"cannot read {path}: {error}") from error
    if not isinstance(value, dict):
        raise CacheEntryError(f"{path} does not hold a JSON object.")
    return value


@dataclass(frozen=True)
class BadChunk:
    """A chunk of an otherwise sound entry that cannot be used (missing, wrong size, failing its checksum)."""

    index: int
    file: str
    problem: str


@dataclass
class VerifyReport:
    """What :meth:`FeatureCache.verify` found in one entry.

    Attributes:
        path: the entry folder.
        problem: why the entry as a whole cannot be used (no sidecar, unfinished, marked incomplete, another format
            version, a stale key, a malformed sidecar), else None. Such an entry is ingested again (resuming the
            finished chunks of an interrupted run), not repaired chunk by chunk.
        bad_chunks: the chunks to re-encode in an entry whose sidecar is sound.
        checksums: whether chunk contents were hashed (else only their presence and sizes were checked).
        meta: the parsed sidecar when `problem` is None.
    """

    path: Path
    problem: str | None
    bad_chunks: list[BadChunk]
    checksums: bool
    meta: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.bad_chunks

    @property
    def repairable(self) -> bool:
        return self.problem is None and bool(self.bad_chunks)


class _RepairImpossibleError(LlamaVidError):
    """A bad chunk cannot be re-encoded in place (the video now decodes to other frames): rebuild the entry."""


# ---------------------------------------------------------------------------------------------------------
# The cache.


@dataclass
class IngestReport:
    """What :meth:`FeatureCache.ingest` did (for the CLI's ``--json``).

    Attributes:
        entry: the complete entry.
        hit: it was complete already (nothing decoded or encoded).
        encoded_chunks / reused_chunks: chunks written by this run / kept from an earlier one.
        seconds: wall time.
        miss_reason: why the entry could not be used as it was.
        stages: frames/s of decode, preprocess, encode and write, and the stage that bounded the run
            (``stages.describe()``); None on a hit.
    """

    entry: CacheEntry
    hit: bool
    encoded_chunks: int
    reused_chunks: int
    seconds: float
    miss_reason: str | None = None
    stages: PipelineStats | None = None


class FeatureCache:
    """Feature cache rooted at `root` (default :func:`default_cache_root`).

    Ingestion runs decode → preprocess → encode → write as a pipeline (`llamavid.data.pipeline`): each stage in
    its own thread, joined by bounded queues, so memory is bounded by ``queue_depth`` and the batch size, not
    by the video's length, and the report says which stage bounded the run.

    Args:
        root: cache folder; created on first write.
        chunk_frames: frames per chunk file. Bounds both the work lost to an interruption and read memory.
        queue_depth: encoder batches each queue between two stages holds.
        pipelined: False runs the same stages one after another in the calling thread (the sequential
            reference the tests and ``benchmarks/ingestion.py`` compare with); the stored entry is the same.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        queue_depth: int = DEFAULT_QUEUE_DEPTH,
        pipelined: bool = True,
    ) -> None:
        if chunk_frames < 1:
            raise InvalidInputError(f"chunk_frames must be at least 1, got {chunk_frames}.")
        if queue_depth < 1:
            raise InvalidInputError(f"queue_depth must be at least 1, got {queue_depth}.")
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.chunk_frames = int(chunk_frames)
        self.queue_depth = int(queue_depth)
        self.pipelined = bool(pipelined)

    def entry_path(self, key: CacheKey | str) -> Path:
        return self.root / (key if isinstance(key, str) else key.digest)

    # Reading ------------------------------------------------------------------------------------------------
    def open(self, key: CacheKey | str, *, verify_checksums: bool = True) -> CacheEntry:
        """Open a complete entry or raise :class:`CacheEntryError` saying why it cannot be used.

        Args:
            key: a :class:`CacheKey` or an entry digest.
            verify_checksums: hash every chunk now (reads the whole entry once). With False, sizes are checked
                now and checksums as chunks are streamed by :meth:`CacheEntry.iter_chunks`.
        """
        path, meta = self._read_meta(key)
        bad = _bad_chunks(path, meta, checksums=verify_checksums, stop_at_first=True)
        if bad:
            raise CacheEntryError(bad[0].problem)
        entry = CacheEntry(path, meta)
        if verify_checksums:
            entry._verified.update(c["file"] for c in meta["chunks"])
        return entry

    def lookup(self, key: CacheKey, *, verify_checksums: bool = True) -> tuple[CacheEntry | None, str | None]:
        """``(entry, None)`` on a hit, ``(None, reason)`` on a miss; never returns an unusable entry."""
        try:
            return self.open(key, verify_checksums=verify_checksums), None
        except CacheEntryError as error:
            return None, str(error)

    def verify(self, key: CacheKey | str, *, checksums: bool = True) -> VerifyReport:
        """Check one entry and report every bad chunk (where :meth:`open` stops at the first).

        Args:
            key: a :class:`CacheKey` or an entry digest.
            checksums: hash every chunk (reads the whole entry); with False only presence and sizes are checked,
                which is instant but misses a chunk corrupted in place.
        """
        try:
            path, meta = self._read_meta(key)
        except CacheEntryError as error:
            return VerifyReport(self.entry_path(key), str(error), [], checksums)
        return VerifyReport(path, None, _bad_chunks(path, meta, checksums=checksums), checksums, meta)

    def list_entries(self, *, checksums: bool = False) -> list[dict[str, Any]]:
        """One row per entry folder with its ``state``: complete, corrupted (bad chunks), unfinished or unusable.

        Args:
            checksums: hash every chunk of every entry (slow: reads the whole cache); by default only chunk sizes
                are checked, which finds truncated and missing chunks.
        """
        rows: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return rows
        for path in sorted(p for p in self.root.iterdir() if p.is_dir()):
            report = self.verify(path.name, checksums=checksums)
            if report.meta is not None:
                row = CacheEntry(path, report.meta).summary()
                if report.bad_chunks:
                    row.update(
                        complete=False,
                        state="corrupted",
                        bad_chunks=[bad.file for bad in report.bad_chunks],
                        problem=report.bad_chunks[0].problem,
                    )
                else:
                    row["state"] = "complete"
                rows.append(row)
                continue
            row = {
                "digest": path.name,
                "complete": False,
                "state": "unusable",
                "path": str(path),
                "problem": report.problem,
            }
            if (path / _PROGRESS).is_file():
                row["state"] = "unfinished"
                try:
                    progress = _read_json(path / _PROGRESS)
                    row["source"] = progress.get("source", {}).get("path")
                    row["finished_chunks"] = len(progress.get("chunks", []))
                except CacheEntryError:
                    pass
            rows.append(row)
        return rows

    def _read_meta(self, key: CacheKey | str) -> tuple[Path, dict[str, Any]]:
        """The entry's sidecar, checked on its own (not its chunks); `CacheEntryError` says what is wrong."""
        path = self.entry_path(key)
        meta_path = path / _META
        if not meta_path.is_file():
            state = (
                "an unfinished ingestion (resume it with `llamavid ingest`)"
                if (path / _PROGRESS).is_file()
                else "no entry"
            )
            raise CacheEntryError(f"cache entry {path}: {state}.")
        meta = _read_json(meta_path)
        if meta.get("format_version") != FORMAT_VERSION:
            raise CacheEntryError(
                f"cache entry {path}: format version {meta.get('format_version')!r}, this llamavid reads "
                f"{FORMAT_VERSION}; re-ingest the video."
            )
        if not meta.get("complete"):
            raise CacheEntryError(f"cache entry {path}: marked incomplete.")
        if isinstance(key, CacheKey) and meta.get("key") != key.to_dict():
            raise CacheEntryError(
                f"cache entry {path}: its recorded key does not match the requested one (stale)."
            )
        try:
            chunks = meta["chunks"]
            frames = sum(int(c["frames"]) for c in chunks)
            if frames != int(meta["num_frames"]) or len(meta["timestamps"]) != frames:
                raise CacheEntryError(
                    f"cache entry {path}: chunks hold {frames} frames, sidecar says {meta['num_frames']}."
                )
            for index, chunk in enumerate(chunks):
                if chunk["file"] != _chunk_name(index) or not str(chunk["sha256"]) or int(chunk["bytes"]) < 0:
                    raise CacheEntryError(f"cache entry {path}: chunk record {index} is malformed.")
            tokens, channels = meta["feature_shape"]
            int(tokens), int(channels)
        except CacheEntryError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise CacheEntryError(f"cache entry {path}: malformed sidecar ({error!r}).") from error
        return path, meta

    # Writing ------------------------------------------------------------------------------------------------
    def make_key(
        self,
        video: str | os.PathLike[str],
        encoder: FrameEncoderLike,
        *,
        fps: float | None = 1.0,
        num_frames: int | None = None,
        max_frames: int | None = None,
        video_sha256: str | None = None,
    ) -> CacheKey:
        return CacheKey(
            video_sha256=video_sha256 or file_sha256(video),
            fps=None if num_frames is not None else (None if fps is None else float(fps)),
            num_frames=num_frames,
            max_frames=max_frames,
            encoder_id=encoder.encoder_id,
            preprocessing_id=encoder.preprocessing_id,
        )

    def ingest(
        self,
        video: str | os.PathLike[str],
        encoder: FrameEncoderLike,
        *,
        fps: float | None = 1.0,
        num_frames: int | None = None,
        max_frames: int | None = None,
        subtitles: str | os.PathLike[str] | SubtitleTrack | Sequence[SubtitleCue] | None = None,
        batch_size: int = 16,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> IngestReport:
        """Make the video's entry complete and sound (see :meth:`ensure`), and store subtitles with it.

        Args:
            video: the video file.
            encoder: see :class:`FrameEncoderLike`.
            fps / num_frames / max_frames: sampling, as for ``iter_video_frames``.
            subtitles: a subtitle file, a `SubtitleTrack` (a file already read, e.g. with an explicit encoding) or
                parsed cues, aligned to the frames (docs/architecture.md §4) and stored in the sidecar. They do not
                change the features, so on a hit they just replace the stored ones.
            batch_size: frames per encoder call (bounds activation memory).
            progress: called as ``progress(frames_done, frames_expected_or_None)`` after each chunk.

        Raises:
            MediaError: the video or subtitles are unusable (raised before anything is written).
            CacheWriteError: the cache folder cannot take the write (a full disk); finished chunks are kept.
        """
        if batch_size < 1:
            raise InvalidInputError(f"--batch-size must be at least 1, got {batch_size}.")
        info = inspect_video(video)  # names the file in every failure: missing, empty, truncated, no stream
        cues, subtitle_source = self._load_cues(subtitles)
        key = self.make_key(video, encoder, fps=fps, num_frames=num_frames, max_frames=max_frames)
        return self._ensure(
            video, info, key, encoder, batch_size, progress, cues=cues, subtitle_source=subtitle_source
        )

    def ensure(
        self,
        video: str | os.PathLike[str],
        encoder: FrameEncoderLike,
        *,
        fps: float | None = 1.0,
        num_frames: int | None = None,
        max_frames: int | None = None,
        batch_size: int = 16,
        progress: Callable[[int, int | None], None] | None = None,
        info: VideoInfo | None = None,
    ) -> IngestReport:
        """A complete entry for this video, sampling and encoder whose every chunk passes its sha256 check.

        What a reader calls instead of :meth:`lookup` followed by :meth:`ingest`: a sound entry is a hit (its
        chunks hashed once here, so streaming them later does not hash again); an entry whose sidecar is sound
        but some chunks are missing, truncated or corrupted gets only those chunks re-encoded, decoding the video
        no further than the last of them; anything else is encoded, resuming an interrupted run. Subtitles stored
        with the entry are kept.

        `info` is the video's probe when the caller already has it (a file from an untrusted source should be
        probed in a child process, `llamavid.data.probe_video`, before it gets here).

        Raises:
            MediaError: the video is unusable. CacheWriteError: the cache cannot take the write.
        """
        if batch_size < 1:
            raise InvalidInputError(f"--batch-size must be at least 1, got {batch_size}.")
        info = info if info is not None else inspect_video(video)
        key = self.make_key(video, encoder, fps=fps, num_frames=num_frames, max_frames=max_frames)
        return self._ensure(video, info, key, encoder, batch_size, progress)

    def remove(self, key: CacheKey | str) -> None:
        """Delete an entry folder (complete or not)."""
        shutil.rmtree(self.entry_path(key), ignore_errors=True)

    # Writing an entry piece by piece ---------------------------------------------------------------------------
    # What ingestion itself uses, public for writers that produce features elsewhere (Ray encoder actors, live
    # sessions). The order keeps every entry atomic and resumable: `begin_entry`, then for each chunk
    # `write_chunk` and `write_progress`, and `finish_entry` last.
    def begin_entry(self, key: CacheKey) -> list[dict[str, Any]]:
        """Make `key`'s entry folder ready for chunk writes; return the finished chunks of an interrupted run.

        A complete sidecar left there (stale or corrupted) is removed first, so until :meth:`finish_entry`
        readers see an unfinished entry, never a complete one whose chunks change under them. The returned
        chunk records (as :meth:`write_chunk` made them) are verified against their sha256; the first bad one
        and everything after it are dropped, to be written again.

        Raises:
            CacheWriteError: the folder cannot be created.
        """
        path = self.entry_path(key)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _write_error(self.root, path, 0, error) from error
        (path / _META).unlink(missing_ok=True)
        return self._resumable_chunks(path, key)

    def write_chunk(
        self,
        entry: CacheKey | str,
        index: int,
        features: Any,
        timestamps: Any,
        *,
        frames_left: int | None = None,
    ) -> dict[str, Any]:
        """Store chunk `index` of an entry, atomically, and return its record.

        Args:
            entry: the entry's key or digest (its folder is created if needed).
            index: the chunk's position in the entry; it names the file (``chunk_00007.safetensors``).
            features: ``(t, 1+N, C)`` features, a torch tensor or numpy array; stored as float16.
            timestamps: ``(t,)`` seconds of the chunk's frames.
            frames_left: frames still to store after this chunk, to say how much room a full disk lacks.

        Returns:
            ``file``, ``start``, ``frames``, ``bytes`` and ``sha256`` (what the sidecar lists per chunk), plus
            ``timestamps`` and ``feature_shape`` (what the progress file also keeps, to resume).

        Raises:
            InvalidInputError: features that are not ``(t, tokens, channels)`` with one row per timestamp.
            CacheWriteError: the cache cannot take the write (a full disk); earlier chunks stay valid.
        """
        from safetensors.numpy import save

        array = _to_fp16_numpy(features)
        times = np.ascontiguousarray(timestamps, dtype=np.float64).reshape(-1)
        if array.shape[0] != len(times) or not len(times):
            raise InvalidInputError(
                f"a cache chunk needs one feature row per timestamp, got {array.shape[0]} rows for "
                f"{len(times)} timestamps."
            )
        data = save(
            {"features": array, "timestamps": times}, metadata={"format_version": str(FORMAT_VERSION)}
        )
        path = self.entry_path(entry)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _write_error(self.root, path, len(data), error) from error
        name = _chunk_name(index)
        remaining = None if frames_left is None else len(data) * frames_left // len(times)
        self._write(path / name, data, remaining=remaining)
        return {
            "file": name,
            "start": float(times[0]),
            "frames": len(times),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "timestamps": [float(t) for t in times],
            "feature_shape": [int(array.shape[1]), int(array.shape[2])],
        }

    def write_progress(
        self, key: CacheKey, source: Mapping[str, Any], chunks: Sequence[Mapping[str, Any]]
    ) -> None:
        """Record the finished chunks (records from :meth:`write_chunk`, in order) of an entry being written.

        Atomic. :meth:`begin_entry` resumes from it after an interruption. `source` describes the video
        (``path``, ``sha256``, ``bytes``).
        """
        progress = {"format_version": FORMAT_VERSION, "key": key.to_dict(), "source": dict(source)}
        self._write_json(self.entry_path(key) / _PROGRESS, {**progress, "chunks": list(chunks)})

    def finish_entry(
        self,
        key: CacheKey,
        source: Mapping[str, Any],
        chunks: Sequence[Mapping[str, Any]],
        *,
        duration: float | None,
        subtitles: Mapping[str, Any] | None = None,
    ) -> CacheEntry:
        """Commit an entry: write its sidecar with ``complete: true`` (the last, atomic step), drop the progress.

        Args:
            key: the entry's key.
            source: the video (``path``, ``sha256``, ``bytes``).
            chunks: every chunk's record from :meth:`write_chunk` (or :meth:`begin_entry`), in order.
            duration: the video's length in seconds.
            subtitles: the sidecar's ``subtitles`` block, if any.
        """
        if not chunks:
            raise InvalidInputError(f"cache entry {self.entry_path(key)}: an entry needs at least one chunk.")
        timestamps = [float(t) for chunk in chunks for t in chunk["timestamps"]]
        records = [_sidecar_chunk(chunk) for chunk in chunks]
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "digest": key.digest,
            "key": key.to_dict(),
            "source": dict(source),
            "encoder_id": key.encoder_id,
            "preprocessing_id": key.preprocessing_id,
            "fps": key.fps,
            "duration": duration,
            "num_frames": len(timestamps),
            "feature_shape": list(chunks[0]["feature_shape"]),
            "dtype": "float16",
            "timestamps": timestamps,
            "subtitles": dict(subtitles) if subtitles is not None else None,
            "chunks": records,
            "complete": True,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = self.entry_path(key)
        self._write_json(path / _META, meta)
        (path / _PROGRESS).unlink(missing_ok=True)
        entry = CacheEntry(path, meta)
        entry._verified.update(c["file"] for c in records)  # written from memory, or hashed on resume
        return entry

    def read_sidecar(self, entry: CacheKey | str) -> dict[str, Any]:
        """An entry's ``meta.json`` as stored, without checking it (:meth:`open` checks an entry for use).

        Raises:
            CacheEntryError: no sidecar, or not a readable JSON object.
        """
        return _read_json(self.entry_path(entry) / _META)

    def write_sidecar(self, entry: CacheKey | str, meta: Mapping[str, Any]) -> None:
        """Replace an entry's ``meta.json`` atomically (readers see the old or the new one, never half).

        For writers that keep a sidecar up to date themselves (live sessions, chunk repairs); a sidecar with
        ``complete: true`` must list only chunks already written.

        Raises:
            CacheWriteError: the cache cannot take the write.
        """
        self._write_json(self.entry_path(entry) / _META, meta)

    # Internals ----------------------------------------------------------------------------------------------
    def _ensure(
        self,
        video: str | os.PathLike[str],
        info: Any,
        key: CacheKey,
        encoder: FrameEncoderLike,
        batch_size: int,
        progress: Callable[[int, int | None], None] | None,
        *,
        cues: list[SubtitleCue] | None = None,
        subtitle_source: str | None = None,
    ) -> IngestReport:
        start = time.perf_counter()
        report = self.verify(key, checksums=True)
        if report.ok:
            assert report.meta is not None
            entry = CacheEntry(report.path, report.meta)
            entry._verified.update(c["file"] for c in entry.meta["chunks"])
            if cues is not None:
                entry.meta["subtitles"] = self._subtitle_meta(cues, subtitle_source, entry.timestamps, info)
                self.write_sidecar(key, entry.meta)
            if progress:
                progress(entry.num_frames, entry.num_frames)
            return IngestReport(entry, True, 0, 0, time.perf_counter() - start)
        reason = report.problem
        if report.repairable:
            try:
                return self._repair(
                    video, info, key, report, encoder, batch_size, progress, cues, subtitle_source, start
                )
            except _RepairImpossibleError as error:
                logger.warning("%s; encoding the whole video again.", error)
                reason = str(error)
        return self._encode(
            video, info, key, encoder, batch_size, progress, cues, subtitle_source, start, reason
        )

    def _repair(
        self,
        video: str | os.PathLike[str],
        info: Any,
        key: CacheKey,
        report: VerifyReport,
        encoder: FrameEncoderLike,
        batch_size: int,
        progress: Callable[[int, int | None], None] | None,
        cues: list[SubtitleCue] | None,
        subtitle_source: str | None,
        start: float,
    ) -> IngestReport:
        """Re-encode only the bad chunks of an entry whose sidecar is sound, rewriting the sidecar after each.

        The decoder cannot start mid-video, so frames are decoded from the start, but only up to the last bad
        chunk, and only the bad chunks go through the encoder. An interrupted repair leaves a valid entry in which
        the chunks not yet repaired are still bad, so the next run carries on.
        """
        path, meta = report.path, report.meta
        assert meta is not None
        chunks: list[dict[str, Any]] = meta["chunks"]
        bad = {item.index for item in report.bad_chunks}
        logger.warning(
            "cache entry %s: re-encoding %d of %d chunks (%s)",
            path,
            len(bad),
            len(chunks),
            "; ".join(item.problem.rsplit(": ", 1)[-1] for item in report.bad_chunks),
        )
        if cues is not None:
            meta["subtitles"] = self._subtitle_meta(
                cues, subtitle_source, np.asarray(meta["timestamps"]), info
            )
        offsets = np.concatenate([[0], np.cumsum([int(c["frames"]) for c in chunks])]).tolist()
        recorded = {index: meta["timestamps"][offsets[index] : offsets[index + 1]] for index in bad}
        repaired = 0

        def other_frames(index: int) -> LlamaVidError:
            return _RepairImpossibleError(
                f"cache entry {path}: {video} now decodes to other frames for chunk {index}"
            )

        def write(index: int, features: np.ndarray, timestamps: np.ndarray) -> None:
            nonlocal repaired
            if [int(features.shape[1]), int(features.shape[2])] != [int(n) for n in meta["feature_shape"]]:
                raise _RepairImpossibleError(
                    f"cache entry {path}: the encoder now gives features of shape {list(features.shape[1:])}"
                )
            record = self.write_chunk(key, index, features, timestamps)
            chunks[index] = _sidecar_chunk(record)
            self.write_sidecar(key, meta)
            repaired += 1
            if progress:
                progress(int(offsets[index + 1]), int(meta["num_frames"]))

        decoded = _Decoded(duration=info.duration)
        batches = self._decode_batches(
            video,
            key,
            batch_size,
            decoded,
            resize=getattr(encoder, "decode_resize", None),
            recorded=recorded,
            wanted=bad,
            stop_after=max(bad),
            mismatch=other_frames,
        )
        stats = self._run_pipeline(batches, encoder, write)
        if repaired != len(bad):
            raise _RepairImpossibleError(
                f"cache entry {path}: {video} gave fewer chunks than the entry holds ({len(chunks)})"
            )
        entry = CacheEntry(path, meta)
        entry._verified.update(c["file"] for c in chunks)  # hashed by verify(), or just written from memory
        logger.info("repaired %s: %d chunks re-encoded, %d kept", path, repaired, len(chunks) - repaired)
        problems = f"{len(bad)} bad chunk(s): {report.bad_chunks[0].problem}"
        return IngestReport(
            entry, False, repaired, len(chunks) - repaired, time.perf_counter() - start, problems, stats
        )

    def _encode(
        self,
        video: str | os.PathLike[str],
        info: Any,
        key: CacheKey,
        encoder: FrameEncoderLike,
        batch_size: int,
        progress: Callable[[int, int | None], None] | None,
        cues: list[SubtitleCue] | None,
        subtitle_source: str | None,
        start: float,
        reason: str | None,
    ) -> IngestReport:
        """Encode the whole entry, resuming the finished chunks of an interrupted run with the same key."""
        path = self.entry_path(key)
        done = self.begin_entry(key)
        source = {
            "path": os.path.abspath(os.fspath(video)),
            "sha256": key.video_sha256,
            "bytes": os.path.getsize(video),
        }
        expected = expected_frames(info, fps=key.fps, num_frames=key.num_frames, max_frames=key.max_frames)
        chunks: list[dict[str, Any]] = list(done)
        frames_done = sum(len(c["timestamps"]) for c in done)

        def differ(index: int) -> LlamaVidError:
            return VideoDecodeError(
                f"{video}: decoded timestamps differ from the interrupted run's; delete {path} and retry.",
                video,
            )

        def write(index: int, features: np.ndarray, timestamps: np.ndarray) -> None:
            nonlocal frames_done
            left = None if expected is None else max(expected - frames_done - len(timestamps), 0)
            chunks.append(self.write_chunk(key, index, features, timestamps, frames_left=left))
            frames_done += len(timestamps)
            self.write_progress(key, source, chunks)
            if progress:
                progress(frames_done, expected)

        decoded = _Decoded(duration=info.duration)
        batches = self._decode_batches(
            video,
            key,
            batch_size,
            decoded,
            resize=getattr(encoder, "decode_resize", None),
            recorded={index: chunk["timestamps"] for index, chunk in enumerate(done)},
            wanted=lambda index: index >= len(done),
            stop_after=None,
            mismatch=differ,
        )
        stats = self._run_pipeline(batches, encoder, write)
        if not chunks:
            raise VideoDecodeError(f"{video}: no frames could be sampled from the video.", video)
        subtitles = None
        if cues is not None:
            timestamps = np.asarray([t for c in chunks for t in c["timestamps"]])
            subtitles = self._subtitle_meta(cues, subtitle_source, timestamps, info)
        entry = self.finish_entry(key, source, chunks, duration=decoded.duration, subtitles=subtitles)
        logger.info(
            "cached %d frames of %s in %s (%d chunks encoded, %d reused; %s)",
            entry.num_frames,
            video,
            path,
            len(chunks) - len(done),
            len(done),
            stats.describe(),
        )
        return IngestReport(
            entry, False, len(chunks) - len(done), len(done), time.perf_counter() - start, reason, stats
        )

    def _decode_batches(
        self,
        video: str | os.PathLike[str],
        key: CacheKey,
        batch_size: int,
        decoded: _Decoded,
        *,
        recorded: Mapping[int, Sequence[float]],
        wanted: Callable[[int], bool] | set[int],
        stop_after: int | None,
        mismatch: Callable[[int], BaseException],
        resize: tuple[int, int] | None = None,
    ) -> Iterator[PipelineItem]:
        """The decode stage: encoder batches of the chunks to encode, with their chunk index.

        Chunk boundaries are those of ``iter_video_frames(chunk_size=chunk_frames)`` (every `chunk_frames`
        frames, and wherever the picture size changes) and each chunk is cut into batches of `batch_size` from
        its first frame, so the encoder sees exactly the batches the sequential loop gave it. The video is read in
        pieces of one batch, so the first batch reaches the encoder without waiting for a whole chunk. Chunks
        in `recorded` must decode to those timestamps (else `mismatch(index)` is raised); decoding stops once
        chunk `stop_after` is complete. `resize` ``(size, crop_size)``: the decoder's scaler resizes and crops
        (the encoder's ``decode_resize``).
        """
        is_wanted = wanted.__contains__ if isinstance(wanted, set) else wanted
        pieces = iter_video_frames(
            video,
            fps=key.fps,
            num_frames=key.num_frames,
            max_frames=key.max_frames,
            chunk_size=min(batch_size, self.chunk_frames),
            size=None if resize is None else resize[0],
            crop_size=None if resize is None else resize[1],
        )
        offset = 0  # frames of the current chunk already seen
        try:
            for index, frames, timestamps, last in _batched(pieces, batch_size, self.chunk_frames, decoded):
                expected = recorded.get(index)
                if expected is not None:
                    previous = np.asarray(expected[offset : offset + len(timestamps)], dtype=np.float64)
                    complete = not last or offset + len(timestamps) == len(expected)
                    if (
                        previous.shape != timestamps.shape
                        or not complete
                        or not np.allclose(timestamps, previous, atol=1e-6)
                    ):
                        raise mismatch(index)
                offset = 0 if last else offset + len(timestamps)
                if is_wanted(index):
                    yield PipelineItem(len(timestamps), frames, _BatchTag(index, timestamps, last))
                if last and stop_after is not None and index >= stop_after:
                    return  # the chunks after it are sound: stop decoding
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # releases the container now rather than when the generator is collected

    def _run_pipeline(
        self,
        batches: Iterator[PipelineItem],
        encoder: FrameEncoderLike,
        store: Callable[[int, np.ndarray, np.ndarray], None],
    ) -> PipelineStats:
        """Run decode → preprocess → encode → write; `store(index, features fp16, timestamps)` gets whole chunks."""
        features: list[np.ndarray] = []
        timestamps: list[np.ndarray] = []

        def write(item: PipelineItem) -> None:
            tag: _BatchTag = item.tag
            part = _to_fp16_numpy(item.data)
            if part.shape[0] != len(tag.timestamps):
                raise InvalidInputError(
                    f"the encoder returned {part.shape[0]} feature rows for {len(tag.timestamps)} frames."
                )
            features.append(part)
            timestamps.append(tag.timestamps)
            if not tag.last:
                return
            chunk = np.concatenate(features) if len(features) > 1 else features[0]
            times = np.concatenate(timestamps) if len(timestamps) > 1 else timestamps[0]
            features.clear()
            timestamps.clear()
            store(tag.chunk, chunk, times)

        preprocess = getattr(encoder, "preprocess", None)
        encode = getattr(encoder, "encode", None)
        if not (callable(preprocess) and callable(encode)):  # a plain callable encoder: one stage does both
            preprocess, encode = _unchanged, encoder
        return run_pipeline(
            batches, preprocess, encode, write, depth=self.queue_depth, threaded=self.pipelined
        )

    # `_write`, `_write_json` and the module's `_read_json` and `_chunk_name` are also used by live sessions
    # until they switch to `write_chunk`, `write_sidecar` and `read_sidecar`.
    def _write(self, path: Path, data: bytes, *, remaining: int | None = None) -> None:
        """Atomic write; a failure (full disk above all) becomes a `CacheWriteError` saying what to do."""
        try:
            atomic_write_bytes(path, data)
        except OSError as error:
            raise _write_error(self.root, path, len(data), error, remaining) from error

    def _write_json(self, path: Path, value: Mapping[str, Any]) -> None:
        self._write(path, (json.dumps(value, indent=1) + "\n").encode())

    @staticmethod
    def _load_cues(
        subtitles: str | os.PathLike[str] | SubtitleTrack | Sequence[SubtitleCue] | None,
    ) -> tuple[list[SubtitleCue] | None, str | None]:
        if subtitles is None:
            return None, None
        if isinstance(subtitles, SubtitleTrack):
            return list(subtitles.cues), os.path.abspath(subtitles.path)
        if isinstance(subtitles, (str, os.PathLike)):
            return read_subtitles(subtitles), os.path.abspath(os.fspath(subtitles))
        return list(subtitles), None

    @staticmethod
    def _subtitle_meta(
        cues: Sequence[SubtitleCue], source: str | None, timestamps: np.ndarray, info: Any
    ) -> dict[str, Any]:
        per_frame = (
            align_subtitles(
                cues, timestamps, duration=getattr(info, "duration", None), source=source or "<subtitles>"
            )
            if cues
            else [""] * len(timestamps)
        )
        return {
            "path": source,
            "cues": [{"start": c.start, "end": c.end, "text": c.text} for c in cues],
            "per_frame": per_frame,
        }

    def _resumable_chunks(self, path: Path, key: CacheKey) -> list[dict[str, Any]]:
        """The finished chunks of an interrupted run with the same key, verified; drop anything after a bad one."""
        progress_path = path / _PROGRESS
        if not progress_path.is_file():
            return []
        try:
            progress = _read_json(progress_path)
        except CacheEntryError as error:
            logger.warning("ignoring unreadable progress file: %s", error)
            return []
        if progress.get("key") != key.to_dict() or progress.get("format_version") != FORMAT_VERSION:
            return []
        kept: list[dict[str, Any]] = []
        for index, chunk in enumerate(progress.get("chunks", [])):
            if chunk.get("file") != _chunk_name(index):
                break
            try:
                _check_chunk(path / chunk["file"], chunk, checksum=True, entry=path)
            except CacheEntryError as error:
                logger.warning("re-encoding from chunk %d: %s", index, error)
                break
            kept.append(chunk)
        if kept:
            logger.info("resuming %s: %d finished chunks kept", path, len(kept))
        return kept


def _chunk_name(index: int) -> str:
    return f"chunk_{index:05d}.safetensors"


def _sidecar_chunk(record: Mapping[str, Any]) -> dict[str, Any]:
    """A chunk record as the sidecar lists it (the progress file also keeps timestamps and shape, to resume)."""
    return {k: v for k, v in record.items() if k not in ("timestamps", "feature_shape")}


def _unchanged(frames: Any) -> Any:
    return frames


@dataclass
class _Decoded:
    """What the decode stage learnt on the way (read by the caller once the pipeline has ended)."""

    duration: float | None = None
    frames: int = 0


@dataclass(frozen=True)
class _BatchTag:
    """Where a batch belongs: its cache chunk, its frames' timestamps, and whether it closes the chunk."""

    chunk: int
    timestamps: np.ndarray
    last: bool


def _batched(
    pieces: Iterator[Frames], batch_size: int, chunk_frames: int, decoded: _Decoded
) -> Iterator[tuple[int, np.ndarray, np.ndarray, bool]]:
    """Regroup decoded pieces into ``(chunk index, frames, timestamps, closes the chunk)`` encoder batches.

    A chunk closes after `chunk_frames` frames or where the picture size changes (as ``iter_video_frames`` cuts
    its chunks); within a chunk, batches start every `batch_size` frames from its first one. A batch that fills
    up before its chunk does is held until the next frame says whether the chunk goes on.
    """
    index, filled = 0, 0  # current chunk, frames in it so far
    shape: tuple[int, ...] | None = None
    frames: list[np.ndarray] = []  # parts of the batch being filled
    times: list[np.ndarray] = []
    held: tuple[np.ndarray, np.ndarray] | None = None

    def join() -> tuple[np.ndarray, np.ndarray]:
        batch = (np.concatenate(frames) if len(frames) > 1 else frames[0], np.concatenate(times))
        frames.clear()
        times.clear()
        return batch

    for piece in pieces:
        decoded.duration = piece.duration
        decoded.frames += len(piece)
        if filled and piece.frames.shape[1:] != shape:  # a new picture size starts a new chunk
            if frames:
                if held is not None:
                    yield index, *held, False
                yield index, *join(), True
            elif held is not None:
                yield index, *held, True
            held, index, filled = None, index + 1, 0
        shape = piece.frames.shape[1:]
        position = 0
        while position < len(piece):
            if held is not None:  # more frames of its chunk follow: it was not the last batch
                yield index, *held, False
                held = None
            size = sum(len(part) for part in times)
            take = min(len(piece) - position, batch_size - size, chunk_frames - filled)
            frames.append(piece.frames[position : position + take])
            times.append(piece.timestamps[position : position + take])
            position += take
            filled += take
            if filled == chunk_frames:
                yield index, *join(), True
                index, filled = index + 1, 0
            elif size + take == batch_size:
                held = join()
    if frames:
        if held is not None:
            yield index, *held, False
        yield index, *join(), True
    elif held is not None:
        yield index, *held, True
