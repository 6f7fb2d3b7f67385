"""IP configuration for the root: use the network when it is up, configure it over netlink when not.

Whatever network stack dracut put into the initrd (network-legacy, systemd-networkd,
NetworkManager, none) may or may not have configured the interface by the time the root is
attached. kiwi-overlay checks for a route to the root server first and changes nothing when
there is one; otherwise it does what ip= asks itself: interface names, links up, carrier,
static addresses and routes, DHCPv4 (net/dhcp.py), IPv6 autoconfiguration. The netlink
messages (pyroute2's) are imported only in that second case.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiwi_overlay import log
from kiwi_overlay.config.plan import DhcpRoot, NbdRoot, Network, Plan
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.files import write_whole
from kiwi_overlay.net import dhcp
from kiwi_overlay.net.dhcp import DhcpLease
from kiwi_overlay.net.grammar import IpConfig

if TYPE_CHECKING:
    from kiwi_overlay.netlink.route import Route

LEASE_DIR = Path("/run/kiwi-overlay")
RESOLV_CONF = Path("/etc/resolv.conf")
# A host name is looked up for the "already up" check only briefly: without a network the
# resolver fails at once, with a dead name server it would wait for its own timeouts.
RESOLVE_TIMEOUT = 2.0
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RT_SCOPE_LINK = 253  # link-local and host addresses are no use for a root server; global and site-local (QEMU's fec0::/64) are


def _addresses(host: str, *, timeout: float) -> list[tuple[int, str]]:
    """(family, address) for HOST: an IP literal as is, a name resolved within TIMEOUT (else none)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        found: list[Any] = []
        # getaddrinfo cannot be interrupted: it runs in a daemon thread we stop waiting for.
        lookup = threading.Thread(target=lambda: found.extend(_resolve(host)), daemon=True)
        lookup.start()
        lookup.join(timeout)
        infos = list(found)
    return [(family, str(address[0])) for family, _, _, _, address in infos]


def _resolve(host: str) -> list[Any]:
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        return []


def has_route(host: str, *, timeout: float = RESOLVE_TIMEOUT) -> bool:
    """Whether the kernel has a route to HOST (a name must resolve within TIMEOUT)."""
    return _routable(_addresses(host, timeout=timeout))


def _routable(addresses: list[tuple[int, str]]) -> bool:
    # connect() on a UDP socket is a route lookup (ENETUNREACH without one) and sends nothing.
    for family, address in addresses:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((address, 9))
                return True
            except OSError:
                continue
    return False


def _check_server(server: str) -> None:
    """After the bring-up: the root server must be reachable, or the NBD attach would only time out."""
    addresses = _addresses(server, timeout=RESOLVE_TIMEOUT)
    if not addresses:
        raise KiwiOverlayError(
            f"network configured, but the root server name {server} does not resolve (no name server from DHCP or nameserver=?)"
        )
    if not _routable(addresses):
        raise KiwiOverlayError(f"network configured, but there is no route to the root server {server} (check the gateway or rd.route=)")


def _routed_interfaces(proc: Path = Path("/proc/net")) -> set[str]:
    """Interfaces with a route of their own (IPv6 link-local and multicast routes do not count)."""
    names = set()
    for line in (proc / "route").read_text().splitlines()[1:]:
        names.add(line.split()[0])
    ipv6 = proc / "ipv6_route"
    if ipv6.exists():
        for line in ipv6.read_text().splitlines():
            fields = line.split()
            if not fields[0].startswith(("fe80", "ff")):
                names.add(fields[-1])
    return names - {"lo"}


def already_up(network: Network, server: str | None) -> bool:
    """A route to SERVER exists; without a server: every interface ip= names (or any) has routes."""
    if server is not None:
        return has_route(server)
    routed = _routed_interfaces()
    named = {config.interface for config in network.configs if config.interface and config.method != "off"}
    return named <= routed if named else bool(routed)


