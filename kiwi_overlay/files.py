"""Files other steps read while they may be written: whole or not at all."""

from __future__ import annotations

from pathlib import Path


def write_whole(path: Path, text: str) -> None:
    """TEXT into PATH through a temporary name and a rename: PATH is the old file or the new one, never a part.

    Text that is not UTF-8 (surrogate escapes from the command line) is written back as the bytes it came from.
    """
    partial = path.with_name(f".{path.name}.tmp")
    try:
        partial.write_bytes(text.encode("utf-8", "surrogateescape"))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
