"""ATA over Ethernet: target discovery on the wire, and attach through the kernel's aoe driver.

    protocol.py    AoE v1 frames: Query Config and ATA IDENTIFY built, answers parsed (no I/O)
    discovery.py   the wire probe over AF_PACKET raw sockets: which targets answer where, and locate()
    messages.py    what answered, for errors and `kiwi-overlay aoe discover`
    driver.py      the kernel's aoe driver: load it restricted, trigger its discovery, flush a target

Discovery speaks AoE v1 itself (Query Config broadcast, then an ATA IDENTIFY per answer for the
size), so the boot knows which targets answer where before it loads the driver, and a timeout can
say what did answer. attach_root() then loads `aoe` restricted to the boot interfaces, triggers the
driver's discovery with backoff, waits for the block device on kernel uevents (no udevd
needed), and lifts the restriction (see driver.unrestrict_driver).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from kiwi_overlay import log
from kiwi_overlay.aoe.discovery import locate
from kiwi_overlay.aoe.driver import ETHERD, discover_and_wait, load_driver, unrestrict_driver
from kiwi_overlay.aoe.messages import no_device_message
from kiwi_overlay.errors import KiwiOverlayError

if TYPE_CHECKING:
    from kiwi_overlay.config.plan import AoeRoot


def attach_root(root: AoeRoot, *, timeout: float) -> Path:
    """The block device of ROOT's target (/dev/etherd/eS.S), attached through the aoe driver within TIMEOUT."""
    started = time.monotonic()
    deadline = started + timeout
    located = locate(root, deadline=deadline)
    interfaces = root.interfaces or located.interfaces
    device = ETHERD / located.target
    log.info(f"AoE target {located.target} answers on {', '.join(located.interfaces)}; aoe driver on {', '.join(interfaces)}")
    undo = load_driver(interfaces)
    try:
        if not discover_and_wait(device, deadline=deadline):
            raise KiwiOverlayError(no_device_message(device, timeout=timeout, interfaces=interfaces, answers=located.answers))
    except BaseException:
        undo()
        raise
    unrestrict_driver()
    log.debug(f"{device} ready after {time.monotonic() - started:.2f} s")
    return device
