"""The `kiwi-overlay-watch` process: a warning before the write layer fills up.

A tmpfs write layer lives in RAM and is capped by rd.root.overlay.size: once it is full every write
fails with ENOSPC. The watch checks its fill level every few seconds and warns at 80, 90 and 95 %
on the kernel log, which reaches the console and the journal (identifier kiwi-overlay-watch).
It ends when the write layer is unmounted.

It is started in the initrd as a process of its own (`kiwi-overlay-watch`) and lives on in the real
root, whether or not the initrd or the real root run systemd, needing nothing from the real root:
it holds descriptors of /run and /dev/kmsg, opened before the switch. Unlike the NBD supervisor its
name has no '@': the shutdown killing spree ends it before the file systems are unmounted. A systemd
initrd sends every such process SIGTERM just before it switches to the real root; in the initrd the
watch therefore takes a SIGTERM for the end only when PID 1 has not switched SWITCH_GRACE seconds
later (a shutdown from the initrd), and after the switch as any process does (`SwitchRoot`).
Its interpreter starts while the root is attached, on the same CPU: it imports nothing but os,
sys and time (no runpy, pathlib or contextlib, which would triple its start in a TCG guest).
"""

from __future__ import annotations

# The C module behind signal: signal.py imports enum, which would double the watch's start in a TCG guest.
import _signal  # type: ignore[import-not-found]  # no stub: it is signal.py's private part
import os
import sys
import time

from kiwi_overlay import resident
from kiwi_overlay.errors import KiwiOverlayError

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

PROCESS_NAME = "kiwi-overlay-watch"
LEVELS = (80, 90, 95)
INTERVAL = 5.0
# A level warned about is warned about again only after the fill level fell this far below it.
REARM_BELOW = 5
# systemd's SIGTERM to every process precedes its switch to the real root by well under a second.
SWITCH_GRACE = 10.0
INITRD_RELEASE = "/etc/initrd-release"


def fill_percent(stat: os.statvfs_result) -> float:
    """How full a filesystem is, as df counts it (of the blocks unprivileged users may fill)."""
    usable = stat.f_blocks - stat.f_bfree + stat.f_bavail
    return 100.0 * (stat.f_blocks - stat.f_bfree) / usable if usable else 0.0


def next_warning(percent: float, warned: int) -> tuple[int | None, int]:
    """(the level to warn about now or None, the level warned about from now on) for PERCENT full.

    WARNED is the highest level warned about so far (0: none). Only the highest level crossed is
    named; a level is re-armed once the fill level drops REARM_BELOW points under it.
    """
    while warned and percent < warned - REARM_BELOW:
        lower = [level for level in LEVELS if level < warned]
        warned = lower[-1] if lower else 0
    crossed = [level for level in LEVELS if percent >= level and level > warned]
    if not crossed:
        return None, warned
    return crossed[-1], crossed[-1]


def message(level: int, percent: float, *, where: str, size: int) -> tuple[int, str]:
    """(syslog priority, text) for the warning at LEVEL."""
    priority = 3 if level >= LEVELS[-1] else 4  # the last one passes `quiet` on the console
    return priority, (
        f"the overlay write layer ({where}, {size >> 20} MiB) is {percent:.0f} % full; "
        "writes fail with 'No space left on device' when it is full (rd.root.overlay.size sets a tmpfs layer's size)"
    )


