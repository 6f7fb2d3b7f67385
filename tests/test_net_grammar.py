"""ip=, ifname=, BOOTIF=, nameserver=, rd.route=: parsed as dracut 059's own net-lib.sh splits them, and refused in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.config.parse import parse_plan
from kiwi_overlay.errors import OptionError
from kiwi_overlay.net.grammar import Bond, Bridge, IpConfig, Vlan, parse_bond, parse_bootif, parse_bridge, parse_ip, parse_route, parse_vlan

NET_LIB = Path("/usr/lib/dracut/modules.d/40network/net-lib.sh")


def dracut(function: str, value: str, variables: str) -> list[str]:
    """Run net-lib.sh's FUNCTION on VALUE and print VARIABLES, one a line."""
    printed = " ".join(f'"${{{name}}}"' for name in variables.split())
    script = f'. {NET_LIB}; strglob() {{ case "$1" in $2) return 0;; esac; return 1; }}; {function} "$1"; printf "%s\\n" {printed}'
    result = subprocess.run(["sh", "-c", script, "sh", value], capture_output=True, text=True, check=True)
    return result.stdout.split("\n")[:-1]


_VALID = [
    "eth0:dhcp",
    "eth0:on",
    "eth0:any:9000",
    "eth0:dhcp:1500:52:54:00:AB:cd:ef",
    "eth0:dhcp6",
    ":dhcp",
    "10.0.0.2::10.0.0.1:255.255.255.0:client:eth0:none",
    "10.0.0.2:10.0.0.9:10.0.0.1:24:client:eth0:off",
    "10.0.0.2::10.0.0.1:255.255.0.0::eth0:none:9000",
    "10.0.0.2::10.0.0.1:24::eth0:none:1500:52:54:00:12:34:56",
    "10.0.0.2::10.0.0.1:24::eth0:none:10.0.0.53",
    "10.0.0.2::10.0.0.1:24::eth0:none:10.0.0.53:10.0.0.54",
    "[fd00::2]::[fd00::1]:64:client:eth0:none",
    "[fd00::2/64]:::::eth0:none",
    "[fd00::2]::[fd00::1]:64::eth0:none:[fd00::53]",
    ":::::eth1:dhcp",
    "::::myhost:eth1:dhcp",
]


@pytest.mark.parametrize("value", _VALID)
def test_ip_fields_as_dracut_splits_them(value: str) -> None:
    ip, srv, gw, mask, hostname, dev, autoconf, mtu, mac, dns1, dns2 = dracut(
        "ip_to_var", value, "ip srv gw mask hostname dev autoconf mtu macaddr dns1 dns2"
    )
    config = parse_ip(value)
    address = config.address + (f"/{config.prefix}" if "/" in ip else "") if config.address else ""
    methods = {"dhcp": ("dhcp", "on", "any"), "dhcp6": ("dhcp6",), "static": ("none", "off")}
    assert autoconf in methods[config.method]
    assert (address, config.peer or "", config.gateway or "", config.hostname or "", config.interface or "") == (ip, srv, gw, hostname, dev)
    assert (config.mtu, config.mac or "") == (int(mtu) if mtu else None, mac.lower())
    assert config.dns == tuple(server for server in (dns1, dns2) if server)
    if mask:
        assert config.prefix == (int(mask) if mask.isdigit() else bin(int.from_bytes(bytes(map(int, mask.split("."))))).count("1"))


