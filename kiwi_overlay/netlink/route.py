"""rtnetlink for a boot: links, addresses and routes, as requests of pyroute2's ifinfmsg, ifaddrmsg and rtmsg."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from kiwi_overlay.netlink import pyroute
from kiwi_overlay.netlink.core import NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NetlinkSocket

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTMGRP_LINK = 0x1
RTMGRP_IPV6_IFADDR = 0x100
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route add` gives a route: configured at boot, not by a routing daemon
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTN_UNICAST = 1
# The netlink flags that make a new object, replace one, or fail when it exists.
_COMMANDS = {"add": NLM_F_CREATE | NLM_F_EXCL, "replace": NLM_F_CREATE | NLM_F_REPLACE, "delete": 0}


class Route(NetlinkSocket):
    """A NETLINK_ROUTE socket; GROUPS (RTMGRP_*) for one that only watches events."""

    def __init__(self, *, groups: int = 0) -> None:
        super().__init__(socket.NETLINK_ROUTE, groups=groups)

    def links(self) -> list[Any]:
        return self.request(_link(), msg_type=RTM_GETLINK, dump=True)

    def link(self, index: int) -> Any:
        return self.request(_link(index), msg_type=RTM_GETLINK)[0]

    def link_index(self, name: str) -> int | None:
        return next((link["index"] for link in self.links() if link.get_attr("IFLA_IFNAME") == name), None)

    def set_link(
        self,
        index: int,
        *,
        up: bool | None = None,
        name: str | None = None,
        mtu: int | None = None,
        address: str | None = None,
        master: int | None = None,
    ) -> None:
        """Change what is given of link INDEX: state, name, MTU, MAC address, master (a bond or bridge)."""
        msg = _link(index)
        if up is not None:
            msg["change"] = IFF_UP
            msg["flags"] = IFF_UP if up else 0
        attrs = {"IFLA_IFNAME": name, "IFLA_MTU": mtu, "IFLA_ADDRESS": address, "IFLA_MASTER": master}
        msg["attrs"] = [(key, value) for key, value in attrs.items() if value is not None]
        self.request(msg, msg_type=RTM_NEWLINK)

    def add_link(self, name: str, kind: str, *, parent: int | None = None, data: Sequence[tuple[str, Any]] = ()) -> None:
        """A new link NAME of KIND (bond, bridge, vlan), on PARENT, with the kind's DATA (IFLA_VLAN_ID, IFLA_BR_*)."""
        info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
        if data:
            info.append(("IFLA_INFO_DATA", {"attrs": list(data)}))
        msg = _link()
        msg["attrs"] = [("IFLA_IFNAME", name), *([("IFLA_LINK", parent)] if parent is not None else []), ("IFLA_LINKINFO", {"attrs": info})]
        self.request(msg, msg_type=RTM_NEWLINK, flags=_COMMANDS["add"])

    def delete_link(self, index: int) -> None:
        self.request(_link(index), msg_type=RTM_DELLINK)

    def link_kind(self, index: int) -> str | None:
        info = self.link(index).get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info else None

    def addresses(self, family: int) -> list[Any]:
        msg = pyroute.ifaddrmsg()
        msg["family"] = family
        return self.request(msg, msg_type=RTM_GETADDR, dump=True)

    def address(self, command: str, *, index: int, address: str, prefixlen: int, broadcast: str | None = None, flags: int = 0) -> None:
        """COMMAND (replace, delete) ADDRESS/PREFIXLEN on link INDEX; FLAGS: IFA_F_*."""
        version = ipaddress.ip_address(address).version
        msg = pyroute.ifaddrmsg()
        msg["family"] = socket.AF_INET if version == 4 else socket.AF_INET6
        msg["prefixlen"] = prefixlen
        msg["flags"] = flags
        msg["index"] = index
        attrs = [("IFA_LOCAL", address)] if version == 4 else []
        attrs.append(("IFA_ADDRESS", address))
        if broadcast:
            attrs.append(("IFA_BROADCAST", broadcast))
        msg["attrs"] = attrs
        self.request(msg, msg_type=RTM_DELADDR if command == "delete" else RTM_NEWADDR, flags=_COMMANDS[command])

    def route(self, command: str, *, dst: str, gateway: str | None = None, oif: int | None = None) -> None:
        """COMMAND (add, replace, delete) the main table's route to DST (a network) via GATEWAY and/or out of OIF."""
        network = ipaddress.ip_network(dst, strict=False)
        msg = pyroute.rtmsg()
        msg["family"] = socket.AF_INET if network.version == 4 else socket.AF_INET6
        msg["dst_len"] = network.prefixlen
        msg["table"] = RT_TABLE_MAIN
        if command == "delete":  # any protocol, scope and type: the one that matches
            msg["scope"] = RT_SCOPE_NOWHERE
        else:
            msg["proto"] = RTPROT_BOOT
            msg["scope"] = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
            msg["type"] = RTN_UNICAST
        attrs: list[tuple[str, Any]] = [("RTA_DST", str(network.network_address))] if network.prefixlen else []
        if gateway:
            attrs.append(("RTA_GATEWAY", gateway))
        if oif is not None:
            attrs.append(("RTA_OIF", oif))
        msg["attrs"] = attrs
        self.request(msg, msg_type=RTM_DELROUTE if command == "delete" else RTM_NEWROUTE, flags=_COMMANDS[command])


def _link(index: int = 0) -> Any:
    msg = pyroute.ifinfmsg()
    msg["index"] = index
    return msg
