"""DHCPv4 for a boot with pyroute2's client: no release on exit, no files, no signal handlers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kiwi_overlay import log

# DHCP retransmissions for a boot: quick at first (RFC 2131's 4 s start is for busy networks).
DHCP_RETRY = (0.5, 1.0, 1.0, 2.0)


@dataclass(frozen=True)
class DhcpLease:
    """What kiwi-overlay applies from a DHCPv4 lease."""

    interface: str
    address: str
    prefix: int
    routers: tuple[str, ...]
    nameservers: tuple[str, ...]
    domain: str | None
    mtu: int | None
    server: str | None
    record: dict[str, Any]  # pyroute2's lease as JSON, loadable by its JSONFileLease


def forward_pyroute2_logging() -> None:
    """pyroute2's DHCP client logs every step: into kiwi-overlay's debug log, never raw onto the console."""
    import logging

    class ToDebugLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.debug(f"pyroute2: {record.getMessage()}")

    logger = logging.getLogger("pyroute2")
    logger.handlers[:] = [ToDebugLog()]
    logger.propagate = False
    logger.setLevel(logging.WARNING if log.debugging() else logging.CRITICAL)
    # The DHCP client's own steps (DISCOVER, OFFER, REQUEST, ACK), not every netlink message.
    logging.getLogger("pyroute2.dhcp").setLevel(logging.INFO if log.debugging() else logging.CRITICAL)


def _retransmission() -> Iterator[float]:
    yield from DHCP_RETRY
    while True:
        yield DHCP_RETRY[-1]


async def lease(name: str, hostname: str | None) -> DhcpLease:
    """A DHCPv4 lease on NAME, configured for a boot: no release on exit, no files, no signal handlers."""
    from dataclasses import asdict

    from kiwi_overlay.pyroute import skip_package_init

    skip_package_init()
    from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
    from pyroute2.dhcp.fsm import State
    from pyroute2.dhcp.leases import Lease, MissingOptionError

    class BootLease(Lease):  # type: ignore[misc]
        """Kept in memory: kiwi-overlay writes the lease file itself once the address is applied."""

        def dump(self) -> None:
            pass

        @classmethod
        def load(cls, interface: str) -> None:
            return None

    config = ClientConfig(
        interface=name,
        lease_type=BootLease,
        release=False,
        write_pidfile=False,
        handle_signals=False,
        retransmission=_retransmission,
        vendor_id=None,
        host_name=hostname,
    )
    async with AsyncDHCPClient(config) as client:
        await client.bootstrap()
        await client.wait_for_state(State.BOUND)
        lease = client.lease

    def option(name: str) -> Any:
        try:
            return getattr(lease, name)
        except MissingOptionError:
            return None

    return DhcpLease(
        interface=name,
        address=lease.ip,
        prefix=lease.prefixlen if option("subnet_mask") else 32,
        routers=tuple(option("routers") or ()),
        nameservers=tuple(option("name_servers") or ()),
        domain=option("domain_name"),
        mtu=option("mtu"),
        server=option("server_id"),
        record=asdict(lease),
    )