@pytest.mark.parametrize(
    ("value", "method", "interface"),
    [("dhcp", "dhcp", None), ("on", "dhcp", None), ("any", "dhcp", None), ("dhcp6", "dhcp6", None), ("auto6", "auto6", None),
     ("either6", "auto6", None), ("off", "off", None), ("none", "off", None), ("eth0:auto6", "auto6", "eth0")],
)  # fmt: skip
def test_ip_keywords(value: str, method: str, interface: str | None) -> None:
    config = parse_ip(value)
    assert (config.method, config.interface, config.address) == (method, interface, None)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "unknown value"),
        ("dhcpx", "unknown value"),
        ("10.0.0.2", "anaconda style"),
        ("eth0:bootp", "is not dhcp, on, any"),
        ("eth0:dhcp:huge", "MTU 'huge'"),
        ("eth0:dhcp:1500:52:54:00:12:34", "is not a MAC address"),
        ("10.0.0.2::10.0.0.1:255.0.255.0::eth0:none", "netmask '255.0.255.0'"),
        ("10.0.0.2::10.0.0.1:33::eth0:none", "netmask '33'"),
        ("10.0.0.2::10.0.0.1:::eth0:none", "needs a netmask"),
        ("10.0.0.2::10.0.0.1:24:::none", "needs the interface name"),
        ("10.0.0.999::10.0.0.1:24::eth0:none", "client address"),
        ("10.0.0.2::[fd00::1]:24::eth0:none", "gateway 'fd00::1'"),
        ("10.0.0.2::10.0.0.1:24:bad_host!:eth0:none", "not a host name"),
        ("10.0.0.2::10.0.0.1:24::eth0:static", "autoconf 'static'"),
        ("10.0.0.2:::24::eth0:dhcp", "does not go with dhcp"),
        ("10.0.0.2::10.0.0.1:24::eth0:none:10.0.0.53:10.0.0.54:10.0.0.55", "DNS servers"),
        ("10.0.0.2::10.0.0.1:24::eth/0:none", "not an interface name"),
    ],
)
def test_bad_ip_is_one_line_with_an_example(value: str, problem: str) -> None:
    with pytest.raises(OptionError) as error:
        parse_plan(KernelCmdline(f"root=overlay:nbd=10.0.0.1:root ip={value}"))
    message = str(error.value)
    assert message.startswith(f"ip={value}: ")
    assert problem in message
    assert "; e.g. ip=" in message and "\n" not in message


def test_several_ip_need_interfaces_once_each() -> None:
    plan = parse_plan(KernelCmdline("root=overlay:nbd=10.0.0.1:root ip=eth0:dhcp ip=10.1.0.2::10.1.0.1:24::eth1:none"))
    assert [(c.interface, c.method) for c in plan.network.configs] == [("eth0", "dhcp"), ("eth1", "static")]
    for cmdline, problem in [("ip=dhcp ip=eth1:dhcp", "each one needs an interface"), ("ip=eth0:dhcp ip=eth0:dhcp6", "configured twice")]:
        with pytest.raises(OptionError, match=problem):
            parse_plan(KernelCmdline(f"root=overlay:nbd=10.0.0.1:root {cmdline}"))


def test_implied_dhcp_is_parsed_too() -> None:
    network = parse_plan(KernelCmdline("root=overlay:nbd=10.0.0.1:root")).network
    assert network.configs == (IpConfig("dhcp", "dhcp", None, None, None, None, None, None, None, None, ()),)


@pytest.mark.parametrize("value", ["01-52-54-00-AB-CD-EF", "52-54-00-ab-cd-ef", "01:52:54:00:ab:cd:ef"])
def test_bootif_as_dracut_fixes_it(value: str) -> None:
    script = f'. {NET_LIB}; fix_bootif "$1"'
    expected = subprocess.run(["sh", "-c", script, "sh", value], capture_output=True, text=True, check=True).stdout.strip()
    assert parse_bootif(value) == expected == "52:54:00:ab:cd:ef"


def test_bootif_off_and_bad() -> None:
    assert parse_plan(KernelCmdline("root=overlay:nbd=h:r BOOTIF=01-52-54-00-ab-cd-ef rd.bootif=0")).network.bootif is None
    with pytest.raises(OptionError, match=r"^BOOTIF=01-52-54: is not \[01-\]aa-bb-cc-dd-ee-ff; e.g. BOOTIF=01-52-54-00-12-34-56$"):
        parse_plan(KernelCmdline("root=overlay:nbd=h:r BOOTIF=01-52-54"))


@pytest.mark.parametrize(
    ("value", "destination", "gateway", "interface"),
    [
        ("10.1.0.0/16:10.0.0.1", "10.1.0.0/16", "10.0.0.1", None),
        ("10.1.0.0/16:10.0.0.1:eth0", "10.1.0.0/16", "10.0.0.1", "eth0"),
        ("10.1.2.3:10.0.0.1", "10.1.2.3/32", "10.0.0.1", None),
        ("[fd00:1::/64]:[fd00::1]:eth0", "fd00:1::/64", "fd00::1", "eth0"),
    ],
)
def test_routes_as_dracut_splits_them(value: str, destination: str, gateway: str, interface: str | None) -> None:
    mask, gw, dev = dracut("route_to_var", value, "route_mask route_gw route_dev")
    route = parse_route(value)
    assert (route.destination.removesuffix("/32"), route.gateway, route.interface or "") == (mask, gw, dev)
    assert (route.destination, route.gateway, route.interface) == (destination, gateway, interface)


