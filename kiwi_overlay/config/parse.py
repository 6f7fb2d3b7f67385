"""The kernel command line into a Plan: parse_plan().

Parsing does no I/O; parse_plan raises OptionError (one line) for any unusable option.
"""

from __future__ import annotations

import re

from kiwi_overlay.cmdline import KernelCmdline, whole_number
from kiwi_overlay.config.claim import debug_requested, implied_dhcp, network_needs, write_kind
from kiwi_overlay.config.plan import DhcpRoot, Network, Partition, Plan, Root, WriteLayer
from kiwi_overlay.config.roots import parse_root
from kiwi_overlay.config.values import byte_size, device_from_spec, is_interface_name, positive_number
from kiwi_overlay.errors import OptionError
from kiwi_overlay.foreign import foreign_option_notes
from kiwi_overlay.net.grammar import (
    parse_bond,
    parse_bootif_option,
    parse_bridge,
    parse_ifname,
    parse_ip_configs,
    parse_nameserver,
    parse_route,
    parse_vlan,
)

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

# What a plan holds when the command line does not say.
DEFAULT_TIMEOUT = 120.0
DEFAULT_TMPFS_SIZE = "50%"
_WRITE_FORMS = ("UUID", "PARTUUID", "LABEL", "PARTLABEL")
_PERCENT = re.compile(r"([0-9]{1,3})%")
_MAX_TMPFS_BYTES = 1 << 62


def _parse_size(cmdline: KernelCmdline) -> str:
    value = cmdline.getarg("rd.root.overlay.size")
    if value is None:
        return DEFAULT_TMPFS_SIZE
    percent = _PERCENT.fullmatch(value)
    size = byte_size(value)
    if (percent and 1 <= int(percent[1]) <= 100) or (size is not None and 0 < size <= _MAX_TMPFS_BYTES):
        return value.lower()
    raise OptionError(
        "rd.root.overlay.size", value, "must be a percentage of RAM (1-100%) or a size with k, m, g or t", "rd.root.overlay.size=2g"
    )


def _parse_write(cmdline: KernelCmdline) -> WriteLayer:
    size = _parse_size(cmdline)
    spec = cmdline.getarg("rd.root.overlay.write")
    device = None
    if spec is not None:
        device = device_from_spec(spec, option="rd.root.overlay.write", example="rd.root.overlay.write=LABEL=cow", forms=_WRITE_FORMS)
    fallback = cmdline.getarg("rd.root.overlay.write.fallback")
    if fallback not in (None, "tmpfs"):
        raise OptionError("rd.root.overlay.write.fallback", fallback, "the only fallback is tmpfs", "rd.root.overlay.write.fallback=tmpfs")
    return WriteLayer(
        kind=write_kind(cmdline, device=device is not None),
        size=size,
        device=device,
        reset=cmdline.getargbool("rd.root.overlay.reset"),
        fallback_tmpfs=fallback == "tmpfs",
        fsck=cmdline.getargbool("rd.root.overlay.write.fsck", default=True) and not cmdline.getargbool("rd.skipfsck"),
    )


