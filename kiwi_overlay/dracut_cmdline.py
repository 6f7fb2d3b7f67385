"""`kiwi-overlay dracut-cmdline`: what dracut's cmdline hook needs to know, and prepares, for an overlay root.

It claims a root by the form of root= alone and checks no value: it runs on every boot's critical
path, where the parser and the plan would be most of its time in a TCG guest. With systemd the
generator, which runs first, does the same work (`answer_ahead`) and leaves the hook's answer in
ANSWER: the hook then starts no interpreter.
"""

from __future__ import annotations

import os

from kiwi_overlay import log
from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.config.claim import ADDRESSED, debug_requested, implied_dhcp, root_transport, write_kind
from kiwi_overlay.files import write_whole

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

# Paths under the root, strings: the hook imports no pathlib (a third of its time in a TCG guest).
# dracut reads /etc/cmdline.d/*.conf before the kernel's own command line, which thus wins.
NET_CONF = "etc/cmdline.d/kiwi-overlay-net.conf"
# dracut-lib's need_shutdown: the initramfs comes back at shutdown and runs the shutdown hooks.
NEED_SHUTDOWN = "run/initramfs/.need_shutdown"
# The cmdline hook's exit status, written by the systemd generator (kiwi-overlay-cmdline.sh reads it).
ANSWER = "run/kiwi-overlay/dracut-cmdline"
# The generator's NET_CONF, which the hook moves to /etc/cmdline.d: any file there before the cmdline
# stage starts dracut-cmdline-ask.service (a shell that asks nothing here, a second in a slow guest).
PENDING_NET_CONF = "run/kiwi-overlay/kiwi-overlay-net.conf"
# systemd-modules-load, which starts early in a systemd initrd, loads the modules named here.
MODULES_LOAD = "run/modules-load.d/kiwi-overlay.conf"


def _write(root: str | Path, name: str, text: str) -> None:
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_whole(path, text)


def prepare(cmdline: KernelCmdline, *, root: str | Path = "/", net_conf: str = NET_CONF) -> bool:
    """True when CMDLINE boots an overlay root; for NBD, ask dracut for the network; for NBD or a write device, the shutdown initramfs.

    Nothing is checked here: the step that mounts the root parses the whole command line and says
    in one line what is wrong. NBD needs an address: rd.neednet=1, and ip=dhcp unless ip= is given
    (as KIWI does), so dracut's own network (where the flavour does it) helps. AoE is layer 2: no IP at all.
    """
    transport = root_transport(cmdline.getarg("root"))
    if transport is None:
        log.debug("dracut cmdline: root= is not an overlay root, nothing to do")
        return False
    if transport in ADDRESSED:
        conf = "rd.neednet=1" + (" ip=dhcp" if implied_dhcp(transport, cmdline) else "")
        _write(root, net_conf, conf + "\n")
        log.debug(f"dracut cmdline: wrote {conf!r} to /{net_conf}")
    if transport == "nbd" or write_kind(cmdline, device=cmdline.getarg("rd.root.overlay.write") is not None) == "device":
        # The shutdown hook detaches NBD and leaves a persistent write layer clean (any transport).
        _write(root, NEED_SHUTDOWN, "")
        log.debug("dracut cmdline: need_shutdown for the shutdown hook")
    log.debug(f"dracut cmdline: overlay root over {transport or 'a form the mount step will name'}")
    return True


def load_modules_early(cmdline: KernelCmdline) -> None:
    """Start loading the nbd module now, in the background: it loads while udev settles, not when the NBD step needs it."""
    if root_transport(cmdline.getarg("root")) == "nbd":
        from kiwi_overlay.run import start

        log.debug("dracut cmdline: loading the nbd module in the background")
        start(["modprobe", "-q", "nbd"])


def answer_ahead(cmdline: KernelCmdline, *, root: str | Path = "/") -> None:
    """The cmdline hook's work, done by the systemd generator: ANSWER holds 0 (an overlay root) or 1 (another root).

    Once per boot (generators run again on every daemon-reload). An invalid overlay root is
    claimed too: the generator's kiwi-overlay.service then runs `kiwi-overlay mount`, which says
    why on the console and fails into emergency. Writing outside its unit directories is what
    dracut's own root generator does too.
    """
    if os.path.exists(os.path.join(root, ANSWER)):
        return
    log.configure(debug=debug_requested(cmdline))
    claimed = prepare(cmdline, root=root, net_conf=PENDING_NET_CONF)
    if claimed and root_transport(cmdline.getarg("root")) == "nbd":
        log.debug(f"dracut cmdline: nbd in /{MODULES_LOAD}, for systemd-modules-load")
        _write(root, MODULES_LOAD, "nbd\n")
    _write(root, ANSWER, "0\n" if claimed else "1\n")


def hook(*, cmdline: KernelCmdline | None = None, root: str | Path = "/") -> int:
    """The cmdline hook's exit status: 0 for an overlay root (prepared), 1 for another root.

    CMDLINE: this machine's own (read here, when None) or one given to look at, which loads no module.
    """
    machine = cmdline is None
    cmdline = KernelCmdline.from_system() if cmdline is None else cmdline
    log.configure(debug=debug_requested(cmdline))
    if machine:
        log.started("dracut-cmdline", work="claim")
    if not prepare(cmdline, root=root):
        return 1
    if machine:
        load_modules_early(cmdline)
    return 0
