"""`kiwi-overlay net up` against dnsmasq, in network namespaces and veth pairs that each test creates and removes.

The client namespace has veths ko-a, ko-b, ...; each one's peer `ko-p` sits in a namespace of its
own (10.N.0.1/24, fd00:N::1/64), optionally with dnsmasq serving DHCP (and DNS, router advertisements) there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.boot.cache import CACHE, cached

pytestmark = pytest.mark.root

CHECKOUT = Path(__file__).resolve().parents[1]
# pyroute2 as Debian 12 and 13 ship it; the project's venv has PyPI's current release (constraints.txt).
PYROUTE2_RELEASES = ("0.7.2", "0.7.7")
RELEASES = pytest.mark.parametrize("lab", ["pypi", *PYROUTE2_RELEASES], indirect=True)


def python_with_pyroute2(release: str) -> Path:
    """A venv of this Python with pyroute2 RELEASE only (kiwi_overlay comes from PYTHONPATH); cached, built when missing."""
    key = hashlib.sha256(f"{release} {sys.version}".encode()).hexdigest()[:12]

    def install(scratch: Path) -> Path:
        subprocess.run([sys.executable, "-m", "venv", str(scratch / "venv")], check=True)
        pip = [str(scratch / "venv/bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"pyroute2=={release}"]
        subprocess.run(pip, check=True, capture_output=True)
        return scratch / "venv"  # only its bin/python is run: a venv's interpreter link survives the move

    return cached(CACHE / "venvs" / f"pyroute2-{release}-{key}", install) / "bin/python"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


class Lab:
    def __init__(self, tmp_path: Path, *, python: Path = Path(sys.executable)) -> None:
        self.tmp = tmp_path
        self.python = python
        self.ns = f"ko-net-{uuid.uuid4().hex[:6]}"
        self.namespaces = [self.ns]
        self.servers: list[subprocess.Popen[bytes]] = []
        self.lease_dir = tmp_path / "run"
        self.resolv_conf = tmp_path / "resolv.conf"
        self.etc: Path | None = None
        ip("netns", "add", self.ns)

    def link(
        self,
        name: str,
        subnet: int,
        *,
        dhcp: bool = True,
        carrier: bool = True,
        mac: str | None = None,
        ra: bool = False,
        dns_name: str | None = None,
        options: tuple[str, ...] = (),
    ) -> Path:
        """Veth NAME to a peer namespace at 10.SUBNET.0.1/24 and fd00:SUBNET::1/64, with dnsmasq serving
        DHCP (and router advertisements for fd00:SUBNET::/64 with RA); returns dnsmasq's log."""
        peer = f"{self.ns}-{name}"
        ip("netns", "add", peer)
        self.namespaces.append(peer)
        ip("-n", self.ns, "link", "add", name, *(["address", mac] if mac else []), "type", "veth", "peer", "name", "ko-p", "netns", peer)
        ip("-n", peer, "addr", "add", f"10.{subnet}.0.1/24", "dev", "ko-p")
        ip("-n", peer, "addr", "add", f"fd00:{subnet}::1/64", "dev", "ko-p", "nodad")
        if carrier:
            ip("-n", peer, "link", "set", "ko-p", "up")
        log = self.tmp / f"dnsmasq-{name}.log"
        if dhcp:
            self.servers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", peer, "dnsmasq", "--no-daemon", "--no-ping", "--conf-file=/dev/null",
                     *([f"--host-record={dns_name},10.{subnet}.0.1"] if dns_name else ["--port=0"]),
                     "--log-facility=-", "--log-dhcp", "--interface=ko-p", "--bind-interfaces",
                     f"--dhcp-range=10.{subnet}.0.50,10.{subnet}.0.99,255.255.255.0,1h",
                     f"--dhcp-option=option:router,10.{subnet}.0.1",
                     f"--dhcp-option=option:dns-server,10.{subnet}.0.{1 if dns_name else 53}",
                     f"--dhcp-leasefile={self.tmp / f'leases-{name}'}", f"--pid-file={self.tmp / f'dnsmasq-{name}.pid'}",
                     *(["--enable-ra", f"--dhcp-range=fd00:{subnet}::,ra-only,64"] if ra else []),
                     *(f"--dhcp-option={option}" for option in options)],
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        return log

    def own_resolv_conf(self) -> None:
        """`ip netns exec` bind-mounts /etc/netns/NS/resolv.conf on /etc/resolv.conf: the namespace's own, for name lookups."""
        self.etc = Path("/etc/netns") / self.ns
        self.etc.mkdir(parents=True)
        self.resolv_conf = self.etc / "resolv.conf"
        self.resolv_conf.write_text("")

    def net_up(self, cmdline: str, *options: str, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        argv = [str(self.python), *python, "-m", "kiwi_overlay", "net", "up", "--cmdline", cmdline, *options]
        argv += ["--lease-dir", str(self.lease_dir), "--resolv-conf", str(self.resolv_conf)]
        env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}  # this checkout's kiwi_overlay for a pyroute2 release's venv
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True, timeout=120, env=env)

    def addresses(self, name: str) -> list[str]:
        info = json.loads(ip("-n", self.ns, "-j", "-4", "addr", "show", "dev", name))
        return [f"{a['local']}/{a['prefixlen']}" for link in info for a in link["addr_info"]]

    def routes(self) -> list[dict[str, Any]]:
        routes: list[dict[str, Any]] = json.loads(ip("-n", self.ns, "-j", "-4", "route", "show"))
        return routes

    def close(self) -> None:
        for server in self.servers:
            server.send_signal(signal.SIGTERM)
        for server in self.servers:
            server.wait(timeout=10)
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], check=False)
        if self.etc:
            shutil.rmtree(self.etc)


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """The lab; parametrized (RELEASES), net up runs with that pyroute2 release ("pypi": the project's venv)."""
    release = getattr(request, "param", "pypi")
    lab = Lab(tmp_path, python=Path(sys.executable) if release == "pypi" else python_with_pyroute2(release))
    try:
        yield lab
    finally:
        lab.close()


