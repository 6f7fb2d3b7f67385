"""Files other steps read while they may be written: whole or not at all."""

from __future__ import annotations

import os


def write_whole(path: str | os.PathLike[str], text: str) -> None:
    """TEXT into PATH through a temporary name and a rename: PATH is the old file or the new one, never a part.

    Text that is not UTF-8 (surrogate escapes from the command line) is written back as the bytes it came from.
    os, not pathlib: the cmdline hook writes with it, and pathlib costs it a third of its time in a TCG guest.
    """
    name = os.fspath(path)
    partial = os.path.join(os.path.dirname(name), f".{os.path.basename(name)}.tmp")
    try:
        with open(partial, "wb") as file:
            file.write(text.encode("utf-8", "surrogateescape"))
        os.replace(partial, name)
    except BaseException:
        if os.path.lexists(partial):
            os.unlink(partial)
        raise
