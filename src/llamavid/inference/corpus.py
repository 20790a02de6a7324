"""Ingest a corpus of videos into the feature cache: in one process, or spread over a Ray cluster with Ray Data.

Both paths leave the same cache entries (same chunk files byte for byte, same sidecar but its creation time) as
`Engine.ingest` does video by video, so every command reads them the same way (docs/architecture.md §7).

With Ray (``ingest_corpus(..., ray_address="auto")``):

* **Ray tasks decode.** Each video is one task: it hashes the file, skips a complete entry, and otherwise decodes
  the video chunk by chunk (``FeatureCache.chunk_frames`` frames, as the cache stores them) and resizes and crops
  each frame to the processor's input size (the processor's own PIL bicubic + centre crop), so rows stay small
  and the encoder does no resizing.
* **An actor pool encodes.** Each actor loads the model once and writes each chunk file with the cache's own
  chunk writer (atomic); one GPU per actor when the cluster has GPUs, otherwise CPU actors with half a CPU each,
  so the decode tasks always find a free CPU (an actor pool holding every CPU starves its own input).
* **The driver commits.** It records finished chunks in the entry's progress file and writes the sidecar last,
  exactly as `FeatureCache` does, so a killed worker or a killed driver loses at most the chunks in flight: a
  rerun verifies and keeps every finished chunk and encodes the rest.

A video that fails (unreadable, no frames, an encoder error) is recorded with its error in the summary file and
the run goes on; ``retry_failed`` reruns only those.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llamavid.errors import DependencyError, InvalidInputError, LlamaVidError

__all__ = ["CorpusReport", "ingest_corpus", "read_manifest", "read_summary_failures"]

logger = logging.getLogger(__name__)

# Half a CPU per CPU encoder actor: with whole CPUs a 2-core machine gives both to the actors and the decode
# tasks that feed them never get scheduled.
_CPU_ACTOR_SHARE = 0.5
_SUMMARY_VERSION = 1


@dataclass
class CorpusReport:
    """What one corpus run did.

    Attributes:
        completed: one row per video whose entry is complete (``video``, ``digest``, ``frames``, ``status``:
            ``cached`` when it already was, ``encoded`` otherwise).
        failed: one row per video that failed (``video``, ``error`` class name, ``message``).
        summary_path: where the summary JSON was written.
        seconds: wall time of the run.
        frames_encoded: frames that went through the encoder in this run.
    """

    completed: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    summary_path: Path | None = None
    seconds: float = 0.0
    frames_encoded: int = 0


def read_manifest(path: str | os.PathLike[str]) -> list[str]:
    """Video paths listed in a manifest: one per line (``#`` comments and blank lines ignored) or JSON lines
    with a ``"video"`` field. Relative paths are relative to the manifest's folder.

    Raises:
        InvalidInputError: the manifest cannot be read, or lists no video.
    """
    manifest = Path(path)
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{manifest}: cannot read the manifest ({error}).") from error
    videos: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                line = str(json.loads(line)["video"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise InvalidInputError(
                    f'{manifest}:{number}: a JSON line needs a "video" field ({error}).'
                ) from error
        video = Path(line).expanduser()
        videos.append(os.path.abspath(video if video.is_absolute() else manifest.parent / video))
    if not videos:
        raise InvalidInputError(f"{manifest}: lists no video (one path per line).")
    return list(dict.fromkeys(videos))  # a video listed twice is ingested once


def read_summary_failures(path: str | os.PathLike[str]) -> list[str]:
    """The videos a previous run's summary file lists as failed (what ``--retry-failed`` reruns)."""
    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        return [str(row["video"]) for row in summary["failed"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InvalidInputError(
            f"{path}: not a summary written by `llamavid ingest --manifest` ({error}); run without "
            "--retry-failed first."
        ) from error


def _failure(video: str, error: BaseException) -> dict[str, Any]:
    return {"video": video, "error": type(error).__name__, "message": str(error).splitlines()[0][:2000]}


def _write_summary(path: Path, report: CorpusReport, total: int, cache_root: Path, mode: str) -> None:
    from llamavid.data.feature_cache import atomic_write_bytes

    summary = {
        "version": _SUMMARY_VERSION,
        "mode": mode,
        "cache_dir": str(cache_root),
        "videos": total,
        "completed": report.completed,
        "failed": report.failed,
        "frames_encoded": report.frames_encoded,
        "seconds": round(report.seconds, 3),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(summary, indent=1) + "\n").encode())


# ---------------------------------------------------------------------------------------------------------
# One process.


def _ingest_locally(
    engine: Any,
    videos: Sequence[str],
    report: CorpusReport,
    *,
    fps: float | None,
    max_frames: int | None,
    batch_size: int,
    progress: Callable[[dict[str, Any]], None] | None,
) -> None:
    for video in videos:
        try:
            result = engine.ingest(video, fps=fps, max_frames=max_frames, batch_size=batch_size)
        except (LlamaVidError, OSError) as error:
            report.failed.append(_failure(video, error))
            event = {"video": video, "status": "failed", "error": report.failed[-1]["message"]}
        else:
            entry = result.entry
            status = "cached" if result.hit else "encoded"
            if not result.hit:
                report.frames_encoded += entry.num_frames
            report.completed.append(
                {"video": video, "digest": entry.digest, "frames": entry.num_frames, "status": status}
            )
            event = {"video": video, "status": status, "frames": entry.num_frames}
        if progress:
            progress({**event, "done": len(report.completed) + len(report.failed), "total": len(videos)})


# ---------------------------------------------------------------------------------------------------------
# Ray: decode tasks, encoder actors, the driver's commit.


@dataclass(frozen=True)
class _Spec:
    """What decode tasks and encoder actors need (plain data: it is pickled to every worker)."""

    model: str | None
    device: str
    dtype: str
    cache_root: str
    chunk_frames: int
    fps: float | None
    max_frames: int | None
    batch_size: int
    encoder_id: str
    preprocessing_id: str


def _row(video: str, kind: str, **fields: Any) -> dict[str, Any]:
    """One row between the stages; every row has every column so Ray Data sees one schema."""
    row: dict[str, Any] = {
        "video": video,
        "kind": kind,
        "index": -1,
        "pixels": b"",
        "shape": "",
        "info": "{}",
    }
    row.update(fields)
    return row


class _Decoder:
    """Ray task body: a video's sampled frames, resized and cropped, one row per cache chunk still to encode."""

    def __init__(self, spec: _Spec, image_processor: Any) -> None:
        self.spec = spec
        self.image_processor = image_processor

    def __call__(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        video = str(item["video"])
        try:
            yield from self._decode(video)
        except Exception as error:  # reported per video in the summary; the corpus run goes on
            yield _row(video, "error", info=json.dumps(_failure(video, error)))

    def _decode(self, video: str) -> Iterator[dict[str, Any]]:
        from PIL import Image

        from llamavid.data.errors import VideoDecodeError
        from llamavid.data.feature_cache import CacheKey, FeatureCache, file_sha256
        from llamavid.data.video import iter_video_frames, probe_video

        spec = self.spec
        cache = FeatureCache(spec.cache_root, chunk_frames=spec.chunk_frames)
        probe_video(video)  # the same checks, in a child process, as single-process ingest
        key = CacheKey(
            video_sha256=file_sha256(video),
            fps=None if spec.fps is None else float(spec.fps),
            num_frames=None,
            max_frames=spec.max_frames,
            encoder_id=spec.encoder_id,
            preprocessing_id=spec.preprocessing_id,
        )
        report = cache.verify(key, checksums=True)
        if report.ok:
            assert report.meta is not None
            yield _row(
                video, "cached", info=json.dumps({"digest": key.digest, "frames": report.meta["num_frames"]})
            )
            return
        path = cache.entry_path(key)
        done = cache.begin_entry(key)  # a stale or corrupt entry is rebuilt, resuming its finished chunks
        duration = None
        count = 0
        for index, frames in enumerate(
            # One decoder per task: Ray already runs one decode task per core, so segment-parallel decoding
            # inside a task would only oversubscribe the cores.
            iter_video_frames(
                video, fps=spec.fps, max_frames=spec.max_frames, chunk_size=spec.chunk_frames, workers=1
            )
        ):
            count = index + 1
            duration = frames.duration
            if index < len(done):
                if not np.allclose(frames.timestamps, done[index]["timestamps"], atol=1e-6):
                    raise VideoDecodeError(
                        f"{video}: decoded timestamps differ from the interrupted run's; delete {path} and retry.",
                        video,
                    )
                continue
            # The processor's own resize and crop (PIL bicubic, centre): the encoder's preprocessing then finds
            # frames of its input size and only normalises them, so features equal single-process ingest's.
            small = np.stack(
                [self.image_processor._resize_and_crop(Image.fromarray(frame)) for frame in frames.frames]
            )  # (t, crop, crop, 3) uint8
            info = {
                "digest": key.digest,
                "timestamps": frames.timestamps.tolist(),
                "duration": frames.duration,
            }
            yield _row(
                video,
                "chunk",
                index=index,
                pixels=small.tobytes(),
                shape=",".join(str(n) for n in small.shape),
                info=json.dumps(info),
            )
        if count == 0:
            raise VideoDecodeError(f"{video}: no frames could be sampled from the video.", video)
        source = {"path": os.path.abspath(video), "sha256": key.video_sha256, "bytes": os.path.getsize(video)}
        end = {"digest": key.digest, "key": key.to_dict(), "source": source, "chunks": count, "done": done}
        yield _row(video, "end", info=json.dumps({**end, "duration": duration}))


class _ChunkEncoder:
    """Ray Data actor: loads the model once; encodes chunk rows and writes them with the cache's chunk writer."""

    def __init__(self, spec: _Spec) -> None:
        from llamavid.data.feature_cache import FeatureCache
        from llamavid.inference.engine import Engine

        self.spec = spec
        engine = Engine.from_pretrained(spec.model, device=spec.device, dtype=spec.dtype, feature_cache=False)
        self.encoder = engine.frame_encoder
        if self.encoder.encoder_id != spec.encoder_id:
            raise LlamaVidError(
                f"the encoder actor loaded other vision weights ({self.encoder.encoder_id[:12]}) than the driver "
                f"hashed ({spec.encoder_id[:12]}); every node must see the same --model folder."
            )
        self.cache = FeatureCache(spec.cache_root, chunk_frames=spec.chunk_frames)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {"video": [], "kind": [], "index": [], "info": [], "worker": []}
        for video, kind, index, pixels, shape, info in zip(
            batch["video"], batch["kind"], batch["index"], batch["pixels"], batch["shape"], batch["info"],
            strict=True,
        ):  # fmt: skip
            video, kind, index, info = str(video), str(kind), int(index), str(info)
            if kind == "chunk":
                try:
                    kind, info = "written", self._write(video, index, bytes(pixels), str(shape), info)
                except Exception as error:  # reported per video; the actor stays usable
                    kind, info = "error", json.dumps(_failure(video, error))
            for column, value in zip(out, (video, kind, index, info, os.getpid()), strict=True):
                out[column].append(value)
        return {column: np.asarray(values) for column, values in out.items()}

    def _write(self, video: str, index: int, pixels: bytes, shape: str, info_text: str) -> str:
        from llamavid.data.video import Frames

        info = json.loads(info_text)
        frames = Frames(
            frames=np.frombuffer(pixels, dtype=np.uint8).reshape([int(n) for n in shape.split(",")]),
            timestamps=np.asarray(info["timestamps"], dtype=np.float64),
            fps=self.spec.fps,
            duration=float(info["duration"]),
            source=video,
        )
        # The batches the single-process pipeline gives the encoder: `batch_size` frames from the chunk's start.
        size = self.spec.batch_size
        features = [self.encoder(frames.frames[i : i + size]) for i in range(0, len(frames), size)]
        record = self.cache.write_chunk(
            info["digest"], index, np.concatenate([part.numpy() for part in features]), frames.timestamps
        )
        return json.dumps({"digest": info["digest"], "record": record})


class _Committer:
    """The driver's side: collects chunk records per video and writes progress and sidecar like FeatureCache."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.records: dict[str, dict[int, dict[str, Any]]] = {}
        self.ends: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, Any]] = {}

    def chunk(self, video: str, record: dict[str, Any]) -> dict[str, Any] | None:
        index = int(record["file"].split("_")[1].split(".")[0])
        self.records.setdefault(video, {})[index] = record
        self._write_progress(video)
        return self._maybe_finish(video)

    def end(self, video: str, info: dict[str, Any]) -> dict[str, Any] | None:
        self.ends[video] = info
        records = self.records.setdefault(video, {})
        for index, record in enumerate(info["done"]):
            records.setdefault(index, record)
        return self._maybe_finish(video)

    def _ordered(self, video: str) -> list[dict[str, Any]]:
        records = self.records.get(video, {})
        prefix: list[dict[str, Any]] = []
        while len(prefix) in records:
            prefix.append(records[len(prefix)])
        return prefix

    def _write_progress(self, video: str) -> None:
        from llamavid.data.feature_cache import CacheKey

        end = self.ends.get(video)
        prefix = self._ordered(video)
        if end is None or not prefix:
            return  # the key and source arrive with the end row; chunk files stay on disk until then
        self.cache.write_progress(CacheKey(**end["key"]), end["source"], prefix)

    def _maybe_finish(self, video: str) -> dict[str, Any] | None:
        from llamavid.data.feature_cache import CacheKey

        end = self.ends.get(video)
        if end is None or video in self.failed:
            return None
        chunks = self._ordered(video)
        if len(chunks) < end["chunks"]:
            self._write_progress(video)
            return None
        entry = self.cache.finish_entry(
            CacheKey(**end["key"]), end["source"], chunks, duration=end["duration"]
        )
        return {"digest": end["digest"], "frames": entry.num_frames}


def _connect(address: str) -> bool:
    """Connect to (or start) Ray; returns whether this call started it (and so must shut it down)."""
    try:
        import ray
    except ImportError as error:
        raise DependencyError(
            "--ray needs Ray Data: pip install 'llamavid[ray]' (ray[data]==2.60.0)."
        ) from error
    if ray.is_initialized():
        return False
    if address == "auto":
        try:
            ray.init(address="auto", include_dashboard=False, log_to_driver=False)
        except ConnectionError:
            ray.init(include_dashboard=False, log_to_driver=False)  # no cluster running: a local one
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def _ingest_with_ray(
    spec: _Spec,
    image_processor: Any,
    videos: Sequence[str],
    report: CorpusReport,
    *,
    encoders: int | None,
    progress: Callable[[dict[str, Any]], None] | None,
) -> None:
    import ray
    import ray.data

    from llamavid.data.feature_cache import FeatureCache

    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = float(ray.cluster_resources().get("CPU", 1))
    if encoders is None:
        encoders = gpus if gpus else max(1, min(4, int(cpus // 2)))
    actor_resources = {"num_gpus": 1} if gpus else {"num_cpus": _CPU_ACTOR_SHARE}
    dataset: Any = ray.data.from_items(
        [{"video": video} for video in videos], override_num_blocks=len(videos)
    )
    # An instance, not the class: Ray Data runs a plain callable as tasks (a class would become actors).
    dataset = dataset.flat_map(_Decoder(spec, image_processor), num_cpus=1)
    dataset = dataset.map_batches(
        _ChunkEncoder,
        fn_constructor_args=(spec,),
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=encoders),
        **actor_resources,
    )
    committer = _Committer(FeatureCache(spec.cache_root, chunk_frames=spec.chunk_frames))
    finished: set[str] = set()

    def settle(video: str, event: dict[str, Any]) -> None:
        finished.add(video)
        if progress:
            progress({**event, "video": video, "done": len(finished), "total": len(videos)})

    try:
        for row in dataset.iter_rows():
            video, kind, info = str(row["video"]), str(row["kind"]), json.loads(str(row["info"]))
            if video in finished:
                continue
            if kind == "cached":
                report.completed.append(
                    {"video": video, "digest": info["digest"], "frames": info["frames"], "status": "cached"}
                )
                settle(video, {"status": "cached", "frames": info["frames"]})
            elif kind == "error":
                committer.failed[video] = info
                report.failed.append(info)
                settle(video, {"status": "failed", "error": info["message"]})
            elif kind in ("written", "end"):
                if kind == "written":
                    report.frames_encoded += len(info["record"]["timestamps"])
                    result = committer.chunk(video, info["record"])
                    if progress:
                        progress({"video": video, "status": "chunk", "worker": int(row["worker"]),
                                  "done": len(finished), "total": len(videos)})  # fmt: skip
                else:
                    result = committer.end(video, info)
                if result is not None:
                    report.completed.append(
                        {
                            "video": video,
                            "digest": result["digest"],
                            "frames": result["frames"],
                            "status": "encoded",
                        }
                    )
                    settle(video, {"status": "encoded", "frames": result["frames"]})
    except Exception as error:  # a lost worker or cluster: what is unfinished is reported, reruns resume it
        logger.warning("the Ray run stopped early: %s", error)
        for video in videos:
            if video not in finished:
                report.failed.append(_failure(video, error))
                settle(
                    video,
                    {
                        "status": "failed",
                        "error": str(error).splitlines()[0] if str(error) else type(error).__name__,
                    },
                )


# ---------------------------------------------------------------------------------------------------------
# Entry point.


def ingest_corpus(
    videos: Sequence[str | os.PathLike[str]],
    *,
    model: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    fps: float | None = 1.0,
    max_frames: int | None = None,
    batch_size: int = 16,
    ray_address: str | None = None,
    encoders: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    summary_path: str | os.PathLike[str] | None = None,
    engine: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> CorpusReport:
    """Ingest every video into the feature cache; failures are recorded, not raised.

    Args:
        videos: video files (local or on a filesystem every Ray node sees at the same path).
        model: llamavid model folder (default: the embedded tiny model).
        cache_dir: feature cache root (default ``$LLAMAVID_CACHE`` or ``~/.cache/llamavid/features``); with
            Ray, a folder every node can write.
        fps / max_frames / batch_size: as for ``llamavid ingest``.
        ray_address: ``None`` ingests in this process; ``"auto"`` joins the running Ray cluster or starts a
            local one; anything else is a cluster address.
        encoders: encoder actors (default: one per GPU, else half the CPUs, at most 4).
        device / dtype: where and in what the encoder runs.
        summary_path: where the summary JSON goes (default ``ingest-summary.json`` in the cache folder).
        engine: an already loaded `Engine` for the one-process path (its cache folder is used).
        progress: called with a dict per event (``video``, ``status``, ``done``, ``total``...).

    Raises:
        InvalidInputError: bad arguments. DependencyError: ``ray_address`` given without Ray installed.
    """
    from llamavid.data.feature_cache import FeatureCache

    start = time.perf_counter()
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}.")
    paths = [os.path.abspath(os.fspath(v)) for v in videos]
    cache = (
        engine.feature_cache
        if engine is not None and engine.feature_cache is not None
        else FeatureCache(cache_dir)
    )
    summary = Path(summary_path) if summary_path is not None else cache.root / "ingest-summary.json"
    report = CorpusReport(summary_path=summary)
    if ray_address is None:
        if engine is None:
            from llamavid.inference.engine import Engine

            engine = Engine.from_pretrained(model, device=device, dtype=dtype, feature_cache=cache.root)
        _ingest_locally(
            engine, paths, report, fps=fps, max_frames=max_frames, batch_size=batch_size, progress=progress
        )
        mode = "local"
    else:
        from llamavid.data.feature_cache import checkpoint_sha256, preprocessing_id
        from llamavid.inference.loading import default_model_path
        from llamavid.model import LlamaVidProcessor

        folder = Path(model) if model is not None else default_model_path()
        if folder is None or not (folder / "config.json").is_file():
            raise InvalidInputError(
                f"--ray needs a llamavid model folder every node can read (got {folder}); pass --model FOLDER."
            )
        folder = folder.resolve()
        encoder_id = checkpoint_sha256(folder, "model.vision_tower.")
        assert encoder_id is not None
        image_processor = LlamaVidProcessor.from_pretrained(folder).image_processor
        spec = _Spec(
            model=str(folder), device=device, dtype=dtype, cache_root=str(cache.root.resolve()),
            chunk_frames=cache.chunk_frames, fps=fps, max_frames=max_frames, batch_size=batch_size,
            encoder_id=encoder_id, preprocessing_id=preprocessing_id(image_processor),
        )  # fmt: skip
        started = _connect(ray_address)
        try:
            _ingest_with_ray(spec, image_processor, paths, report, encoders=encoders, progress=progress)
        finally:
            if started:
                import ray

                ray.shutdown()
        mode = "ray"
    report.seconds = time.perf_counter() - start
    _write_summary(summary, report, len(paths), cache.root, mode)
    return report
