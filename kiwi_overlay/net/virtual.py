"""Virtual links from bond=, bridge= and vlan=, created over rtnetlink before any address is configured.

Bonds and bridges first, VLANs last (a VLAN may sit on a bond or a bridge). A link that exists
already with the right kind is kept (a second `net up`, or another network stack made it). Bonding
options go through the driver's sysfs files, as dracut writes them: the kernel itself parses names
and numbers and refuses a bad value. If anything fails, the links created so far are deleted again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from kiwi_overlay import log
from kiwi_overlay.config.plan import Network
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.net.grammar import Bond, Bridge, Vlan

if TYPE_CHECKING:
    from kiwi_overlay.netlink.route import Route

SYS_NET = Path("/sys/class/net")
# The kernel module behind each kind, for the message when the kernel lacks it.
_MODULES = {"bond": "bonding", "bridge": "bridge", "vlan": "8021q"}
# Set after the ports are enslaved (the driver needs the port to exist in the bond), as dracut does.
_AFTER_PORTS = ("primary",)


def create_links(rtnl: Route, network: Network, *, sys_net: Path = SYS_NET) -> tuple[str, ...]:
    """Create NETWORK's bonds, bridges and VLANs and set them and their ports up.

    Returns the links they use (ports and VLAN parents): these carry no address of their own.
    """
    created: list[str] = []
    used: list[str] = []
    try:
        for bond in network.bonds:
            used += _bond(rtnl, bond, created, sys_net)
        for bridge in network.bridges:
            used += _bridge(rtnl, bridge, created)
        for vlan in network.vlans:
            used += _vlan(rtnl, vlan, created)
    except BaseException:
        _delete(rtnl, created)
        raise
    return tuple(dict.fromkeys(used))


def _index(rtnl: Route, name: str, *, option: str, text: str) -> int:
    found = rtnl.link_index(name)
    if found is None:
        raise KiwiOverlayError(f"{option}={text}: network interface {name} not found")
    return found


def _add(
    rtnl: Route,
    name: str,
    kind: str,
    created: list[str],
    *,
    option: str,
    text: str,
    parent: int | None = None,
    data: tuple[tuple[str, int], ...] = (),
) -> int:
    """The link NAME of KIND: the existing one, or a new one (recorded in CREATED)."""
    from kiwi_overlay.netlink.pyroute import NetlinkError

    existing = rtnl.link_index(name)
    if existing is not None:
        if rtnl.link_kind(existing) != kind:
            raise KiwiOverlayError(f"{option}={text}: {name} exists already and is not a {kind}")
        log.info(f"{name}: {kind} exists already")
        return existing
    try:
        rtnl.add_link(name, kind, parent=parent, data=data)
    except NetlinkError as error:
        if error.code == errno.EOPNOTSUPP:
            raise KiwiOverlayError(
                f"{option}={text}: this kernel cannot create {kind} links (is the {_MODULES[kind]} module in the initrd?)"
            ) from None
        raise KiwiOverlayError(f"{option}={text}: creating {name}: {os.strerror(error.code)}") from None
    created.append(name)
    return _index(rtnl, name, option=option, text=text)


def _enslave(rtnl: Route, port: str, master: int, *, option: str, text: str) -> None:
    from kiwi_overlay.netlink.pyroute import NetlinkError

    index = _index(rtnl, port, option=option, text=text)
    try:
        rtnl.set_link(index, up=False)  # the bonding driver takes only ports that are down
        rtnl.set_link(index, master=master)
        rtnl.set_link(index, up=True)
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


def _bond(rtnl: Route, bond: Bond, created: list[str], sys_net: Path) -> tuple[str, ...]:
    fresh = rtnl.link_index(bond.name) is None
    index = _add(rtnl, bond.name, "bond", created, option="bond", text=bond.text)
    if fresh:  # options can change only while the bond is down and has no ports
        for name, value in bond.options:
            if name not in _AFTER_PORTS:
                _bond_option(sys_net, bond, name, value)
    for port in bond.ports:
        _enslave(rtnl, port, index, option="bond", text=bond.text)
    for name, value in bond.options:
        if name in _AFTER_PORTS:
            _bond_option(sys_net, bond, name, value)
    if bond.mtu:
        rtnl.set_link(index, mtu=bond.mtu)
    rtnl.set_link(index, up=True)
    options = ", ".join(f"{name}={value}" for name, value in bond.options)
    log.info(f"{bond.name}: bond of {', '.join(bond.ports)}" + (f" ({options})" if options else ""))
    return bond.ports


def _bridge(rtnl: Route, bridge: Bridge, created: list[str]) -> tuple[str, ...]:
    # No forward delay: a boot cannot wait 15 s for each port (dracut sets 0 too); STP stays off.
    data = (("IFLA_BR_FORWARD_DELAY", 0),)
    index = _add(rtnl, bridge.name, "bridge", created, option="bridge", text=bridge.text, data=data)
    for port in bridge.ports:
        _enslave(rtnl, port, index, option="bridge", text=bridge.text)
    rtnl.set_link(index, up=True)
    log.info(f"{bridge.name}: bridge of {', '.join(bridge.ports)}")
    return bridge.ports


def _vlan(rtnl: Route, vlan: Vlan, created: list[str]) -> tuple[str, ...]:
    parent = _index(rtnl, vlan.parent, option="vlan", text=vlan.text)
    index = _add(rtnl, vlan.name, "vlan", created, option="vlan", text=vlan.text, parent=parent, data=(("IFLA_VLAN_ID", vlan.vid),))
    rtnl.set_link(parent, up=True)
    rtnl.set_link(index, up=True)
    log.info(f"{vlan.name}: VLAN {vlan.vid} on {vlan.parent}")
    return (vlan.parent,)


def _delete(rtnl: Route, names: list[str]) -> None:
    from kiwi_overlay.netlink.pyroute import NetlinkError

    for name in reversed(names):
        index = rtnl.link_index(name)
        if index is None:
            continue
        try:
            rtnl.delete_link(index)
        except NetlinkError:
            continue
        log.info(f"{name}: deleted again")
