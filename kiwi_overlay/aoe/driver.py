"""The kernel's aoe driver: loaded restricted to the boot interfaces, its discovery triggered, a target flushed."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from kiwi_overlay import log
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.uevents import KernelUevents

ETHERD = Path("/dev/etherd")
SYS_MODULE = Path("/sys/module/aoe")


def _write(path: Path, text: str) -> None:
    # One write(2): the driver acts on each write, and a retried partial write would act twice.
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as error:
        raise KiwiOverlayError(f"{path}: {error.strerror}") from None


def load_driver(interfaces: Sequence[str]) -> Callable[[], object]:
    """Load `aoe` restricted to INTERFACES (or restrict the loaded one); returns the undo."""
    from kiwi_overlay.run import run

    names = " ".join(interfaces)
    if SYS_MODULE.is_dir():
        previous = (SYS_MODULE / "parameters" / "aoe_iflist").read_text().strip()
        log.debug(f"aoe already loaded (interfaces {previous!r}): restricting to {names!r}")
        _write(ETHERD / "interfaces", names)
        return partial(_write, ETHERD / "interfaces", previous)
    # Quoted for the kernel's parameter parser: the list is space separated.
    run(["modprobe", "aoe", f'aoe_iflist="{names}"'])
    return partial(run, ["modprobe", "-r", "aoe"], check=False)


def unrestrict_driver() -> None:
    """Let the driver use every interface again, now that the target is attached.

    The driver matches each received frame against its list by interface name, and udev in the
    real root may rename the boot interface (Debian 13: eth0 to ens2): with the list kept, every
    reply to the root is dropped and its I/O stalls. An empty write empties the list (the sysfs
    parameter cannot: sysfs ignores empty writes, and a newline would be a list that matches nothing).
    """
    _write(ETHERD / "interfaces", "")
    log.debug("aoe driver no longer restricted to the boot interfaces")


def discover_and_wait(device: Path, *, deadline: float) -> bool:
    """Trigger the driver's discovery with backoff until DEVICE is a block device or DEADLINE passes.

    Waits on kernel uevents (no udevd needed); devtmpfs makes the node. Local until the shared
    devices.wait_for_device can take a discovery callback.
    """
    next_discover, interval = time.monotonic(), 0.5
    with KernelUevents() as uevents:
        while True:
            try:
                if stat.S_ISBLK(device.stat().st_mode):
                    return True
            except FileNotFoundError:
                pass
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= next_discover:
                _write(ETHERD / "discover", "1")
                next_discover, interval = now + interval, min(interval * 2, 8.0)
            uevents.next(timeout=min(next_discover, deadline) - now)


def forget(device: Path) -> None:
    """Make the driver drop DEVICE (/dev/etherd/eS.S): nothing of the boot uses the target any more."""
    _write(ETHERD / "flush", device.name)
    log.debug(f"aoe driver flushed {device.name}")