def watch(
    directory: str | Path, *, interval: float = INTERVAL, ready: Callable[[], None] | None = None, starter: int | None = None
) -> None:
    """Warn about the write layer at DIRECTORY from when it is mounted until it is unmounted.

    READY() once everything needed is open. It holds a descriptor of DIRECTORY's grandparent (/run for
    /run/overlay/overlayfs), not of the layer: /run moves to the real root with the descriptor (this
    process still sees the initrd's emptied tree), and the layer stays free to be unmounted. The layer
    counts as mounted while DIRECTORY is on another filesystem than the grandparent. STARTER: a pipe
    the starting process closes once the layer is mounted (or it gave up). Until then the watch
    looks at nothing: a failed boot unmounts what it mounted, and a look at that moment would make
    the unmount fail (EBUSY). A layer not mounted then never will be, and the watch ends.
    """
    directory = os.path.abspath(directory)
    parent, name = os.path.split(directory)
    grandparent, parent_name = os.path.split(parent)
    try:
        anchor = os.open(grandparent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise KiwiOverlayError(f"cannot watch {directory}: {grandparent}: {error.strerror}") from None
    anchor_device = os.fstat(anchor).st_dev
    below = f"{parent_name}/{name}"
    kmsg = resident.open_kmsg()
    switch = SwitchRoot() if os.path.exists(INITRD_RELEASE) else None
    if ready is not None:
        ready()
    if starter is not None:
        _wait_closed(starter)
    mounted = False
    warned = 0
    while True:
        if switch is not None and switch.terminated():
            return
        stat = _layer(anchor, below, anchor_device)
        if stat is None:
            if mounted or starter is not None:
                return  # unmounted, or not mounted by a starter that is done: the write layer is gone
            time.sleep(min(interval, 0.1))  # not mounted yet
            continue
        mounted = True
        percent = fill_percent(stat)
        level, warned = next_warning(percent, warned)
        if level is not None:
            _say(kmsg, *message(level, percent, where=directory, size=stat.f_blocks * stat.f_frsize))
        time.sleep(interval)


class SwitchRoot:
    """In the initrd: a SIGTERM that systemd sends everyone before it switches to the real root does not end the watch.

    A SIGTERM is noted, not obeyed: it ends the watch (`terminated`) only if PID 1 is still in this
    process's root SWITCH_GRACE seconds later. Once PID 1 is in another root (the real one), SIGTERM
    gets its default action back: the shutdown killing spree ends the watch.
    """

    def __init__(self) -> None:
        self._proc: int | None = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # /proc moves to the real root
        self._root = _identity(os.stat("/"))
        self._signalled: float | None = None
        _signal.signal(_signal.SIGTERM, self._note)

    def _note(self, signal: int, frame: object) -> None:
        self._signalled = time.monotonic()

    def switched(self) -> bool:
        """Whether PID 1 has left this process's root; from then on SIGTERM ends the process."""
        if self._proc is None:
            return True
        try:
            moved = _identity(os.stat("1/root", dir_fd=self._proc)) != self._root
        except OSError:
            return False
        if moved:
            _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
            os.close(self._proc)
            self._proc = None
            self._signalled = None  # the SIGTERM that came before the switch
        return moved

    def terminated(self) -> bool:
        """Whether a SIGTERM ends the watch now: PID 1 did not switch within SWITCH_GRACE seconds of it."""
        if self.switched() or self._signalled is None:
            return False
        return time.monotonic() - self._signalled >= SWITCH_GRACE


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _wait_closed(fd: int) -> None:
    """Until the pipe FD reaches its end (its writer closed it or is gone)."""
    while os.read(fd, 1):
        pass


def _layer(anchor: int, below: str, anchor_device: int) -> os.statvfs_result | None:
    """The write layer's filesystem statistics, or None while it is not mounted."""
    try:
        fd = os.open(below, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=anchor)
    except OSError:
        return None
    try:
        return os.fstatvfs(fd) if os.fstat(fd).st_dev != anchor_device else None
    finally:
        os.close(fd)


def _say(kmsg: int | None, priority: int, text: str) -> None:
    resident.say(kmsg, priority, f"kiwi-overlay-watch[{os.getpid()}]: {text}")


class Started:
    """A watch process, started before the write layer is mounted: its interpreter starts while the root is attached."""

    def __init__(self, directory: Path, *, interval: float = INTERVAL) -> None:
        import subprocess

        self.directory = directory
        # stdin: closed by confirm(), once the layer is mounted
        self.process = resident.start(PROCESS_NAME, _ENTRY, [str(directory), str(interval)], stdin=subprocess.PIPE)

    def confirm(self, *, timeout: float = 60.0) -> None:
        """Wait until it is ready (imported, descriptors open: the initrd's files may go); stop it and raise if not."""
        if not resident.is_ready(self.process, timeout=timeout):
            self.stop()
            raise KiwiOverlayError(f"the watch of {self.directory} did not start (status {self.process.returncode})")
        assert self.process.stdin is not None
        self.process.stdin.close()  # the layer is mounted: from now on its unmount ends the watch

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


_ENTRY = "from kiwi_overlay.watch import main; raise SystemExit(main())"


def main() -> int:
    directory, interval = sys.argv[1], float(sys.argv[2])
    watch(directory, interval=interval, ready=resident.announce_ready, starter=sys.stdin.fileno())
    return 0
