"""The machine's cache of what the tests build (guest kernels, root images, Debian roots, KIWI images).

Every test run on the machine shares it: an entry is built by one run while the others wait for it,
and appears whole (built in a scratch directory beside it, then renamed onto its name).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(os.environ.get("KIWI_OVERLAY_CACHE", "/var/cache/kiwi-overlay"))


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold the lock file LOCK (created when missing) against every other process on the machine."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def cached(entry: Path, build: Callable[[Path], Path]) -> Path:
    """ENTRY, built when missing: BUILD(scratch) makes it inside the scratch directory and returns it.

    What BUILD returns is renamed onto ENTRY (atomic: a half-built entry is never seen as cached).
    A run that finds another one building the entry waits for it and takes its result.
    """
    if entry.exists():
        return entry
    with exclusive(entry.with_name(f".{entry.name}.lock")):
        if not entry.exists():
            with tempfile.TemporaryDirectory(prefix="ko-bt-cache-", dir=entry.parent) as scratch:
                build(Path(scratch)).rename(entry)
    return entry
