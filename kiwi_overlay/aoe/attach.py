"""attach_root(): the AoE root's block device, attached through the kernel's aoe driver (see the package's docstring)."""

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