@pytest.mark.parametrize(
    ("option", "problem"),
    [
        ("rd.route=10.1.0.0/16", "needs NET/PREFIX:GATEWAY"),
        ("rd.route=10.1.0.0/40:10.0.0.1", "is not NET/PREFIX"),
        ("rd.route=10.1.0.0/16:fd00::1", "10.1.0.0/16:fd00::1: needs NET/PREFIX"),
        ("rd.route=10.1.0.0/16:10.0.0.x", "gateway '10.0.0.x'"),
        ("nameserver=10.0.0.x", "is not an IP address"),
        ("ifname=netboot:52:54:00", "needs NAME:MAC"),
        ("ifname=:52:54:00:12:34:56", "needs NAME:MAC"),
        ("ifname=..:52:54:00:12:34:56", "needs NAME:MAC"),  # not a name the kernel takes
    ],
)
def test_bad_network_options(option: str, problem: str) -> None:
    with pytest.raises(OptionError) as error:
        parse_plan(KernelCmdline(f"root=overlay:nbd=10.0.0.1:root {option}"))
    assert str(error.value).startswith(option + ": ")
    assert problem in str(error.value)
    assert "; e.g. " in str(error.value)


def test_explain_shows_the_network_plan() -> None:
    cmdline = (
        "root=overlay:nbd=10.0.0.1:root ip=10.0.0.2::10.0.0.1:24:client:eth0:none:10.0.0.53 ip=eth1:dhcp:9000 "
        "ifname=eth1:52:54:00:AB:CD:EF rd.route=10.1.0.0/16:10.0.0.254:eth0 nameserver=[fd00::53] BOOTIF=01-52-54-00-ab-cd-ef"
    )

    def explain(*options: str) -> str:
        argv = [sys.executable, "-m", "kiwi_overlay", "explain", *options, "--cmdline", cmdline]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    network = json.loads(explain("--json"))["network"]
    assert network["configs"][0] == {
        "text": "10.0.0.2::10.0.0.1:24:client:eth0:none:10.0.0.53",
        "method": "static",
        "interface": "eth0",
        "address": "10.0.0.2",
        "prefix": 24,
        "peer": None,
        "gateway": "10.0.0.1",
        "hostname": "client",
        "mtu": None,
        "mac": None,
        "dns": ["10.0.0.53"],
    }
    assert network["configs"][1]["mtu"] == 9000
    assert network["interface_names"] == [{"name": "eth1", "mac": "52:54:00:ab:cd:ef"}]
    assert network["routes"] == [{"destination": "10.1.0.0/16", "gateway": "10.0.0.254", "interface": "eth0"}]
    assert network["nameservers"] == ["fd00::53"]
    assert network["bootif"] == "52:54:00:ab:cd:ef"
    text = explain()
    for line in [
        "eth0: 10.0.0.2/24 via 10.0.0.1 (DNS 10.0.0.53; host name client)",
        "eth1: DHCP (MTU 9000)",
        "interface eth1 is the one with MAC 52:54:00:ab:cd:ef (ifname=)",
        "route 10.1.0.0/16 via 10.0.0.254 dev eth0",
        "name servers: fd00::53",
    ]:
        assert f"             {line}\n" in text


# ---- vlan=, bond=, bridge= (dracut's network-legacy parse-vlan.sh, parse-bond.sh, parse-bridge.sh) -----------------


