"""Virtual links from bond=, bridge= and vlan=, created with pyroute2 before any address is configured.

Bonds and bridges first, VLANs last (a VLAN may sit on a bond or a bridge). A link that exists
already with the right kind is kept (a second `net up`, or another network stack made it). Bonding
options go through the driver's sysfs files, as dracut writes them: the kernel itself parses names
and numbers and refuses a bad value. If anything fails, the links created so far are deleted again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from kiwi_overlay import log
from kiwi_overlay.config.plan import Network
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.net.grammar import Bond, Bridge, Vlan

SYS_NET = Path("/sys/class/net")
# The kernel module behind each kind, for the message when the kernel lacks it.
_MODULES = {"bond": "bonding", "bridge": "bridge", "vlan": "8021q"}
# Set after the ports are enslaved (the driver needs the port to exist in the bond), as dracut does.
_AFTER_PORTS = ("primary",)


def create_links(ipr: Any, network: Network, *, sys_net: Path = SYS_NET) -> tuple[str, ...]:
    """Create NETWORK's bonds, bridges and VLANs and set them and their ports up.

    Returns the links they use (ports and VLAN parents): these carry no address of their own.
    """
    created: list[str] = []
    used: list[str] = []
    try:
        for bond in network.bonds:
            used += _bond(ipr, bond, created, sys_net)
        for bridge in network.bridges:
            used += _bridge(ipr, bridge, created)
        for vlan in network.vlans:
            used += _vlan(ipr, vlan, created)
    except BaseException:
        _delete(ipr, created)
        raise
    return tuple(dict.fromkeys(used))


def _kind(ipr: Any, index: int) -> str | None:
    info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def _index(ipr: Any, name: str, *, option: str, text: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise KiwiOverlayError(f"{option}={text}: network interface {name} not found")
    return int(found[0])


def _add(ipr: Any, name: str, kind: str, created: list[str], *, option: str, text: str, **attributes: Any) -> int:
    """The link NAME of KIND: the existing one, or a new one (recorded in CREATED)."""
    from kiwi_overlay.pyroute import NetlinkError

    existing = ipr.link_lookup(ifname=name)
    if existing:
        if _kind(ipr, existing[0]) != kind:
            raise KiwiOverlayError(f"{option}={text}: {name} exists already and is not a {kind}")
        log.info(f"{name}: {kind} exists already")
        return int(existing[0])
    try:
        ipr.link("add", ifname=name, kind=kind, **attributes)
    except NetlinkError as error:
        if error.code == errno.EOPNOTSUPP:
            raise KiwiOverlayError(
                f"{option}={text}: this kernel cannot create {kind} links (is the {_MODULES[kind]} module in the initrd?)"
            ) from None
        raise KiwiOverlayError(f"{option}={text}: creating {name}: {os.strerror(error.code)}") from None
    created.append(name)
    return _index(ipr, name, option=option, text=text)


def _enslave(ipr: Any, port: str, master: int, *, option: str, text: str) -> None:
    from kiwi_overlay.pyroute import NetlinkError

    index = _index(ipr, port, option=option, text=text)
    try:
        ipr.link("set", index=index, state="down")  # the bonding driver takes only ports that are down
        ipr.link("set", index=index, master=master)
        ipr.link("set", index=index, state="up")
    except NetlinkError as error:
        raise KiwiOverlayError(f"{option}={text}: adding {port}: {os.strerror(error.code)}") from None


def _bond_option(sys_net: Path, bond: Bond, name: str, value: str) -> None:
    path = sys_net / bond.name / "bonding" / name
    if not path.exists():
        raise KiwiOverlayError(f"bond={bond.text}: the bonding driver has no option {name!r} (see modinfo bonding)")
    try:
        # arp_ip_target takes one address at a time, added with '+'.
        path.write_text(f"+{value}" if name == "arp_ip_target" else value)
    except OSError as error:
        raise KiwiOverlayError(f"bond={bond.text}: the bonding driver refuses {name}={value} ({error.strerror})") from None


def _bond(ipr: Any, bond: Bond, created: list[str], sys_net: Path) -> tuple[str, ...]:
    fresh = not ipr.link_lookup(ifname=bond.name)
    index = _add(ipr, bond.name, "bond", created, option="bond", text=bond.text)
    if fresh:  # options can change only while the bond is down and has no ports
        for name, value in bond.options:
            if name not in _AFTER_PORTS:
                _bond_option(sys_net, bond, name, value)
    for port in bond.ports:
        _enslave(ipr, port, index, option="bond", text=bond.text)
    for name, value in bond.options:
        if name in _AFTER_PORTS:
            _bond_option(sys_net, bond, name, value)
    if bond.mtu:
        ipr.link("set", index=index, mtu=bond.mtu)
    ipr.link("set", index=index, state="up")
    options = ", ".join(f"{name}={value}" for name, value in bond.options)
    log.info(f"{bond.name}: bond of {', '.join(bond.ports)}" + (f" ({options})" if options else ""))
    return bond.ports


def _bridge(ipr: Any, bridge: Bridge, created: list[str]) -> tuple[str, ...]:
    # No forward delay: a boot cannot wait 15 s for each port (dracut sets 0 too); STP stays off.
    index = _add(ipr, bridge.name, "bridge", created, option="bridge", text=bridge.text, br_forward_delay=0)
    for port in bridge.ports:
        _enslave(ipr, port, index, option="bridge", text=bridge.text)
    ipr.link("set", index=index, state="up")
    log.info(f"{bridge.name}: bridge of {', '.join(bridge.ports)}")
    return bridge.ports


def _vlan(ipr: Any, vlan: Vlan, created: list[str]) -> tuple[str, ...]:
    parent = _index(ipr, vlan.parent, option="vlan", text=vlan.text)
    index = _add(ipr, vlan.name, "vlan", created, option="vlan", text=vlan.text, link=parent, vlan_id=vlan.vid)
    ipr.link("set", index=parent, state="up")
    ipr.link("set", index=index, state="up")
    log.info(f"{vlan.name}: VLAN {vlan.vid} on {vlan.parent}")
    return (vlan.parent,)


def _delete(ipr: Any, names: list[str]) -> None:
    from kiwi_overlay.pyroute import NetlinkError

    for name in reversed(names):
        for index in ipr.link_lookup(ifname=name):
            try:
                ipr.link("del", index=index)
            except NetlinkError:
                continue
            log.info(f"{name}: deleted again")