def bring_up(
    plan: Plan,
    *,
    timeout: float,
    lease_dir: Path = LEASE_DIR,
    resolv_conf: Path = RESOLV_CONF,
    requested: bool = False,
) -> tuple[DhcpLease, ...]:
    """Make the root server reachable as ip= says, within TIMEOUT seconds; raise KiwiOverlayError if not.

    Does nothing when the network is already up (except for root=dhcp, which needs a lease of its
    own), or when the plan needs no IP configuration and it was not REQUESTED (`kiwi-overlay net up`
    asks for what ip= says even without a network root). Returns the DHCP leases it applied.
    """
    network = plan.network
    if not (network.needs_ip or requested):
        return ()
    if not network.ip:
        raise KiwiOverlayError("nothing to configure: no ip=, no rd.neednet=1 and no network root on the command line; e.g. ip=eth0:dhcp")
    started = time.monotonic()
    server = plan.root.host if isinstance(plan.root, NbdRoot) else None
    if not isinstance(plan.root, DhcpRoot) and already_up(network, server):
        log.info(f"network already up ({f'route to {server}' if server else 'interfaces configured'}): nothing to change")
        return ()
    configs = [config for config in network.configs if config.method != "off"]
    if not configs:
        raise KiwiOverlayError(f"ip={' ip='.join(network.ip)}: no IP configuration asked for, and no route to {server or 'the network'}")
    if network.team:
        raise KiwiOverlayError(
            f"team={network.team[0]}: teaming needs teamd, which kiwi-overlay does not run; use bond= "
            "(e.g. bond=bond0:eth0,eth1:mode=active-backup)"
        )
    for config in configs:
        if config.method == "dhcp6":
            raise KiwiOverlayError(
                f"ip={config.text}: {config.method} is not supported by kiwi-overlay's own network bring-up "
                "(it works when the initrd's network stack configures the interface first); use dhcp, auto6 or a static address"
            )
    leases = _Bringup(network, started, timeout, lease_dir, resolv_conf).run(configs)
    if server is not None:
        _check_server(server)
    log.info(f"network up in {time.monotonic() - started:.3f} s")
    return leases


