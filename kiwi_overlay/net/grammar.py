"""dracut's network options parsed into data: ip=, ifname=, BOOTIF=, nameserver=, rd.route=, vlan=, bond=, bridge=.

Pure parsing (no I/O, no pyroute2), following dracut 059's net-lib.sh (ip_to_var,
route_to_var, parse_ifname_opts, fix_bootif) and network-legacy's parse-vlan.sh, parse-bond.sh,
parse-bridge.sh. Malformed values raise a one-line OptionError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiwi_overlay.cmdline import KernelCmdline, whole_number
from kiwi_overlay.config.values import is_interface_name
from kiwi_overlay.errors import OptionError

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    Method = Literal["dhcp", "dhcp6", "auto6", "static", "off"]

# dracut's autoconf keywords and what kiwi-overlay does for each.
_METHODS: dict[str, Method] = {
    "dhcp": "dhcp",
    "on": "dhcp",
    "any": "dhcp",
    "single-dhcp": "dhcp",
    "dhcp6": "dhcp6",
    "auto6": "auto6",
    "either6": "auto6",
    "none": "static",
    "off": "static",
}
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_IP_EXAMPLE = "ip=eth0:dhcp"
_STATIC_EXAMPLE = "ip=192.168.1.10::192.168.1.1:255.255.255.0:client:eth0:none"


@dataclass(frozen=True)
class IpConfig:
    """One ip= value."""

    text: str  # as given
    method: Method  # "static": address below; "off": leave the interface alone
    interface: str | None  # None: any interface that gets a lease (the BOOTIF one when given)
    address: str | None  # client address, static only
    prefix: int | None
    peer: str | None  # dracut's <server-IP>/peer field: shown, not used
    gateway: str | None
    hostname: str | None
    mtu: int | None
    mac: str | None  # set this MAC address on the interface first
    dns: tuple[str, ...]


@dataclass(frozen=True)
class InterfaceName:
    """ifname=NAME:MAC: the interface with MAC is called NAME."""

    name: str
    mac: str


@dataclass(frozen=True)
class StaticRoute:
    """rd.route=NET/PREFIX:GATEWAY[:IFACE]."""

    destination: str  # "10.1.0.0/16", "fd00:1::/64"
    gateway: str | None
    interface: str | None


def _address(text: str, *, family: int | None = None) -> str | None:
    """TEXT as a canonical IP address (of FAMILY 4 or 6 when given), None if it is none."""
    import ipaddress

    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if family is not None and address.version != family:
        return None
    return str(address)


def _fields(value: str) -> list[str]:
    """Split at ':' as dracut's ip_to_var does, keeping a bracketed IPv6 address in one field."""
    fields = []
    rest = value + ":"
    while rest:
        bracket = re.match(r"\[([^\]]*:[^\]]*:[^\]]*)\]:", rest)
        if bracket:
            fields.append(bracket[1])
            rest = rest[bracket.end() :]
        else:
            field, _, rest = rest.partition(":")
            fields.append(field)
    return fields


def _mac(parts: list[str]) -> str | None:
    """A MAC address from its six ':'-separated parts (or one part already joined), lower case."""
    mac = ":".join(parts).lower()
    return mac if _MAC.fullmatch(mac) else None


def _interface(name: str, *, option: str, value: str, example: str) -> str:
    if not is_interface_name(name):
        raise OptionError(option, value, f"{name!r} is not an interface name", example)
    return name


def _prefix_of(mask: str, address: str, value: str) -> int:
    """The prefix length of a netmask given as a number or (IPv4) a dotted mask."""
    version = 6 if ":" in address else 4
    limit = 128 if version == 6 else 32
    prefix = whole_number(mask, low=1, high=limit)
    if prefix is not None:
        return prefix
    if version == 4 and _address(mask, family=4):
        bits = "".join(f"{int(octet):08b}" for octet in mask.split("."))
        if "01" not in bits and "1" in bits:
            return bits.count("1")
    raise OptionError("ip", value, f"netmask {mask[:20]!r} is not a prefix length (1-{limit}) or a dotted netmask", _STATIC_EXAMPLE)


def _mtu(text: str, value: str) -> int:
    mtu = whole_number(text, low=68, high=65535)
    if mtu is None:
        raise OptionError("ip", value, f"MTU {text[:20]!r} is not a number from 68 to 65535", "ip=eth0:dhcp:9000")
    return mtu


