"""The boot path: attach the read device for a plan, then assemble the root on it.

`kiwi-overlay prepare` (systemd: kiwi-overlay.service, before sysroot.mount) and
`kiwi-overlay mount` (dracut's mount hook without systemd) both run `prepare_root`.
"""

from __future__ import annotations

import time
from pathlib import Path

from kiwi_overlay import log
from kiwi_overlay.config.plan import AoeRoot, DhcpRoot, LocalRoot, NbdRoot, Plan
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.layout import Layout

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from kiwi_overlay.aoe.keeper import Started as AoeKeeper
    from kiwi_overlay.net.dhcp import DhcpLease
    from kiwi_overlay.watch import Started


def _dhcp_root(plan: Plan, root: DhcpRoot, leases: Sequence[DhcpLease]) -> Plan:
    """PLAN with the root that the first lease's root-path (DHCP option 17) names."""
    from dataclasses import replace

    from kiwi_overlay.config.roots import root_from_root_path

    lease = next((lease for lease in leases if lease.root_path), None)
    if lease is None:
        got = f"the lease on {', '.join(lease.interface for lease in leases)}" if leases else "no lease (the network was up already)"
        raise KiwiOverlayError(
            f"root=dhcp: the DHCP server sent no root-path (option 17) in {got}; "
            "set one, e.g. dnsmasq --dhcp-option=option:root-path,overlay:nbd=192.168.1.1:rootfs"
        )
    named = root_from_root_path(lease.root_path or "", root.cmdline)
    log.info(f"root=dhcp: {lease.interface}'s lease names the root {lease.root_path}")
    return replace(plan, root=named)


def attach_read_device(plan: Plan, *, timeout: float) -> tuple[Plan, Path]:
    """The block device of the read layer, attached (network transports) or waited for (local devices).

    TIMEOUT covers every step: the network, the transport and the device. Returns the plan too:
    with root=dhcp, its root is the one the DHCP server named.
    """
    root = plan.root
    if root is None:
        raise KiwiOverlayError("root= does not start with overlay: (not an overlay root); e.g. root=overlay:LABEL=root")
    deadline = time.monotonic() + timeout
    if plan.network.needs_ip:
        from kiwi_overlay.net.bringup import bring_up

        leases = bring_up(plan, timeout=timeout)
        timeout = max(deadline - time.monotonic(), 0.0)
        if isinstance(root, DhcpRoot):
            plan = _dhcp_root(plan, root, leases)
            root = plan.root
    if isinstance(root, NbdRoot):
        from kiwi_overlay import nbd

        # The verity layout fills the export unless it is in a partition: then only the size is checked on a reconnect.
        verity = plan.verity if plan.partition is None else None
        return plan, nbd.attach_root(root, timeout=timeout, verity=verity)
    if isinstance(root, AoeRoot):
        from kiwi_overlay.aoe.attach import attach_root

        return plan, attach_root(root, timeout=timeout)
    assert isinstance(root, LocalRoot)  # root=dhcp always needs an IP: it was replaced above
    from kiwi_overlay.devices import wait_for_device

    return plan, wait_for_device(root.device, timeout=timeout)


def _detach(plan: Plan, device: Path) -> None:
    """Let go of the network device of PLAN's root (NBD: disconnect; AoE: the driver forgets the target)."""
    if isinstance(plan.root, NbdRoot):
        from kiwi_overlay import nbd

        nbd.detach(device)
    elif isinstance(plan.root, AoeRoot):
        from kiwi_overlay.aoe.driver import forget

        forget(device)


def prepare_root(plan: Plan, *, run_dir: Path, sysroot: Path, mount_root: bool) -> None:
    """Attach the read device and mount every layer; the root at SYSROOT too when MOUNT_ROOT.

    The watch of the write layer starts first, so its interpreter loads while the device is attached.
    An AoE device that stays attached gets its keeper (kiwi_overlay.aoe.keeper) once the root is assembled.
    """
    watch = _start_watch(Layout(run_dir, sysroot).overlayfs) if plan.write.kind != "none" else None
    try:
        aoe_device = _attach_and_assemble(plan, run_dir=run_dir, sysroot=sysroot, mount_root=mount_root)
    except BaseException:
        if watch is not None:
            watch.stop()
        raise
    keeper = _start_aoe_keeper(aoe_device) if aoe_device is not None else None
    if watch is not None:
        try:
            watch.confirm()
        except KiwiOverlayError as error:
            _no_watch(error)
    if keeper is not None and not keeper.confirm():
        _no_aoe_keeper(f"it did not start (status {keeper.process.returncode})")


def _attach_and_assemble(plan: Plan, *, run_dir: Path, sysroot: Path, mount_root: bool) -> Path | None:
    """Attach the read device and assemble the layers on it (or on its partition, or its dm-verity device).

    A failure leaves nothing behind: the mounts are undone by assemble, the verity and NBD devices here.
    With rd.root.overlay.ram the network device is detached once the root is in RAM. Returns the AoE
    device when the root stays on one.
    """
    plan, disk = attach_read_device(plan, timeout=plan.timeout)
    from kiwi_overlay.overlay import assemble

    verified = False
    try:
        device = disk
        if plan.partition is not None:
            from kiwi_overlay.partitions import find_partition

            device = find_partition(disk, plan.partition)
        if plan.verity:
            from kiwi_overlay import verity

            device = verity.open_verified(device, plan.verity)
            verified = True
        assemble(plan, device, run_dir=run_dir, sysroot=sysroot, mount_root=mount_root)
    except BaseException:
        if verified:
            verity.close()
        if isinstance(plan.root, NbdRoot):
            _detach(plan, disk)
        raise
    if plan.ram and isinstance(plan.root, (NbdRoot, AoeRoot)):
        if verified:
            verity.close()  # the copy in RAM was verified as it was read
        _detach(plan, disk)
        log.info(f"detached {disk}: the root runs from RAM (rd.root.overlay.ram)")
        return None
    return disk if isinstance(plan.root, AoeRoot) else None


def _start_watch(write_layer: Path) -> Started | None:
    """The warning before the write layer fills up: useful, not needed to boot."""
    from kiwi_overlay.watch import Started

    try:
        return Started(write_layer)
    except OSError as error:
        _no_watch(error)
        return None


def _no_watch(error: Exception) -> None:
    log.info(f"no warning before the write layer fills up: {error}")


def _start_aoe_keeper(device: Path) -> AoeKeeper | None:
    """The process that wakes the aoe driver when it strands a request (without it the root may hang for good)."""
    from kiwi_overlay.aoe.keeper import Started as AoeKeeper

    try:
        return AoeKeeper(device)
    except OSError as error:
        _no_aoe_keeper(error.strerror or str(error))
        return None


def _no_aoe_keeper(reason: str) -> None:
    log.info(f"no keeper for the AoE root (a request the aoe driver strands would hang the root): {reason}")
