"""The boot path: attach the read device for a plan, then assemble the root on it.

`kiwi-overlay prepare` (systemd: kiwi-overlay.service, before sysroot.mount) and
`kiwi-overlay mount` (dracut's mount hook without systemd) both run `prepare_root`.
"""

from __future__ import annotations

import time
from pathlib import Path

from kiwi_overlay.config import AoeRoot, NbdRoot, Plan
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.layout import Layout

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from kiwi_overlay.watch import Started


def attach_read_device(plan: Plan, *, timeout: float) -> Path:
    """The block device of the read layer, attached (network transports) or waited for (local devices).

    TIMEOUT covers every step: the network, the transport and the device.
    """
    root = plan.root
    if root is None:
        raise KiwiOverlayError("root= does not start with overlay: (not an overlay root); e.g. root=overlay:LABEL=root")
    deadline = time.monotonic() + timeout
    if plan.network.needs_ip:
        from kiwi_overlay.net.bringup import bring_up

        bring_up(plan, timeout=timeout)
        timeout = max(deadline - time.monotonic(), 0.0)
    if isinstance(root, NbdRoot):
        from kiwi_overlay import nbd

        return nbd.attach_root(root, timeout=timeout)
    if isinstance(root, AoeRoot):
        from kiwi_overlay import aoe

        return aoe.attach_root(root, timeout=timeout)
    from kiwi_overlay.devices import wait_for_device

    return wait_for_device(root.device, timeout=timeout)


def prepare_root(plan: Plan, *, run_dir: Path, sysroot: Path, mount_root: bool) -> None:
    """Attach the read device and mount every layer; the root at SYSROOT too when MOUNT_ROOT.

    A failure leaves nothing behind: the mounts are undone by assemble, an NBD device is detached here.
    The watch of the write layer starts first, so its interpreter loads while the device is attached.
    """
    watch = _start_watch(Layout(run_dir, sysroot).overlayfs) if plan.write.kind != "none" else None
    try:
        device = attach_read_device(plan, timeout=plan.timeout)
        from kiwi_overlay.overlay import assemble

        try:
            assemble(plan, device, run_dir=run_dir, sysroot=sysroot, mount_root=mount_root)
        except BaseException:
            if isinstance(plan.root, NbdRoot):
                from kiwi_overlay import nbd

                nbd.detach(device)
            raise
    except BaseException:
        if watch is not None:
            watch.stop()
        raise
    if watch is not None:
        try:
            watch.confirm()
        except KiwiOverlayError as error:
            _no_watch(error)


def _start_watch(write_layer: Path) -> Started | None:
    """The warning before the write layer fills up: useful, not needed to boot."""
    from kiwi_overlay.watch import Started

    try:
        return Started(write_layer)
    except OSError as error:
        _no_watch(error)
        return None


def _no_watch(error: Exception) -> None:
    from kiwi_overlay import log

    log.info(f"no warning before the write layer fills up: {error}")
