"""Append-only JSONL files keyed by item id: the on-disk cache that makes runs resumable.

Each record is one line written with a single ``write`` of the whole line followed by ``flush`` + ``fsync``, so
a run killed mid-way leaves at most one torn final line. Reading skips (and logs) a torn *last* line and keeps
the rest; a malformed line anywhere else means the file was edited or corrupted and is an error, because
silently dropping it would make an item look missing or, worse, present with a wrong value.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llamavid.errors import InvalidInputError, LlamaVidError

logger = logging.getLogger(__name__)


class CorruptRecordError(LlamaVidError, ValueError):
    """A JSONL cache line (not the last) is not a JSON object with the key field."""


class JsonlStore:
    """A JSONL file of records, indexed by ``record[key]`` (later records win, so a retry overrides).

    Args:
        path: The file; created (with parents) on first append.
        key: The field that identifies a record (``"id"`` for predictions, ``"key"`` for judgements).
    """

    def __init__(self, path: str | os.PathLike[str], key: str = "id") -> None:
        self.path = Path(path)
        self.key = key

    def load(self) -> dict[str, dict[str, Any]]:
        """All records by key. Raises :class:`CorruptRecordError` for a malformed line that is not the last."""
        if not self.path.is_file():
            return {}
        lines = self.path.read_text(encoding="utf-8").split("\n")
        records: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or self.key not in record:
                    raise InvalidInputError(f"expected a JSON object with a {self.key!r} field")
            except ValueError as error:
                is_last = all(not rest.strip() for rest in lines[number:])
                if is_last:
                    logger.warning(
                        "%s:%d: ignoring a torn last line (interrupted write): %s", self.path, number, error
                    )
                    continue
                raise CorruptRecordError(
                    f"{self.path}:{number}: not a valid record ({error}). The cache was edited or corrupted; "
                    "fix or delete that line (the item is then recomputed) and run again."
                ) from error
            records[str(record[self.key])] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (one write, flushed and fsynced)."""
        if self.key not in record:
            raise InvalidInputError(f"record has no {self.key!r} field: {sorted(record)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        needs_newline = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_with_newline()
        with open(self.path, "a", encoding="utf-8") as handle:
            # A torn last line from a killed run must not swallow this record.
            handle.write(("\n" if needs_newline else "") + line)
            handle.flush()
            os.fsync(handle.fileno())

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.append(record)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON through a temporary file and ``os.replace`` so readers never see half a report."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, target)
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    return target
