"""rd.root.overlay.ram: the read layer copied into RAM, so the client no longer needs the server.

The copy is a file in its own tmpfs (sized to it), mounted through a loop device; the network
device is detached once the root is assembled (kiwi_overlay.boot). Its size is checked against
the memory available before a byte is copied.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from kiwi_overlay import log
from kiwi_overlay.errors import KiwiOverlayError

OPTION = "rd.root.overlay.ram"
# Left to the system after the copy: the kernel, the initrd's processes, the page cache of the boot.
RESERVE = 64 << 20
_CHUNK = 4 << 20
_PROGRESS_INTERVAL = 2.0


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable in bytes: what can be allocated without swapping."""
    for line in meminfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable":
            return int(value.split()[0]) << 10
    raise KiwiOverlayError(f"{meminfo} has no MemAvailable line")


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def check_fits(size: int, *, available: int, device: Path) -> None:
    """KiwiOverlayError (naming the option) when SIZE bytes plus RESERVE exceed AVAILABLE."""
    if size + RESERVE > available:
        raise KiwiOverlayError(
            f"{OPTION}: the read layer {device} is {mib(size)}, but only {mib(available)} of RAM is available "
            f"({mib(RESERVE)} must stay free); boot without {OPTION}, or give the machine more memory"
        )


def copy_image(device: Path, target: Path, *, size: int) -> None:
    """Copy SIZE bytes of DEVICE into the new file TARGET, with a progress line every few seconds."""
    started = last = time.monotonic()
    done = 0
    buffer = bytearray(_CHUNK)
    source = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        destination = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        try:
            while done < size:
                count = os.readv(source, [buffer])
                if count == 0:
                    raise KiwiOverlayError(f"{OPTION}: {device} ended after {mib(done)} of {mib(size)}")
                view = memoryview(buffer)[:count]
                while view:
                    view = view[os.write(destination, view) :]
                done += count
                now = time.monotonic()
                if now - last >= _PROGRESS_INTERVAL:
                    log.info(f"copying the read layer into RAM: {100 * done // size}% ({mib(done)} of {mib(size)})")
                    last = now
        finally:
            os.close(destination)
    except OSError as error:
        raise KiwiOverlayError(f"{OPTION}: copying {device} into RAM failed after {mib(done)}: {error.strerror}") from None
    finally:
        os.close(source)
    seconds = time.monotonic() - started
    log.info(f"copied the read layer {device} into RAM: {mib(size)} in {seconds:.1f} s ({OPTION})")