class _Bringup:
    """One bring-up: the deadline, where leases and resolv.conf go, and what was applied."""

    def __init__(self, network: Network, started: float, timeout: float, lease_dir: Path, resolv_conf: Path) -> None:
        self.network = network
        self.started = started
        self.timeout = timeout  # for messages: the whole budget, as the user gave it
        self.deadline = started + timeout
        self.lease_dir = lease_dir
        self.resolv_conf = resolv_conf
        self.applied: list[tuple[str, dict[str, Any]]] = []  # ("addr" | "route", netlink arguments), to undo

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.3f} s"

    def run(self, configs: Sequence[IpConfig]) -> tuple[DhcpLease, ...]:
        from kiwi_overlay.netlink.route import Route

        with _netlink("preparing the links"), Route() as rtnl:
            _rename_links(rtnl, self.network)
            used: tuple[str, ...] = ()
            if self.network.bonds or self.network.bridges or self.network.vlans:
                from kiwi_overlay.net.virtual import create_links

                used = create_links(rtnl, self.network)
            jobs = [(config, (config.interface,) if config.interface else self._candidates(used)) for config in configs]
            for config, names in jobs:
                for name in names:
                    _prepare_link(rtnl, name, config)
        nameservers = list(self.network.nameservers)
        leases = self._carrier_and_leases(jobs)
        # Addresses and routes only once every lease is in: a failure before leaves none behind,
        # a failure while applying removes what was applied.
        try:
            with _netlink("applying addresses and routes"), Route() as rtnl:
                for config, _ in jobs:
                    if config.method == "static":
                        assert config.interface and config.address and config.prefix
                        gateways = (config.gateway,) if config.gateway else ()
                        self._apply_address(rtnl, config.interface, config.address, config.prefix, gateways)
                        nameservers += config.dns
                for lease in leases:
                    self._apply_address(rtnl, lease.interface, lease.address, lease.prefix, lease.routers)
                    if lease.mtu:
                        rtnl.set_link(_index(rtnl, lease.interface), mtu=lease.mtu)
                    if self.network.peerdns:
                        nameservers += lease.nameservers
                for route in self.network.routes:
                    spec: dict[str, Any] = {
                        "dst": route.destination,
                        "gateway": route.gateway,
                        "oif": _index(rtnl, route.interface) if route.interface else None,
                    }
                    with _netlink(f"route {route.destination} via {route.gateway or route.interface}"):
                        rtnl.route("replace", **spec)
                    self.applied.append(("route", spec))
                    log.info(f"route {route.destination} via {route.gateway or 'link'} ({self.elapsed()})")
        except KiwiOverlayError:
            self._undo()
            raise
        for lease in leases:
            self._write_lease(lease)
        domain = next((lease.domain for lease in leases if lease.domain and self.network.peerdns), None)
        if nameservers:
            _write_resolv_conf(self.resolv_conf, list(dict.fromkeys(nameservers)), domain)
        return tuple(leases)

    def _candidates(self, used: tuple[str, ...]) -> tuple[str, ...]:
        """The interfaces ip= without a name may use: bootdev=, the BOOTIF one, else every Ethernet link
        not named elsewhere and not a port or VLAN parent (USED)."""
        from kiwi_overlay.net.links import ethernet_links

        if self.network.bootdev:
            return (self.network.bootdev,)
        links = ethernet_links()
        while not links and self.remaining() > 0:  # the NIC's driver may still be loading (udev, modprobe)
            time.sleep(0.1)
            links = ethernet_links()
        if self.network.bootif:
            chosen = [link.name for link in links if link.mac.lower() == self.network.bootif]
            if chosen:
                log.info(f"BOOTIF {self.network.bootif} is {chosen[0]}")
                return (chosen[0],)
            log.info(f"no interface has the BOOTIF address {self.network.bootif}: trying every Ethernet interface")
        named = {config.interface for config in self.network.configs} | set(used)
        candidates = tuple(link.name for link in links if link.name not in named)
        if not candidates:
            raise KiwiOverlayError("no Ethernet interface for ip=dhcp (is the network driver in the initrd?)")
        return candidates

    def _carrier_and_leases(self, jobs: Sequence[tuple[IpConfig, tuple[str, ...]]]) -> list[DhcpLease]:
        """Links up and carrier (named interfaces: all; candidates: one), then DHCP and IPv6 autoconfiguration."""
        from kiwi_overlay.net.links import links_up

        for config, names in jobs:
            log.info(f"{', '.join(names)}: link up, waiting for carrier")
            ready = links_up(names, timeout=self.remaining(), enough=None if config.interface else 1)
            if not ready:
                raise KiwiOverlayError(
                    f"ip={config.text}: no carrier on {', '.join(names)} after {self.timeout:g} s"
                    " (cable, switch port, or the wrong interface?)"
                )
            log.info(f"carrier on {', '.join(ready)} ({self.elapsed()})")
        dhcp_jobs = [(config, names) for config, names in jobs if config.method == "dhcp"]
        leases = self._leases(dhcp_jobs) if dhcp_jobs else []
        for config, names in jobs:
            if config.method == "auto6":
                self._wait_for_autoconf(config, names)
        return leases

    def _wait_for_autoconf(self, config: IpConfig, names: tuple[str, ...]) -> None:
        """ip=auto6: the kernel configures addresses and routes from router advertisements; wait for a usable one."""
        from kiwi_overlay.netlink.route import RTMGRP_IPV6_IFADDR, Route

        log.info(f"{', '.join(names)}: waiting for an IPv6 address from router advertisements")
        # Subscribed before looking, so no address event can slip between.
        with Route(groups=RTMGRP_IPV6_IFADDR) as events, Route() as rtnl:
            indexes = {_index(rtnl, name): name for name in names}
            while True:
                for message in rtnl.addresses(socket.AF_INET6):
                    flags = message.get_attr("IFA_FLAGS") or message["flags"]
                    if message["index"] in indexes and message["scope"] < RT_SCOPE_LINK and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                        address = f"{message.get_attr('IFA_ADDRESS')}/{message['prefixlen']}"
                        log.info(f"{indexes[message['index']]}: address {address} from router advertisements ({self.elapsed()})")
                        return
                remaining = self.remaining()
                if remaining <= 0:
                    raise KiwiOverlayError(
                        f"ip={config.text}: no IPv6 address from router advertisements on {', '.join(names)} within {self.timeout:g} s"
                    )
                readable, _, _ = select.select([events.fileno()], [], [], min(remaining, 0.5))
                if readable:
                    events.discard()

    def _leases(self, jobs: Sequence[tuple[IpConfig, tuple[str, ...]]]) -> list[DhcpLease]:
        """Every candidate of every job at once; late carrier is caught by the retransmissions."""
        for _, names in jobs:
            log.info(f"DHCP on {', '.join(names)}")
        results = dhcp.first_leases([(names, config.hostname) for config, names in jobs], deadline=self.deadline)
        leases = []
        for (config, names), result in zip(jobs, results, strict=True):
            if not isinstance(result, DhcpLease):
                detail = f" ({'; '.join(result)})" if result else ""
                raise KiwiOverlayError(f"ip={config.text}: no DHCP answer on {', '.join(names)} within {self.timeout:g} s{detail}")
            log.info(
                f"{result.interface}: DHCP lease {result.address}/{result.prefix} from {result.server or 'unknown server'}"
                + (f", router {result.routers[0]}" if result.routers else "")
                + f" ({self.elapsed()})"
            )
            leases.append(result)
        return leases

    def _apply_address(self, rtnl: Route, name: str, address: str, prefix: int, routers: Sequence[str]) -> None:
        import ipaddress

        from kiwi_overlay.netlink.pyroute import NetlinkError

        index = _index(rtnl, name)
        interface = ipaddress.ip_interface(f"{address}/{prefix}")
        extra: dict[str, Any] = {}
        if interface.version == 4 and prefix < 31:
            extra["broadcast"] = str(interface.network.broadcast_address)
        elif interface.version == 6:
            # A tentative address cannot be a source: the root would wait for duplicate detection.
            extra["flags"] = IFA_F_NODAD
        with _netlink(f"{name}: address {address}/{prefix}"):
            rtnl.address("replace", index=index, address=address, prefixlen=prefix, **extra)
        self.applied.append(("address", {"index": index, "address": address, "prefixlen": prefix}))
        log.info(f"{name}: address {address}/{prefix} ({self.elapsed()})")
        if routers:
            default = "0.0.0.0/0" if interface.version == 4 else "::/0"
            with _netlink(f"{name}: default route via {routers[0]}"):
                try:
                    rtnl.route("add", dst=default, gateway=routers[0], oif=index)
                    self.applied.append(("route", {"dst": default, "gateway": routers[0], "oif": index}))
                    log.info(f"{name}: default route via {routers[0]}")
                except NetlinkError as error:
                    if error.code != errno.EEXIST:
                        raise
                    log.info(f"{name}: a default route exists already, {routers[0]} is not added")

    def _undo(self) -> None:
        from kiwi_overlay.netlink.pyroute import NetlinkError
        from kiwi_overlay.netlink.route import Route

        with Route() as rtnl:
            for kind, spec in reversed(self.applied):
                with suppress(NetlinkError):  # gone already (an address's routes go with it)
                    getattr(rtnl, kind)("delete", **spec)
        if self.applied:
            log.info("the addresses and routes added so far are removed again")

    def _write_lease(self, lease: DhcpLease) -> None:
        """The lease where the booted system (its DHCP client) can take it over."""
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        write_whole(self.lease_dir / f"lease-{lease.interface}.json", json.dumps(lease.record, indent=2, default=str) + "\n")


