"""Network links up, and a bounded wait for carrier driven by netlink link events.

Shared by the IP bring-up (bringup.py) and AoE, which needs links but no addresses.
pyroute2's message classes load with the first netlink request (kiwi_overlay.netlink.pyroute):
the boot path pays for them only when a link really has to be touched.
"""

from __future__ import annotations

import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kiwi_overlay import log
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.netlink.route import IFF_UP, RTMGRP_LINK, Route

ARPHRD_ETHER = 1


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mac: str
    up: bool
    carrier: bool
    ethernet: bool


def _link(message: Any) -> Link:
    return Link(
        name=message.get_attr("IFLA_IFNAME"),
        index=message["index"],
        mac=message.get_attr("IFLA_ADDRESS") or "",
        up=bool(message["flags"] & IFF_UP),
        carrier=message.get_attr("IFLA_CARRIER") == 1,
        ethernet=message["ifi_type"] == ARPHRD_ETHER,
    )


def ethernet_links() -> tuple[Link, ...]:
    """Every Ethernet link of this network namespace (no loopback, no tunnels)."""
    with Route() as rtnl:
        return tuple(link for link in map(_link, rtnl.links()) if link.ethernet)


def links_up(names: Sequence[str] | None, *, timeout: float, enough: int | None = None) -> tuple[str, ...]:
    """Set NAMES (None: every Ethernet link) up and wait up to TIMEOUT seconds for carrier.

    Returns the links that have carrier, in the order asked for; waits until all (or ENOUGH)
    have it or the time is up. A name that does not exist is an error; no carrier at all is not (the
    caller knows whether one link is enough).
    """
    started = time.monotonic()
    # Subscribed before anything changes, so no carrier event can slip between.
    with Route(groups=RTMGRP_LINK) as events, Route() as rtnl:
        known = {link.name: link for link in map(_link, rtnl.links())}
        if names is None:
            wanted = [name for name, link in known.items() if link.ethernet]
        else:
            missing = [name for name in names if name not in known]
            if missing:
                present = ", ".join(sorted(known)) or "none"
                raise KiwiOverlayError(f"network interface {', '.join(missing)} not found (interfaces: {present})")
            wanted = list(names)
        for name in wanted:
            if not known[name].up:
                log.debug(f"link {name}: set up")
                rtnl.set_link(known[name].index, up=True)
        while True:
            state = {link.name: link for link in map(_link, rtnl.links())}
            ready = tuple(name for name in wanted if state[name].carrier)
            remaining = started + timeout - time.monotonic()
            if len(ready) >= min(enough or len(wanted), len(wanted)) or remaining <= 0:
                waiting = [name for name in wanted if name not in ready]
                if waiting and remaining <= 0:
                    log.info(f"no carrier on {', '.join(waiting)} after {timeout:g} s")
                log.debug(f"links with carrier: {', '.join(ready) or 'none'} ({time.monotonic() - started:.2f} s)")
                return ready
            # Wake on the next link event (or re-check at least twice a second).
            readable, _, _ = select.select([events.fileno()], [], [], min(remaining, 0.5))
            if readable:
                events.discard()