def _mtu_and_mac(rest: list[str], value: str) -> tuple[int | None, str | None]:
    """[:MTU][:MAC] after the autoconf field (MAC as six parts, or one)."""
    mtu = _mtu(rest[0], value) if rest and rest[0] else None
    mac_parts = rest[1:]
    if not mac_parts or mac_parts == [""]:
        return mtu, None
    mac = _mac(mac_parts)
    if mac is None:
        raise OptionError("ip", value, f"{':'.join(mac_parts)!r} is not a MAC address", "ip=eth0:dhcp:1500:52:54:00:12:34:56")
    return mtu, mac


def parse_ip(value: str) -> IpConfig:
    """One ip= value in any of dracut's forms."""
    fields = _fields(value)
    if len(fields) == 1:
        keyword = value
        if keyword in _METHODS and keyword not in ("none", "off"):
            return IpConfig(value, _METHODS[keyword], None, None, None, None, None, None, None, None, ())
        if keyword in ("none", "off"):
            return IpConfig(value, "off", None, None, None, None, None, None, None, None, ())
        if _address(keyword):
            raise OptionError("ip", value, "an address alone (anaconda style) is not supported; give the full static form", _STATIC_EXAMPLE)
        raise OptionError("ip", value, "unknown value; use dhcp, on, any, dhcp6, auto6, off, IFACE:dhcp or the static form", _IP_EXAMPLE)
    if len(fields) < 7 or fields[1] in _METHODS:
        # ip=IFACE:AUTOCONF[:MTU[:MAC]]
        name, keyword, rest = fields[0], fields[1], fields[2:]
        if keyword not in _METHODS or _METHODS[keyword] == "static":
            raise OptionError(
                "ip", value, f"{keyword!r} is not dhcp, on, any, dhcp6 or auto6 (or the static form is incomplete)", _IP_EXAMPLE
            )
        interface = _interface(name, option="ip", value=value, example=_IP_EXAMPLE) if name else None
        mtu, mac = _mtu_and_mac(rest, value)
        return IpConfig(value, _METHODS[keyword], interface, None, None, None, None, None, mtu, mac, ())
    # ip=CLIENT:[PEER]:GATEWAY:NETMASK:HOSTNAME:IFACE:AUTOCONF[:MTU[:MAC]] or [:DNS1[:DNS2]]
    client, peer, gateway, mask, hostname, name, keyword, *rest = fields
    if keyword == "":
        keyword = "dhcp"  # dracut: an empty autoconf means dhcp
    if keyword not in _METHODS:
        raise OptionError("ip", value, f"autoconf {keyword!r} is not none, off, dhcp, on, any, dhcp6 or auto6", _STATIC_EXAMPLE)
    method = _METHODS[keyword]
    interface = _interface(name, option="ip", value=value, example=_STATIC_EXAMPLE) if name else None
    address = prefix = None
    if method == "static":
        client_address, _, client_prefix = client.partition("/")
        address = _address(client_address)
        if address is None:
            raise OptionError("ip", value, f"client address {client!r} is not an IP address", _STATIC_EXAMPLE)
        if not (mask or client_prefix):
            raise OptionError("ip", value, "a static address needs a netmask", _STATIC_EXAMPLE)
        prefix = _prefix_of(client_prefix or mask, address, value)
        if interface is None:
            raise OptionError("ip", value, "a static address needs the interface name", _STATIC_EXAMPLE)
    elif client:
        raise OptionError("ip", value, f"a client address does not go with {keyword}", "ip=:::::eth0:dhcp")
    family = 6 if address and ":" in address else 4 if address else None
    checked: dict[str, str | None] = {}
    for label, text in (("peer", peer), ("gateway", gateway)):
        checked[label] = _address(text, family=family) if text else None
        if text and checked[label] is None:
            raise OptionError("ip", value, f"{label} {text!r} is not an IP address of the client's family", _STATIC_EXAMPLE)
    if hostname and not _HOSTNAME.fullmatch(hostname):
        raise OptionError("ip", value, f"{hostname!r} is not a host name", _STATIC_EXAMPLE)
    dns: tuple[str, ...] = ()
    mtu = mac = None
    if rest and rest[0] and (":" in rest[0] or _address(rest[0], family=4)):
        if len(rest) > 2 or not all(_address(server) for server in rest if server):
            raise OptionError(
                "ip", value, f"DNS servers {':'.join(rest)!r} are not one or two IP addresses", _STATIC_EXAMPLE + ":192.168.1.1"
            )
        dns = tuple(str(_address(server)) for server in rest if server)
    else:
        mtu, mac = _mtu_and_mac(rest, value)
    return IpConfig(value, method, interface, address, prefix, checked["peer"], checked["gateway"], hostname or None, mtu, mac, dns)


