"""Child-process side of :func:`llamavid.data.video.probe_video`.

Run as ``python -m llamavid.data._probe PATH``: prints the :class:`VideoInfo` as JSON and exits 0, or prints
``{"error": <class name>, "message": ...}`` and exits 3. Plain JSON is the only thing that crosses back.
"""

from __future__ import annotations

import json
import sys

from llamavid.data.errors import MediaError
from llamavid.data.video import inspect_video

_EXIT_MEDIA_ERROR = 3


def main(argv: list[str]) -> int:
    """Probe ``argv[0]`` and report on stdout."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m llamavid.data._probe PATH\n")
        return 2
    try:
        info = inspect_video(argv[0])
    except MediaError as error:
        sys.stdout.write(json.dumps({"error": type(error).__name__, "message": str(error)}) + "\n")
        return _EXIT_MEDIA_ERROR
    sys.stdout.write(info.to_json() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