@contextmanager
def _netlink(step: str) -> Iterator[None]:
    """A netlink failure as one line that names the step."""
    from kiwi_overlay.netlink.pyroute import NetlinkError

    try:
        yield
    except NetlinkError as error:
        raise KiwiOverlayError(f"network bring-up, {step}: {os.strerror(error.code)}") from None
    except OSError as error:
        raise KiwiOverlayError(f"network bring-up, {step}: {error.strerror or error}") from None


def _index(rtnl: Route, name: str) -> int:
    found = rtnl.link_index(name)
    if found is None:
        raise KiwiOverlayError(f"network interface {name} not found")
    return found


def _rename_links(rtnl: Route, network: Network) -> None:
    """ifname=NAME:MAC: give the interface with MAC its name (when udev has not already)."""
    from kiwi_overlay.net.links import ethernet_links

    links = ethernet_links()
    for rule in network.interface_names:
        match = [link for link in links if link.mac.lower() == rule.mac]
        if not match:
            log.info(f"ifname={rule.name}:{rule.mac}: no interface has that MAC address")
            continue
        link = match[0]
        if link.name == rule.name:
            continue
        if any(other.name == rule.name for other in links):
            raise KiwiOverlayError(f"ifname={rule.name}:{rule.mac}: the name {rule.name} belongs to another interface")
        rtnl.set_link(link.index, up=False)
        rtnl.set_link(link.index, name=rule.name)
        log.info(f"{link.name} renamed to {rule.name} (ifname=)")


def _prepare_link(rtnl: Route, name: str, config: IpConfig) -> None:
    """MAC address (of a named interface) and MTU from ip=, set while the link is still down where needed."""
    index = _index(rtnl, name)
    if config.mac and config.interface:
        rtnl.set_link(index, up=False)
        rtnl.set_link(index, address=config.mac)
        log.info(f"{name}: MAC address {config.mac}")
    if config.mtu:
        rtnl.set_link(index, mtu=config.mtu)
        log.info(f"{name}: MTU {config.mtu}")


def _write_resolv_conf(path: Path, nameservers: list[str], domain: str | None) -> None:
    lines = [f"search {domain}"] if domain else []
    lines += [f"nameserver {server}" for server in nameservers]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    log.info(f"name servers {', '.join(nameservers)} in {path}")