def parse_ifname(value: str) -> InterfaceName:
    name, _, mac_text = value.partition(":")
    mac = _mac(mac_text.split(":"))
    if not is_interface_name(name) or mac is None:
        raise OptionError("ifname", value, "needs NAME:MAC with a six-byte MAC address", "ifname=netboot:52:54:00:12:34:56")
    return InterfaceName(name, mac)


def parse_bootif(value: str) -> str:
    """The MAC address in pxelinux's BOOTIF=01-aa-bb-cc-dd-ee-ff (the hardware type 01 is optional)."""
    parts = re.split("[-:]", value)
    if len(parts) == 7:
        parts = parts[1:]
    mac = _mac(parts)
    if mac is None:
        raise OptionError("BOOTIF", value, "is not [01-]aa-bb-cc-dd-ee-ff", "BOOTIF=01-52-54-00-12-34-56")
    return mac


def parse_nameserver(value: str) -> str:
    address = _address(value.strip("[]"))
    if address is None:
        raise OptionError("nameserver", value, "is not an IP address", "nameserver=192.168.1.1")
    return address


def parse_route(value: str) -> StaticRoute:
    fields = _fields(value)
    example = "rd.route=10.1.0.0/16:192.168.1.1:eth0"
    if len(fields) not in (2, 3):
        raise OptionError("rd.route", value, "needs NET/PREFIX:GATEWAY[:IFACE]", example)
    destination, gateway, *name = fields
    network, slash, prefix = destination.partition("/")
    address = _address(network)
    limit = 128 if address and ":" in address else 32
    if address is None or (slash and whole_number(prefix, low=0, high=limit) is None):
        raise OptionError("rd.route", value, f"{destination[:60]!r} is not NET/PREFIX", example)
    family = 6 if ":" in address else 4
    if gateway and _address(gateway, family=family) is None:
        raise OptionError("rd.route", value, f"gateway {gateway!r} is not an IPv{family} address", example)
    interface = name[0] if name and name[0] else None
    if interface is not None:
        interface = _interface(interface, option="rd.route", value=value, example=example)
    return StaticRoute(f"{address}/{prefix or limit}", _address(gateway) if gateway else None, interface)


@dataclass(frozen=True)
class Vlan:
    """vlan=NAME:PARENT; the VLAN ID is the number at the end of NAME (vlan0042, vlan42, eth0.0042, eth0.42)."""

    text: str  # as given
    name: str
    parent: str
    vid: int


@dataclass(frozen=True)
class Bond:
    """bond=NAME[:PORTS[:OPTIONS[:MTU]]]; OPTIONS are the bonding driver's (its sysfs names and values)."""

    text: str
    name: str
    ports: tuple[str, ...]
    options: tuple[tuple[str, str], ...]  # (name, value); arp_ip_target may come more than once
    mtu: int | None


@dataclass(frozen=True)
class Bridge:
    """bridge=NAME:PORTS."""

    text: str
    name: str
    ports: tuple[str, ...]


_VLAN_EXAMPLE = "vlan=eth0.42:eth0"
_BOND_EXAMPLE = "bond=bond0:eth0,eth1:mode=active-backup,miimon=100"
_BRIDGE_EXAMPLE = "bridge=br0:eth0"
_BOND_OPTION = re.compile(r"([a-z_0-9]+)=([A-Za-z0-9_.+;-]+)")


