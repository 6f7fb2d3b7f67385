"""Progress and debug messages: the console always, the debug log with rd.kiwi.debug.

Messages carry the time since boot (CLOCK_BOOTTIME), so the debug log doubles as the
boot-time profile the benchmarks read.
"""

from __future__ import annotations

import os
import sys
import time

from kiwi_overlay.errors import printable

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

# A string, not a Path: the cmdline hook imports this module, and pathlib costs it a third of its time in a TCG guest.
DEBUG_LOG = "/run/initramfs/log/kiwi-overlay.log"

_debug = False
_log_file: Path | str | None = None


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


def started(command: str, *, work: str) -> None:
    """With rd.kiwi.debug, in a hook's process: how long its interpreter ran before this message (its imports and WORK)."""
    if _debug and (age := process_age()) is not None:
        debug(f"{command}: interpreter started {age:.2f} s before this message (imports and {work})")


def _emit(text: str) -> None:
    line = f"[{time.clock_gettime(time.CLOCK_BOOTTIME):10.6f}] kiwi-overlay: {text}"
    # A long-lived process (the NBD supervisor) outlives whoever read its stderr: a broken pipe
    # or a closed console must not end it. The debug log below still gets the line. Not
    # contextlib.suppress: importing contextlib costs the cmdline hook a third of a bare interpreter start.
    try:  # noqa: SIM105
        print(line if _debug else f"kiwi-overlay: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
    if _log_file is not None:
        try:
            os.makedirs(os.path.dirname(_log_file), exist_ok=True)
            with open(_log_file, "a") as handle:
                handle.write(line + "\n")
        except OSError:
            pass  # a read-only or missing /run must not stop the boot; stderr has it


def info(text: str) -> None:
    _emit(printable(text))


def debug(text: str) -> None:
    """TEXT may have several lines (a traceback); each is escaped."""
    if _debug:
        _emit("\n".join(map(printable, text.split("\n"))))
