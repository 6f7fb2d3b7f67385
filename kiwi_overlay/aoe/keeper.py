"""The `@kiwi-overlay-aoe` process: wakes the kernel's aoe driver when it leaves a request unsent.

The blk-mq aoe driver can strand a request. An answer from the target first frees its slot on the
wire, then sends what waits (aoecmd_work), and only later does the driver's completion thread
(aoe_ktio) return the answered frame to the free list. When the completion thread lags (one busy
CPU) and the target already holds the most frames the driver allocates (512), the last answer
finds no frame for the next request. The driver then counts a kick and sets KICKME, but its timer
only reruns the block layer's queues, which no longer hold that request: it waits, with nothing on
the wire, until another request reaches the driver. A root on that device may never send one: the
boot hangs, typically just after switch_root, when systemd maps its binaries. (Seen with Debian 13's
kernel 6.12 in QEMU: the aoe debugfs file read `falloc: 512`, `kicked: 1` and nothing in flight.)

This process holds the device from the initrd on. Every INTERVAL seconds it reads the device's
request counters; when requests are in flight and none completed since the last look, it reads one
block with O_DIRECT, bypassing the page cache: a new request makes the driver send the stranded one.
Its argv[0] begins with '@' (as the NBD supervisor's), so it survives the switch to the real root
and the shutdown killing spree. It imports only os, sys, time, mmap and kiwi_overlay.resident, and ends when the device is gone.
"""

from __future__ import annotations

import mmap
import os
import sys
import time

from kiwi_overlay import resident

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

PROCESS_NAME = "@kiwi-overlay-aoe"
INTERVAL = 5.0
# /sys/block/DEV/stat: requests completed (reads, writes, discards, flushes) and in flight (Documentation/block/stat.rst).
COMPLETED_FIELDS = (0, 4, 11, 15)
IN_FLIGHT_FIELD = 8


def counters(stat: bytes) -> tuple[int, int]:
    """(requests completed, requests in flight) from the text of a /sys/block/DEV/stat file."""
    fields = stat.split()
    return sum(int(fields[index]) for index in COMPLETED_FIELDS if index < len(fields)), int(fields[IN_FLIGHT_FIELD])


def stalled(before: tuple[int, int], now: tuple[int, int]) -> bool:
    """Requests in flight NOW and none completed since BEFORE (both from counters())."""
    return now[1] > 0 and now[0] == before[0]


def sysfs_stat(device: str) -> str:
    """The stat file of DEVICE (/dev/etherd/e0.1: /sys/block/etherd!e0.1/stat)."""
    return f"/sys/block/{os.path.relpath(device, '/dev').replace('/', '!')}/stat"


def keep(device: str, *, interval: float = INTERVAL, ready: Callable[[], None] | None = None) -> None:
    """Wake the driver behind DEVICE whenever a look finds its requests stalled; return once DEVICE is gone.

    READY(), when given, is called once everything is open: the initrd's files may go after it.
    """
    stat = os.open(sysfs_stat(device), os.O_RDONLY | os.O_CLOEXEC)
    disk = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    kmsg = resident.open_kmsg()
    block = mmap.mmap(-1, mmap.PAGESIZE)  # page aligned, as O_DIRECT wants, and a multiple of any logical block size
    name = os.path.basename(device)
    if ready is not None:
        ready()
    waking = False
    before = counters(os.pread(stat, 4096, 0))
    while True:
        time.sleep(interval)
        try:
            now = counters(os.pread(stat, 4096, 0))
        except OSError:
            return  # the device is gone (flushed): nothing left to keep
        if not stalled(before, now):
            waking = False
        else:
            if not waking:  # once per stall: a target that is down stalls every look until it answers again
                stall = f"{now[1]} request(s) in flight, none completed in {interval:g} s"
                resident.say(kmsg, 4, f"kiwi-overlay-aoe[{os.getpid()}]: AoE {name}: {stall}: reading a block to wake the aoe driver")
            waking = True
            try:  # noqa: SIM105 (contextlib would be one more import in the keeper's start)
                os.preadv(disk, [block], 0)  # waits until served: one wake-up request at a time
            except OSError:
                pass  # EIO: the driver gave the target up (aoe_deadsecs); it may come back (aoe-revalidate)
            now = counters(os.pread(stat, 4096, 0))
        before = now


class Started:
    """A keeper process for an attached AoE device."""

    def __init__(self, device: Path, *, interval: float = INTERVAL) -> None:
        self.device = device
        self.process = resident.start(PROCESS_NAME, _ENTRY, [str(device), str(interval)])

    def confirm(self, *, timeout: float = 60.0) -> bool:
        """Whether it is ready (imported, descriptors open); a keeper that is not is stopped."""
        if resident.is_ready(self.process, timeout=timeout):
            return True
        self.process.kill()
        self.process.wait()
        return False


_ENTRY = "from kiwi_overlay.aoe.keeper import main; raise SystemExit(main())"


def main() -> int:
    device, interval = sys.argv[1], float(sys.argv[2])
    keep(device, interval=interval, ready=resident.announce_ready)
    return 0