def parse_vlan(value: str) -> Vlan:
    name, _, parent = value.partition(":")
    if not name or not parent or ":" in parent:
        raise OptionError("vlan", value, "needs NAME:PARENT", _VLAN_EXAMPLE)
    _interface(name, option="vlan", value=value, example=_VLAN_EXAMPLE)
    _interface(parent, option="vlan", value=value, example=_VLAN_EXAMPLE)
    # dracut's get_vid: vlanNNNN, or PARENT.NNNN (any parent name, zero padding optional).
    vid_text = name.removeprefix("vlan") if name.startswith("vlan") else name.rpartition(".")[2] if "." in name else ""
    vid = whole_number(vid_text, low=1, high=4094)
    if vid is None:
        raise OptionError("vlan", value, f"{name[:40]!r} does not end in a VLAN ID from 1 to 4094 (vlanID or IFACE.ID)", _VLAN_EXAMPLE)
    return Vlan(value, name, parent, vid)


def _ports(text: str, *, option: str, value: str, example: str) -> tuple[str, ...]:
    ports = tuple(text.split(","))
    for port in ports:
        _interface(port, option=option, value=value, example=example)
    if len(set(ports)) != len(ports):
        raise OptionError(option, value, "names a port twice", example)
    return ports


def parse_bond(value: str) -> Bond:
    """bond=NAME[:PORTS[:OPTIONS[:MTU]]], or a bare `bond`: bond0 over eth0,eth1 in balance-rr, as dracut does."""
    fields = value.split(":") if value not in ("", "bond") else []  # a bare `bond` (getargs gives the key)
    if len(fields) > 4:
        raise OptionError("bond", value, "has more than NAME:PORTS:OPTIONS:MTU", _BOND_EXAMPLE)
    name = _interface(fields[0], option="bond", value=value, example=_BOND_EXAMPLE) if fields else "bond0"
    ports = _ports(fields[1], option="bond", value=value, example=_BOND_EXAMPLE) if len(fields) > 1 else ("eth0", "eth1")
    options: list[tuple[str, str]] = []
    for text in fields[2].split(",") if len(fields) > 2 and fields[2] else ("mode=balance-rr",) * (len(fields) < 3):
        option = _BOND_OPTION.fullmatch(text)
        if not option or (";" in option[2] and option[1] != "arp_ip_target"):
            raise OptionError("bond", value, f"bonding option {text!r} is not NAME=VALUE", _BOND_EXAMPLE)
        # Several ARP targets are separated by ';' (',' separates the options).
        values = option[2].split(";") if option[1] == "arp_ip_target" else [option[2]]
        options += [(option[1], item) for item in values]
    mtu = _mtu(fields[3], value) if len(fields) > 3 and fields[3] else None
    return Bond(value, name, ports, tuple(options), mtu)


def parse_bridge(value: str) -> Bridge:
    """bridge=NAME:PORTS, or a bare `bridge`: br0 over eth0, as dracut does."""
    if value in ("", "bridge"):  # a bare `bridge` (getargs gives the key)
        return Bridge(value, "br0", ("eth0",))
    name, _, ports = value.partition(":")
    if not name or not ports or ":" in ports:
        raise OptionError("bridge", value, "needs NAME:PORTS (ports separated by commas)", _BRIDGE_EXAMPLE)
    _interface(name, option="bridge", value=value, example=_BRIDGE_EXAMPLE)
    return Bridge(value, name, _ports(ports, option="bridge", value=value, example=_BRIDGE_EXAMPLE))


def parse_ip_configs(values: tuple[str, ...]) -> tuple[IpConfig, ...]:
    """Every ip= value; several need interface names, and one interface only once (as dracut says)."""
    configs = tuple(map(parse_ip, values))
    seen: set[str] = set()
    for config in configs:
        if len(configs) > 1 and config.interface is None and config.method != "off":
            raise OptionError("ip", config.text, "with several ip= each one needs an interface", "ip=eth0:dhcp ip=eth1:dhcp")
        if config.interface in seen:
            raise OptionError("ip", config.text, f"{config.interface} is configured twice", "ip=eth0:dhcp ip=eth1:dhcp")
        if config.interface:
            seen.add(config.interface)
    return configs


def parse_bootif_option(cmdline: KernelCmdline) -> str | None:
    """BOOTIF's MAC unless rd.bootif=0 turns it off."""
    value = cmdline.getarg("BOOTIF")
    if not value or not cmdline.getargbool("rd.bootif", default=True):
        return None
    return parse_bootif(value)
