"""`kiwi-overlay dracut-cmdline`: what dracut's cmdline hook needs to know, and prepares, for an overlay root.

With systemd the generator, which runs first and parses the command line anyway, does the same work
(`answer_ahead`) and leaves the hook's answer in ANSWER: the hook then starts no interpreter.
"""

from __future__ import annotations

from pathlib import Path

from kiwi_overlay import log
from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.config.plan import DhcpRoot, NbdRoot, Plan
from kiwi_overlay.errors import KiwiOverlayError

# dracut reads /etc/cmdline.d/*.conf before the kernel's own command line, which thus wins.
NET_CONF = Path("etc/cmdline.d/kiwi-overlay-net.conf")
# dracut-lib's need_shutdown: the initramfs comes back at shutdown and runs the shutdown hooks.
NEED_SHUTDOWN = Path("run/initramfs/.need_shutdown")
# The cmdline hook's exit status, written by the systemd generator (kiwi-overlay-cmdline.sh reads it).
ANSWER = Path("run/kiwi-overlay/dracut-cmdline")
# The generator's NET_CONF, which the hook moves to /etc/cmdline.d: any file there before the cmdline
# stage starts dracut-cmdline-ask.service (a shell that asks nothing here, a second in a slow guest).
PENDING_NET_CONF = Path("run/kiwi-overlay/kiwi-overlay-net.conf")
# systemd-modules-load, which starts early in a systemd initrd, loads the modules named here.
MODULES_LOAD = Path("run/modules-load.d/kiwi-overlay.conf")


def prepare(plan: Plan, *, root: Path = Path("/"), net_conf: Path = NET_CONF) -> bool:
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
        (root / net_conf).parent.mkdir(parents=True, exist_ok=True)
        (root / net_conf).write_text(conf + "\n")
        log.debug(f"dracut cmdline: wrote {conf!r} to /{net_conf}")
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


def answer_ahead(cmdline: KernelCmdline, *, root: Path = Path("/")) -> None:
    """The cmdline hook's work, done by the systemd generator: ANSWER holds 0 (an overlay root) or 1 (another root).

    Once per boot (generators run again on every daemon-reload). An invalid command line gets no
    answer: the hook then runs `kiwi-overlay dracut-cmdline`, which says why on the console and dies.
    Writing outside its unit directories is what dracut's own root generator does too.
    """
    from kiwi_overlay.config.parse import parse_plan
    from kiwi_overlay.files import write_whole

    answer = root / ANSWER
    if answer.exists():
        return
    try:
        plan = parse_plan(cmdline)
    except KiwiOverlayError:
        return
    log.configure(debug=plan.debug)
    claimed = prepare(plan, root=root, net_conf=PENDING_NET_CONF)
    if claimed and isinstance(plan.root, NbdRoot):
        log.debug(f"dracut cmdline: nbd in /{MODULES_LOAD}, for systemd-modules-load")
        (root / MODULES_LOAD).parent.mkdir(parents=True, exist_ok=True)
        write_whole(root / MODULES_LOAD, "nbd\n")
    answer.parent.mkdir(parents=True, exist_ok=True)
    write_whole(answer, "0\n" if claimed else "1\n")