def lease_address(lab: Lab, name: str) -> str:
    record = json.loads((lab.lease_dir / f"lease-{name}.json").read_text())
    address: str = record["ack"]["yiaddr"]
    return address


@RELEASES
def test_dhcp_on_a_named_interface(lab: Lab) -> None:
    options = ("option:root-path,nbd:10.71.0.1:rootfs", "option:domain-name,ko-net.test", "option:mtu,1450")
    lab.link("ko-a", 71, options=options)
    result = lab.net_up("root=overlay:nbd=10.71.0.1:rootfs ip=ko-a:dhcp", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    [address] = lab.addresses("ko-a")
    assert address.startswith("10.71.0.") and address.endswith("/24")
    assert {"dst": "default", "gateway": "10.71.0.1", "dev": "ko-a"}.items() <= lab.routes()[0].items()
    assert lease_address(lab, "ko-a") == address.split("/")[0]
    assert lab.resolv_conf.read_text() == "search ko-net.test\nnameserver 10.71.0.53\n"
    assert "ko-a: DHCP lease 10.71.0." in result.stderr
    [link] = json.loads(ip("-n", lab.ns, "-j", "link", "show", "ko-a"))
    assert link["mtu"] == 1450
    options = json.loads((lab.lease_dir / "lease-ko-a.json").read_text())["ack"]["options"]
    assert (options["root_path"], options["server_id"], options["router"]) == ("nbd:10.71.0.1:rootfs", "10.71.0.1", ["10.71.0.1"])


def test_the_lease_carries_the_root_path_and_what_was_asked_for(lab: Lab) -> None:
    """dhcp.first_leases() as root=dhcp uses it: option 17 is requested and returned; without it, None."""
    lab.link("ko-a", 92, options=("option:root-path,nbd:10.92.0.1:root",))
    lab.link("ko-b", 93)
    code = (
        "import json, sys, time; from kiwi_overlay.net.dhcp import first_leases\n"
        "for name in sys.argv[1:]:\n"
        "    (got,) = first_leases([((name,), 'client-7')], deadline=time.monotonic() + 30)\n"
        "    print(json.dumps([got.address, got.prefix, got.root_path, got.routers, got.server]))"
    )
    ip("-n", lab.ns, "link", "set", "ko-a", "up")
    ip("-n", lab.ns, "link", "set", "ko-b", "up")
    result = subprocess.run(
        ["ip", "netns", "exec", lab.ns, sys.executable, "-c", code, "ko-a", "ko-b"], capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first[0].startswith("10.92.0.") and first[1:] == [24, "nbd:10.92.0.1:root", ["10.92.0.1"], "10.92.0.1"]
    assert second[0].startswith("10.93.0.") and second[2] is None
    log = (lab.tmp / "dnsmasq-ko-a.log").read_text()
    assert "requested options: 1:netmask, 3:router, 6:dns-server, 12:hostname," in log and "17:root-path" in log
    assert "client provides name: client-7" in log


def test_dhcp_on_the_candidate_that_has_a_server(lab: Lab) -> None:
    lab.link("ko-a", 72, dhcp=False)
    lab.link("ko-b", 73)
    # No ip=: NBD implies ip=dhcp on whichever interface gets a lease.
    result = lab.net_up("root=overlay:nbd=10.73.0.1:rootfs", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert lab.addresses("ko-a") == []
    assert lab.addresses("ko-b")[0].startswith("10.73.0.")
    assert "DHCP on ko-a, ko-b" in result.stderr
    assert not (lab.lease_dir / "lease-ko-a.json").exists()


def test_a_candidate_without_carrier_does_not_hold_up_the_others(lab: Lab) -> None:
    lab.link("ko-a", 86, carrier=False)
    lab.link("ko-b", 87)
    result = lab.net_up("root=overlay:nbd=10.87.0.1:rootfs ip=dhcp", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert "carrier on ko-b (" in result.stderr
    assert "no carrier" not in result.stderr  # links_up returned with the first carrier, not after the timeout
    assert lab.addresses("ko-b")[0].startswith("10.87.0.")


@RELEASES
def test_static_address_gateway_route_and_dns(lab: Lab) -> None:
    lab.link("ko-a", 74, dhcp=False)
    result = lab.net_up(
        "root=overlay:nbd=10.99.0.1:rootfs ip=10.74.0.2::10.74.0.1:255.255.255.0:client:ko-a:none:10.74.0.53 "
        "rd.route=10.98.0.0/16:10.74.0.254:ko-a nameserver=10.74.0.54",
        "--timeout",
        "30",
    )
    assert result.returncode == 0, result.stderr
    assert lab.addresses("ko-a") == ["10.74.0.2/24"]
    routes = {route["dst"]: route for route in lab.routes()}
    assert routes["default"]["gateway"] == "10.74.0.1"
    assert routes["10.98.0.0/16"]["gateway"] == "10.74.0.254"
    assert lab.resolv_conf.read_text() == "nameserver 10.74.0.54\nnameserver 10.74.0.53\n"
    assert not lab.lease_dir.exists()


def test_bootif_picks_the_interface_pxe_booted_from(lab: Lab) -> None:
    other = lab.link("ko-a", 75, mac="02:00:00:00:00:0a")
    lab.link("ko-b", 76, mac="02:00:00:00:00:0b")
    result = lab.net_up("root=overlay:nbd=10.76.0.1:rootfs BOOTIF=01-02-00-00-00-00-0B", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert lab.addresses("ko-b")[0].startswith("10.76.0.")
    assert lab.addresses("ko-a") == []
    assert "BOOTIF 02:00:00:00:00:0b is ko-b" in result.stderr
    # ko-a's server has a DHCP server too, but never heard from us.
    assert "DHCPDISCOVER" not in other.read_text()


def test_no_carrier_is_a_clear_timeout(lab: Lab) -> None:
    lab.link("ko-a", 77, carrier=False)
    result = lab.net_up("root=overlay:nbd=10.77.0.1:rootfs ip=ko-a:dhcp", "--timeout", "1.5")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "kiwi-overlay: ip=ko-a:dhcp: no carrier on ko-a after 1.5 s (cable, switch port, or the wrong interface?)"
    )
    assert lab.addresses("ko-a") == []


def test_no_dhcp_answer_is_a_clear_timeout(lab: Lab) -> None:
    lab.link("ko-a", 78, dhcp=False)
    result = lab.net_up("root=overlay:nbd=10.78.0.1:rootfs ip=ko-a:dhcp", "--timeout", "2")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("kiwi-overlay: ip=ko-a:dhcp: no DHCP answer on ko-a within ")
    assert lab.addresses("ko-a") == []


def test_already_configured_changes_nothing(lab: Lab) -> None:
    server = lab.link("ko-a", 79)
    ip("-n", lab.ns, "addr", "add", "10.79.0.5/24", "dev", "ko-a")
    ip("-n", lab.ns, "link", "set", "ko-a", "up")
    before = (lab.addresses("ko-a"), lab.routes())
    result = lab.net_up("root=overlay:nbd=10.79.0.1:rootfs ip=ko-a:dhcp", "--timeout", "30", python=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    assert "network already up (route to 10.79.0.1): nothing to change" in result.stderr
    assert "pyroute2" not in result.stderr and "asyncio" not in result.stderr  # the boot does not pay for them here
    assert (lab.addresses("ko-a"), lab.routes()) == before
    assert not lab.lease_dir.exists()
    assert not lab.resolv_conf.exists()
    assert "DHCPDISCOVER" not in server.read_text()


def test_dhcp6_is_refused_clearly_when_the_network_is_not_up(lab: Lab) -> None:
    lab.link("ko-a", 80, dhcp=False)
    result = lab.net_up("root=overlay:nbd=[fd00:99::1]:rootfs ip=ko-a:dhcp6", "--timeout", "5")
    assert result.returncode == 2
    assert "ip=ko-a:dhcp6: dhcp6 is not supported by kiwi-overlay's own network bring-up" in result.stderr
    assert "UP" not in ip("-n", lab.ns, "-o", "link", "show", "ko-a").split(">")[0]  # refused before touching anything


@RELEASES
def test_auto6_waits_for_the_address_from_router_advertisements(lab: Lab) -> None:
    lab.link("ko-a", 88, ra=True)
    result = lab.net_up("root=overlay:nbd=[fd00:99::1]:rootfs ip=ko-a:auto6", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    info = json.loads(ip("-n", lab.ns, "-j", "-6", "addr", "show", "dev", "ko-a"))
    [address] = [address for address in info[0]["addr_info"] if address["scope"] == "global"]
    assert address["local"].startswith("fd00:88::") and "tentative" not in address
    assert f"ko-a: address {address['local']}/64 from router advertisements" in result.stderr
    assert json.loads(ip("-n", lab.ns, "-j", "-6", "route", "show", "default"))[0]["protocol"] == "ra"


def test_auto6_without_router_advertisements_times_out(lab: Lab) -> None:
    lab.link("ko-a", 89)
    result = lab.net_up("root=overlay:nbd=[fd00:99::1]:rootfs ip=ko-a:auto6", "--timeout", "2")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == ("kiwi-overlay: ip=ko-a:auto6: no IPv6 address from router advertisements on ko-a within 2 s")


def test_net_up_configures_an_explicit_ip_without_a_network_root(lab: Lab) -> None:
    lab.link("ko-a", 81)
    result = lab.net_up("ip=ko-a:dhcp", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert lab.addresses("ko-a")[0].startswith("10.81.0.")


def test_net_up_with_nothing_to_configure_says_so(lab: Lab) -> None:
    lab.link("ko-a", 92, dhcp=False)
    result = lab.net_up("root=overlay:LABEL=root")
    assert result.returncode == 2
    assert result.stderr == (
        "kiwi-overlay: nothing to configure: no ip=, no rd.neednet=1 and no network root on the command line; e.g. ip=eth0:dhcp\n"
    )
    assert "UP" not in ip("-n", lab.ns, "-o", "link", "show", "ko-a").split(">")[0]


def test_rd_neednet_without_ip_brings_every_link_up_with_dhcp(lab: Lab) -> None:
    lab.link("ko-a", 93, dhcp=False)
    lab.link("ko-b", 94)
    result = lab.net_up("root=overlay:LABEL=root rd.neednet=1", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert "DHCP on ko-a, ko-b" in result.stderr
    assert lab.addresses("ko-b")[0].startswith("10.94.0.")
    for name in ("ko-a", "ko-b"):
        assert "UP" in ip("-n", lab.ns, "-o", "link", "show", name).split(">")[0]


def test_static_ipv6_is_usable_at_once(lab: Lab) -> None:
    lab.link("ko-a", 82, dhcp=False)
    result = lab.net_up("root=overlay:nbd=[fd00:99::1]:rootfs ip=[fd00:82::2]::[fd00:82::1]:64::ko-a:none", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    info = json.loads(ip("-n", lab.ns, "-j", "-6", "addr", "show", "dev", "ko-a"))
    [address] = [address for address in info[0]["addr_info"] if address["scope"] == "global"]
    assert (address["local"], address["prefixlen"], address.get("tentative")) == ("fd00:82::2", 64, None)
    routes = json.loads(ip("-n", lab.ns, "-j", "-6", "route", "show", "default"))
    assert routes[0]["gateway"] == "fd00:82::1"


def test_configured_but_the_server_is_unreachable(lab: Lab) -> None:
    lab.link("ko-a", 83, dhcp=False)
    result = lab.net_up("root=overlay:nbd=10.99.0.1:rootfs ip=10.83.0.2:::24::ko-a:none", "--timeout", "30")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "kiwi-overlay: network configured, but there is no route to the root server 10.99.0.1 (check the gateway or rd.route=)"
    )


def test_rd_neednet_without_a_server_configures_once(lab: Lab) -> None:
    lab.link("ko-a", 84)
    cmdline = "root=overlay:LABEL=root rd.neednet=1 ip=ko-a:dhcp"
    first = lab.net_up(cmdline, "--timeout", "30")
    assert first.returncode == 0, first.stderr
    [address] = lab.addresses("ko-a")
    assert address.startswith("10.84.0.")
    second = lab.net_up(cmdline, "--timeout", "30")
    assert second.returncode == 0, second.stderr
    assert "network already up (interfaces configured): nothing to change" in second.stderr
    assert lab.addresses("ko-a") == [address]


@RELEASES
def test_a_route_that_cannot_be_added_is_named(lab: Lab) -> None:
    lab.link("ko-a", 85, dhcp=False)
    result = lab.net_up(
        "root=overlay:nbd=10.85.0.1:rootfs ip=10.85.0.2:::24::ko-a:none rd.route=10.98.0.0/16:10.200.0.1", "--timeout", "30"
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "kiwi-overlay: network bring-up, route 10.98.0.0/16 via 10.200.0.1: Network is unreachable"
    assert lab.addresses("ko-a") == []  # the address added before is removed again
    assert lab.routes() == []


@RELEASES
def test_ifname_renames_and_ip_sets_mtu_and_mac(lab: Lab) -> None:
    lab.link("ko-a", 90, mac="02:00:00:00:00:0c")
    result = lab.net_up("root=overlay:nbd=10.90.0.1:rootfs ifname=ko-boot:02:00:00:00:00:0C ip=ko-boot:dhcp:1400:02:00:00:00:00:0d")
    assert result.returncode == 0, result.stderr
    [link] = json.loads(ip("-n", lab.ns, "-j", "link", "show", "ko-boot"))
    assert (link["mtu"], link["address"]) == (1400, "02:00:00:00:00:0d")
    assert lab.addresses("ko-boot")[0].startswith("10.90.0.")
    assert "ko-a renamed to ko-boot (ifname=)" in result.stderr


def test_a_root_server_name_resolves_through_the_dhcp_name_server(lab: Lab) -> None:
    lab.link("ko-a", 91, dns_name="nbd.ko-net.test")
    lab.own_resolv_conf()
    result = lab.net_up("root=overlay:nbd=nbd.ko-net.test:rootfs ip=ko-a:dhcp", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert lab.resolv_conf.read_text() == "nameserver 10.91.0.1\n"
    assert "network up in " in result.stderr


@RELEASES
def test_bridge_gets_the_lease_through_its_port(lab: Lab) -> None:
    lab.link("ko-a", 95)
    result = lab.net_up("root=overlay:nbd=10.95.0.1:rootfs bridge=ko-br:ko-a ip=dhcp", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert "ko-br: bridge of ko-a" in result.stderr
    assert "DHCP on ko-br" in result.stderr  # the port is no candidate of its own
    assert lab.addresses("ko-br")[0].startswith("10.95.0.")
    assert lab.addresses("ko-a") == []
    [port] = json.loads(ip("-n", lab.ns, "-j", "link", "show", "ko-a"))
    assert port["master"] == "ko-br"
    [bridge] = json.loads(ip("-n", lab.ns, "-j", "-d", "link", "show", "ko-br"))
    assert bridge["linkinfo"]["info_data"]["forward_delay"] == 0


@RELEASES
def test_a_bridge_port_that_does_not_exist_leaves_no_bridge_behind(lab: Lab) -> None:
    lab.link("ko-a", 96, dhcp=False)
    result = lab.net_up("root=overlay:nbd=10.96.0.1:rootfs bridge=ko-br:ko-a,ko-x ip=ko-br:dhcp", "--timeout", "5")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "kiwi-overlay: bridge=ko-br:ko-a,ko-x: network interface ko-x not found"
    assert "ko-br" not in ip("-n", lab.ns, "-o", "link", "show")
    assert "master" not in ip("-n", lab.ns, "-o", "link", "show", "ko-a")


def _kernel_has(lab: Lab, *link: str) -> bool:
    """Whether this kernel creates such a link (tried on a scratch link in the test's namespace)."""
    made = subprocess.run(["ip", "-n", lab.ns, "link", "add", "ko-probe", *link], capture_output=True, text=True)
    subprocess.run(["ip", "-n", lab.ns, "link", "del", "ko-probe"], capture_output=True)
    return made.returncode == 0


@RELEASES
def test_vlan_is_created_or_refused_in_one_line(lab: Lab) -> None:
    """Where the kernel has 802.1Q (QEMU guests: tests/test_boot_net.py) the VLAN is made; else one line, nothing left."""
    lab.link("ko-a", 97, dhcp=False)
    cmdline = "root=overlay:nbd=10.97.0.1:rootfs vlan=ko-a.42:ko-a ip=10.97.42.2:::24::ko-a.42:none"
    if _kernel_has(lab, "link", "lo", "type", "vlan", "id", "7"):
        result = lab.net_up(cmdline, "--timeout", "10")
        [vlan] = json.loads(ip("-n", lab.ns, "-j", "-d", "link", "show", "ko-a.42"))
        assert (vlan["link"], vlan["linkinfo"]["info_data"]["id"]) == ("ko-a", 42)
        assert lab.addresses("ko-a.42") == ["10.97.42.2/24"]
    else:
        result = lab.net_up(cmdline, "--timeout", "10")
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1] == (
            "kiwi-overlay: vlan=ko-a.42:ko-a: this kernel cannot create vlan links (is the 8021q module in the initrd?)"
        )
        assert "ko-a.42" not in ip("-n", lab.ns, "-o", "link", "show")


def test_bond_is_created_or_refused_in_one_line(lab: Lab) -> None:
    """Where the kernel has bonding (QEMU guests: tests/test_boot_net.py) the bond is made; else one line, nothing left."""
    lab.link("ko-a", 98)
    lab.link("ko-b", 99, dhcp=False)
    cmdline = "root=overlay:nbd=10.98.0.1:rootfs bond=ko-bond:ko-a,ko-b:mode=active-backup,miimon=100,primary=ko-a ip=ko-bond:dhcp"
    result = lab.net_up(cmdline, "--timeout", "30")
    if _kernel_has(lab, "type", "bond"):
        assert result.returncode == 0, result.stderr
        assert lab.addresses("ko-bond")[0].startswith("10.98.0.")
        [bond] = json.loads(ip("-n", lab.ns, "-j", "-d", "link", "show", "ko-bond"))
        assert bond["linkinfo"]["info_data"]["mode"] == "active-backup"
    else:
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1] == (
            "kiwi-overlay: bond=ko-bond:ko-a,ko-b:mode=active-backup,miimon=100,primary=ko-a: "
            "this kernel cannot create bond links (is the bonding module in the initrd?)"
        )
        assert "ko-bond" not in ip("-n", lab.ns, "-o", "link", "show")


def test_team_is_refused_in_one_line_before_touching_a_link(lab: Lab) -> None:
    lab.link("ko-a", 100, dhcp=False)
    result = lab.net_up("root=overlay:nbd=10.100.0.1:rootfs team=team0:ko-a ip=team0:dhcp", "--timeout", "5")
    assert result.returncode == 2
    assert result.stderr == (
        "kiwi-overlay: team=team0:ko-a: teaming needs teamd, which kiwi-overlay does not run; "
        "use bond= (e.g. bond=bond0:eth0,eth1:mode=active-backup)\n"
    )
    assert "UP" not in ip("-n", lab.ns, "-o", "link", "show", "ko-a").split(">")[0]


def test_bootdev_names_the_interface_for_ip_dhcp(lab: Lab) -> None:
    other = lab.link("ko-a", 101)
    lab.link("ko-b", 102)
    result = lab.net_up("root=overlay:nbd=10.102.0.1:rootfs bootdev=ko-b ip=dhcp", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert lab.addresses("ko-b")[0].startswith("10.102.0.")
    assert lab.addresses("ko-a") == []
    assert "DHCPDISCOVER" not in other.read_text()


def test_rd_peerdns_0_keeps_the_dhcp_name_servers_out(lab: Lab) -> None:
    lab.link("ko-a", 103)
    result = lab.net_up("root=overlay:nbd=10.103.0.1:rootfs ip=ko-a:dhcp rd.peerdns=0 nameserver=10.103.0.54", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert lab.addresses("ko-a")[0].startswith("10.103.0.")
    assert lab.resolv_conf.read_text() == "nameserver 10.103.0.54\n"  # not dnsmasq's 10.103.0.53
