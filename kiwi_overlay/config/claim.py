"""What dracut's cmdline stage needs to know before anything is checked: whose root, which transport.

The cmdline hook decides with these functions alone: its interpreter imports nothing more than
this module, the command line reader and the log, and checks no value (the mount step, or the
systemd generator, parses the whole command line and says in one line what is wrong).
parse_plan answers the same questions with the same functions.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    from kiwi_overlay.cmdline import KernelCmdline

    Transport = Literal["nbd", "aoe", "local", "dhcp", ""]

# dracut's by-* directories for the local root forms, and whether '/' and ' ' are escaped.
LOCAL_FORMS: dict[str, tuple[str, bool]] = {
    "UUID": ("/dev/disk/by-uuid/", False),
    "PARTUUID": ("/dev/disk/by-partuuid/", False),
    "LABEL": ("/dev/disk/by-label/", True),
    "PARTLABEL": ("/dev/disk/by-partlabel/", True),
    "UNIXNODE": ("/dev/", False),
    "MAPPER": ("/dev/mapper/", False),
}
# Roots that need an IP address whatever the command line says: NBD, and root=dhcp (its
# root-path names an NBD export).
ADDRESSED = ("nbd", "dhcp")


def root_transport(root: str | None) -> Transport | None:
    """ROOT's transport (root= as written); "" for an overlay root of no known form; None for another root."""
    if root == "dhcp":
        return "dhcp"
    if root is None or not root.startswith("overlay:"):
        return None
    spec = root.removeprefix("overlay:")
    kind, sep, _ = spec.partition("=")
    if (kind == "nbd" and sep) or spec.startswith(("nbd://", "nbds://")):
        return "nbd"
    if kind == "aoe" and sep:
        return "aoe"
    if kind in LOCAL_FORMS and sep:
        return "local"
    return ""


def is_overlay_root(cmdline: KernelCmdline) -> bool:
    """root=overlay:..., or root=dhcp (the DHCP server names an overlay root)."""
    return root_transport(cmdline.getarg("root")) is not None


def network_needs(transport: Transport | None, cmdline: KernelCmdline) -> tuple[bool, bool]:
    """(links needed, an address needed) for a root over TRANSPORT."""
    if transport in ADDRESSED:
        return True, True
    neednet = cmdline.getargbool("rd.neednet")
    if transport == "aoe":
        # AoE is layer 2: links up, no addresses; a DHCP wait would hang on a segment without a server.
        return True, bool(cmdline.getargs("ip")) or neednet
    return neednet, neednet


def implied_dhcp(transport: Transport | None, cmdline: KernelCmdline) -> bool:
    """As dracut: an address needed and no ip= means DHCP on every link (the first lease wins)."""
    return network_needs(transport, cmdline)[1] and not cmdline.getargs("ip")


def write_kind(cmdline: KernelCmdline, *, device: bool) -> Literal["tmpfs", "device", "none"]:
    """Where writes go: none (rd.root.overlay.readonly), DEVICE's file system, or a tmpfs."""
    if cmdline.getargbool("rd.root.overlay.readonly"):
        return "none"
    if device and not cmdline.getargbool("rd.root.overlay.temporary"):
        return "device"
    return "tmpfs"


def debug_requested(cmdline: KernelCmdline) -> bool:
    return cmdline.getargbool("rd.kiwi.debug") or cmdline.getargbool("rd.debug")
