"""Media ingestion: decoding, sampling and subtitles. Knows files, time and frames; never imports the model."""

from .errors import BackendUnavailableError, MediaError, NoVideoStreamError, SubtitleError, VideoDecodeError
from .feature_cache import CacheEntry, CacheEntryError, CacheKey, FeatureCache
from .subtitles import SubtitleCue, align_subtitles, interleave_subtitles, read_subtitles
from .video import (
    Frames,
    VideoInfo,
    current_max_pixels,
    decode_video,
    iter_video_frames,
    load_media,
    pixel_limit,
    probe_video,
)

__all__ = [
    "BackendUnavailableError",
    "CacheEntry",
    "CacheEntryError",
    "CacheKey",
    "FeatureCache",
    "Frames",
    "MediaError",
    "NoVideoStreamError",
    "SubtitleCue",
    "SubtitleError",
    "VideoDecodeError",
    "VideoInfo",
    "align_subtitles",
    "current_max_pixels",
    "decode_video",
    "interleave_subtitles",
    "iter_video_frames",
    "load_media",
    "pixel_limit",
    "probe_video",
    "read_subtitles",
]
