"""The boot path: attach the read device for a plan, then assemble the root on it.

`kiwi-overlay prepare` (systemd: kiwi-overlay.service, before sysroot.mount) and
`kiwi-overlay mount` (dracut's mount hook without systemd) both run `prepare_root`.
"""

from __future__ import annotations

import time
from pathlib import Path

from kiwi_overlay.config import AoeRoot, NbdRoot, Plan
from kiwi_overlay.errors import KiwiOverlayError


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

    With rd.root.overlay.verity the read layer is the dm-verity device over the attached one.
    A failure leaves nothing behind: the mounts are undone by assemble, the verity and NBD devices here.
    """
    device = attach_read_device(plan, timeout=plan.timeout)
    from kiwi_overlay.overlay import assemble

    verified = False
    try:
        read_device = device
        if plan.verity:
            from kiwi_overlay import verity

            read_device = verity.open_verified(device, plan.verity)
            verified = True
        assemble(plan, read_device, run_dir=run_dir, sysroot=sysroot, mount_root=mount_root)
    except BaseException:
        if verified:
            verity.close()
        if isinstance(plan.root, NbdRoot):
            from kiwi_overlay import nbd

            nbd.detach(device)
        raise
