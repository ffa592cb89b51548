"""JSON lines in and out: errors name the file, the line and the field."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from telly.errors import TellyError
from telly.files import atomic_path


class SchemaError(TellyError):
    """A data file whose rows lack a field or are not JSON."""


def iter_jsonl(path: str | Path, required: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise TellyError(f"{path}: file not found")
    with path.open("rb") as fh:  # bytes: a bad byte is reported with its own line number
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SchemaError(
                    f"{path}:{lineno}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SchemaError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise SchemaError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [f for f in required if f not in row]
            if missing:
                raise SchemaError(f"{path}:{lineno}: missing field(s) {', '.join(map(repr, missing))}")
            yield row


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, required))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; return how many were written. NaN and infinity are errors: they are not JSON."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(_dumps(path, row, f"row {n + 1}"))
            fh.write("\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically (metrics files, tables); NaN and infinity are errors (not JSON)."""
    text = _dumps(path, obj, "document", indent=2)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.write("\n")


def _dumps(path: str | Path, obj: Any, what: str, indent: int | None = None) -> str:
    try:
        return json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as err:  # NaN or infinity: a result computed from a broken run
        raise TellyError(f"{path}: not written: its {what} holds a value JSON cannot hold ({err})") from None