def _parse_network(cmdline: KernelCmdline, root: Root | None) -> Network:
    transport = root.transport if root is not None else None
    needed, needs_ip = network_needs(transport, cmdline)
    implied = implied_dhcp(transport, cmdline)
    ip = cmdline.getargs("ip") or ("dhcp",) * implied
    bonds = tuple(map(parse_bond, cmdline.getargs("bond")))
    bridges = tuple(map(parse_bridge, cmdline.getargs("bridge")))
    vlans = tuple(map(parse_vlan, cmdline.getargs("vlan")))
    names = [bond.name for bond in bonds] + [bridge.name for bridge in bridges] + [vlan.name for vlan in vlans]
    for twice in {name for name in names if names.count(name) > 1}:
        raise OptionError("vlan/bond/bridge", twice, "is created twice", "bond=bond0:eth0,eth1 vlan=bond0.42:bond0")
    bootdev = cmdline.getarg("bootdev") or None
    if bootdev is not None and not is_interface_name(bootdev):
        raise OptionError("bootdev", bootdev, "is not an interface name", "bootdev=eth0")
    return Network(
        needed=needed,
        needs_ip=needs_ip,
        ip=ip,
        implied_dhcp=implied,
        configs=parse_ip_configs(ip),
        interface_names=tuple(map(parse_ifname, cmdline.getargs("ifname"))),
        bootif=parse_bootif_option(cmdline),
        nameservers=tuple(map(parse_nameserver, cmdline.getargs("nameserver"))),
        routes=tuple(map(parse_route, cmdline.getargs("rd.route"))),
        bonds=bonds,
        bridges=bridges,
        vlans=vlans,
        bootdev=bootdev,
        peerdns=cmdline.getargbool("rd.peerdns", default=True),
        team=cmdline.getargs("team"),
    )


_PARTITION_TAGS: tuple[Literal["PARTLABEL", "PARTUUID", "LABEL", "UUID"], ...] = ("PARTLABEL", "PARTUUID", "LABEL", "UUID")


def _parse_partition(cmdline: KernelCmdline) -> Partition | None:
    text = cmdline.getarg("rd.root.overlay.partition")
    if text is None:
        return None
    number = whole_number(text, low=1, high=255)
    if number is not None:
        return Partition(by="number", value=str(number))
    key, _, value = text.partition("=")
    for tag in _PARTITION_TAGS:
        if key == tag and value:
            return Partition(by=tag, value=value)
    raise OptionError(
        "rd.root.overlay.partition",
        text,
        "needs a partition number (1-255) or " + ", ".join(f"{tag}=" for tag in _PARTITION_TAGS) + " with a value",
        "rd.root.overlay.partition=2",
    )


def _parse_verity(cmdline: KernelCmdline) -> str | None:
    from kiwi_overlay.verity import ROOT_HASH_LENGTHS

    value = cmdline.getarg("rd.root.overlay.verity")
    if value is None:
        return None
    if len(value) not in ROOT_HASH_LENGTHS or not re.fullmatch(r"[0-9A-Fa-f]+", value):
        raise OptionError(
            "rd.root.overlay.verity",
            value,
            "needs the root hash that veritysetup format printed (64 hex digits for sha256)",
            "rd.root.overlay.verity=" + "4f" * 32,
        )
    return value.lower()


def parse_plan(cmdline: KernelCmdline) -> Plan:
    """The plan for CMDLINE; raises OptionError (one line) for any unusable option."""
    root_text = cmdline.getarg("root")
    root: Root | None = None
    if root_text == "dhcp":
        root = DhcpRoot(cmdline=cmdline.text)
    elif root_text and root_text.startswith("overlay:"):
        root = parse_root(cmdline, root_text)
    readonly = cmdline.getargbool("rd.root.overlay.readonly")
    rootfstype = cmdline.getarg("rootfstype") or None
    if rootfstype is not None and not re.fullmatch(r"[a-z0-9_.]+", rootfstype):
        raise OptionError("rootfstype", rootfstype, "is not a filesystem type", "rootfstype=squashfs")
    return Plan(
        root=root,
        write=_parse_write(cmdline),
        network=_parse_network(cmdline, root),
        readonly=readonly,
        rootfstype=rootfstype,
        rootflags=cmdline.getarg("rootflags") or None,
        timeout=positive_number(cmdline, "rd.root.overlay.timeout", DEFAULT_TIMEOUT, "120") or DEFAULT_TIMEOUT,
        debug=debug_requested(cmdline),
        partition=_parse_partition(cmdline),
        ram=cmdline.getargbool("rd.root.overlay.ram"),
        notes=foreign_option_notes(cmdline) if root is not None else (),
        verity=_parse_verity(cmdline),
    )
