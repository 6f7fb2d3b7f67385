"""Progress and debug messages: the console always, the debug log with rd.kiwi.debug.

Messages carry the time since boot (CLOCK_BOOTTIME), so the debug log doubles as the
boot-time profile the benchmarks read.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from kiwi_overlay.errors import printable

DEBUG_LOG = Path("/run/initramfs/log/kiwi-overlay.log")

_debug = False
_log_file: Path | None = None


def configure(*, debug: bool, log_file: Path | None = None) -> None:
    """Turn debug output on (to stderr and LOG_FILE, default the initrd's debug log)."""
    global _debug, _log_file
    _debug = debug
    _log_file = (log_file or DEBUG_LOG) if debug else None


def debugging() -> bool:
    return _debug


def process_age() -> float | None:
    """Seconds since this process started: its start in /proc/self/stat (clock ticks since boot, 10 ms steps); None without /proc."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold anything
    except OSError:
        return None
    return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _emit(text: str) -> None:
    line = f"[{time.clock_gettime(time.CLOCK_BOOTTIME):10.6f}] kiwi-overlay: {text}"
    # A long-lived process (the NBD supervisor) outlives whoever read its stderr: a broken pipe
    # or a closed console must not end it. The debug log below still gets the line.
    with contextlib.suppress(OSError, ValueError):
        print(line if _debug else f"kiwi-overlay: {text}", file=sys.stderr, flush=True)
    if _log_file is not None:
        try:
            _log_file.parent.mkdir(parents=True, exist_ok=True)
            with _log_file.open("a") as handle:
                handle.write(line + "\n")
        except OSError:
            pass  # a read-only or missing /run must not stop the boot; stderr has it


def info(text: str) -> None:
    _emit(printable(text))


def debug(text: str) -> None:
    """TEXT may have several lines (a traceback); each is escaped."""
    if _debug:
        _emit("\n".join(map(printable, text.split("\n"))))
