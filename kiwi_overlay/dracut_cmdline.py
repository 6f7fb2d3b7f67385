"""`kiwi-overlay dracut-cmdline`: what dracut's cmdline hook needs to know, and prepares, for an overlay root."""

from __future__ import annotations

from pathlib import Path

from kiwi_overlay import log
from kiwi_overlay.config.plan import DhcpRoot, NbdRoot, Plan

# dracut reads /etc/cmdline.d/*.conf before the kernel's own command line, which thus wins.
NET_CONF = Path("etc/cmdline.d/kiwi-overlay-net.conf")
# dracut-lib's need_shutdown: the initramfs comes back at shutdown and runs the shutdown hooks.
NEED_SHUTDOWN = Path("run/initramfs/.need_shutdown")


def prepare(plan: Plan, *, root: Path = Path("/")) -> bool:
    """True when PLAN boots an overlay root; for NBD, ask dracut for the network; for NBD or a write device, the shutdown initramfs.

    NBD needs an address: rd.neednet=1, and ip=dhcp unless ip= is given (as KIWI does), so
    dracut's own network (where the flavour does it) helps. AoE is layer 2: no IP at all.
    """
    if plan.root is None:
        log.debug("dracut cmdline: root= is not an overlay root, nothing to do")
        return False
    for note in plan.notes:
        log.info(note)
    if isinstance(plan.root, (NbdRoot, DhcpRoot)):  # a root=dhcp root is NBD, or at least needs the network
        conf = "rd.neednet=1" + (" ip=dhcp" if plan.network.implied_dhcp else "")
        (root / NET_CONF).parent.mkdir(parents=True, exist_ok=True)
        (root / NET_CONF).write_text(conf + "\n")
        log.debug(f"dracut cmdline: wrote {conf!r} to /{NET_CONF}")
    if isinstance(plan.root, NbdRoot) or plan.write.kind == "device":
        # The shutdown hook detaches NBD and leaves a persistent write layer clean (any transport).
        (root / NEED_SHUTDOWN).parent.mkdir(parents=True, exist_ok=True)
        (root / NEED_SHUTDOWN).touch()
        log.debug("dracut cmdline: need_shutdown for the shutdown hook")
    log.debug(f"dracut cmdline: overlay root over {plan.root.transport}")
    return True


def load_modules_early(plan: Plan) -> None:
    """Start loading the nbd module now, in the background: it loads while udev settles, not when the NBD step needs it."""
    if isinstance(plan.root, NbdRoot):
        from kiwi_overlay.run import start

        log.debug("dracut cmdline: loading the nbd module in the background")
        start(["modprobe", "-q", "nbd"])
