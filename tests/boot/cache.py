"""The machine's cache of what the tests build (guest kernels, root images, Debian roots, KIWI images).

Every test run on the machine shares it: an entry is built by one run while the others wait for it,
and appears whole (built in a scratch directory beside it, then renamed onto its name). An entry
named by a digest of its inputs (`kis-debian13-0123abcd...`) is garbage once its inputs change: when
a directory gains an entry, those of its digest-named entries that no run used for UNUSED_FOR go.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(os.environ.get("KIWI_OVERLAY_CACHE", "/var/cache/kiwi-overlay"))
# Two days: a checkout's runs use (and so keep) theirs; other commits' images go (a KIWI image is
# half a gigabyte, a Debian root more).
UNUSED_FOR = 2 * 24 * 3600.0  # s
_DIGEST_NAMED = re.compile(r"-[0-9a-f]{12,}(\.\w+)?$")


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
    with exclusive(_lock(entry)):
        if entry.exists():
            os.utime(entry, follow_symlinks=False)  # used now: not pruned for UNUSED_FOR
            return entry
        with tempfile.TemporaryDirectory(prefix="ko-bt-cache-", dir=entry.parent) as scratch:
            build(Path(scratch)).rename(entry)
    prune(entry.parent)
    return entry


def prune(directory: Path) -> None:
    """Remove DIRECTORY's digest-named entries that no run used for UNUSED_FOR, each under its lock (a run may want it now)."""
    for entry in directory.iterdir():
        if _DIGEST_NAMED.search(entry.name) and _unused(entry):
            with exclusive(_lock(entry)):
                if entry.exists() and _unused(entry):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _lock(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.lock")


def _unused(entry: Path) -> bool:
    return entry.lstat().st_mtime < time.time() - UNUSED_FOR