@pytest.mark.parametrize(
    ("value", "name", "parent", "vid"),
    [
        ("vlan0042:eth0", "vlan0042", "eth0", 42),
        ("vlan5:bond0", "vlan5", "bond0", 5),
        ("eth0.0100:eth0", "eth0.0100", "eth0", 100),
        ("eth0.4094:eth0", "eth0.4094", "eth0", 4094),
    ],
)
def test_vlan_id_from_the_name_as_dracut_reads_it(value: str, name: str, parent: str, vid: int) -> None:
    assert parse_vlan(value) == Vlan(value, name, parent, vid)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("eth0.42", "needs NAME:PARENT"),
        ("eth0.42:eth0:x", "needs NAME:PARENT"),
        ("eth0.0:eth0", "does not end in a VLAN ID from 1 to 4094"),
        ("eth0.4095:eth0", "does not end in a VLAN ID from 1 to 4094"),
        ("internal:eth0", "does not end in a VLAN ID"),
    ],
)
def test_bad_vlan_is_one_line(value: str, problem: str) -> None:
    with pytest.raises(OptionError, match=f"^vlan={re.escape(value)}: .*{problem}.*; e.g. vlan=eth0.42:eth0$"):
        parse_vlan(value)


def test_bond_forms() -> None:
    assert parse_bond("bond") == Bond("bond", "bond0", ("eth0", "eth1"), (("mode", "balance-rr"),), None)
    assert parse_bond("bond1") == Bond("bond1", "bond1", ("eth0", "eth1"), (("mode", "balance-rr"),), None)
    assert parse_bond("bond1:eth2,eth3") == Bond("bond1:eth2,eth3", "bond1", ("eth2", "eth3"), (("mode", "balance-rr"),), None)
    value = "bond0:eth0,eth1:mode=802.3ad,miimon=100,xmit_hash_policy=layer2+3,arp_ip_target=10.0.0.1;10.0.0.2:9000"
    assert parse_bond(value) == Bond(
        value,
        "bond0",
        ("eth0", "eth1"),
        (
            ("mode", "802.3ad"),
            ("miimon", "100"),
            ("xmit_hash_policy", "layer2+3"),
            ("arp_ip_target", "10.0.0.1"),
            ("arp_ip_target", "10.0.0.2"),
        ),
        9000,
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("bond0:eth0,eth1:mode=1:9000:x", "has more than NAME:PORTS:OPTIONS:MTU"),
        ("bond0:eth0,eth0", "names a port twice"),
        ("bond0:eth0:mode", "'mode' is not NAME=VALUE"),
        ("bond0:eth0:mode=1;2", "is not NAME=VALUE"),
        ("bond0:eth0:mode=1:10", "MTU '10' is not a number from 68 to 65535"),
    ],
)
def test_bad_bond_is_one_line(value: str, problem: str) -> None:
    with pytest.raises(OptionError, match=f"^(bond|ip)={re.escape(value)}: .*{re.escape(problem)}"):
        parse_bond(value)


def test_bridge_forms() -> None:
    assert parse_bridge("bridge") == Bridge("bridge", "br0", ("eth0",))
    assert parse_bridge("br1:eth0,eth1") == Bridge("br1:eth0,eth1", "br1", ("eth0", "eth1"))
    with pytest.raises(OptionError, match=r"^bridge=br1: needs NAME:PORTS"):
        parse_bridge("br1")


def test_network_plan_with_virtual_links_bootdev_peerdns_and_team() -> None:
    plan = parse_plan(
        KernelCmdline("root=overlay:nbd=10.0.0.1:r bond=bond0:eth0,eth1 vlan=bond0.42:bond0 bootdev=bond0.42 rd.peerdns=0 team=t0:eth2")
    )
    net = plan.network
    assert ([b.name for b in net.bonds], [v.name for v in net.vlans], net.bootdev, net.peerdns, net.team) == (
        ["bond0"],
        ["bond0.42"],
        "bond0.42",
        False,
        ("t0:eth2",),
    )
    with pytest.raises(OptionError, match=r"^vlan/bond/bridge=br0: is created twice"):
        parse_plan(KernelCmdline("root=overlay:nbd=10.0.0.1:r bridge=br0:eth0 bond=br0:eth1"))


def test_rd_neednet_without_ip_implies_dhcp() -> None:
    for cmdline in ("root=overlay:LABEL=r rd.neednet=1", "root=overlay:aoe=e0.1 rd.neednet=1"):
        net = parse_plan(KernelCmdline(cmdline)).network
        assert (net.ip, net.implied_dhcp, net.needs_ip) == (("dhcp",), True, True)
    assert parse_plan(KernelCmdline("root=overlay:LABEL=r")).network.ip == ()
