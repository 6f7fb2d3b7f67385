"""AoE discovery on the wire: a Query Config broadcast over AF_PACKET raw sockets and an IDENTIFY per answer.

discover() lists what answers on some interfaces; locate() brings the boot's links up and probes
until the root's target answers.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kiwi_overlay import log
from kiwi_overlay.aoe.messages import not_found_message, several_targets_error
from kiwi_overlay.aoe.protocol import (
    ETHERTYPE_AOE,
    AoeTarget,
    format_mac,
    identify_frame,
    parse_config_response,
    parse_identify_response,
    parse_response,
    parse_target,
    query_config_frame,
)
from kiwi_overlay.errors import KiwiOverlayError

if TYPE_CHECKING:
    from kiwi_overlay.config.plan import AoeRoot

_PACKET_OUTGOING = 4  # sll_pkttype of frames this host sent
# After the wanted target answered: listen this much longer, so every interface that carries it
# (and its IDENTIFY answer) is heard.
_WANT_GRACE = 0.05
# A spoofer on the segment can answer for any number of targets: a discovery keeps (and sends an
# IDENTIFY to) this many, plus the one the boot asked for.
MAX_ANSWERS = 64
# Frames read from one socket before the loop looks at the clock and the other sockets again.
_DRAIN_BATCH = 256


def _open(interface: str) -> socket.socket:
    # Protocol 0 at creation receives nothing; the bind subscribes to AoE on this interface only.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((interface, ETHERTYPE_AOE))
    except OSError as error:
        sock.close()
        if error.errno == errno.ENODEV:
            raise KiwiOverlayError(f"network interface {interface} not found") from None
        raise KiwiOverlayError(f"AoE discovery on {interface}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def _send(sock: socket.socket, interface: str, frame: bytes) -> None:
    try:
        sock.send(frame)
    except OSError as error:
        if error.errno == errno.ENETDOWN:
            raise KiwiOverlayError(f"network interface {interface} is down") from None
        raise KiwiOverlayError(f"AoE discovery on {interface}: {error.strerror}") from None


class _Probe:
    """One discovery: a raw socket per interface, the answers so far, the IDENTIFY requests in flight."""

    def __init__(self, interfaces: Iterable[str]) -> None:
        self.query_tag = int.from_bytes(os.urandom(4)) >> 1
        self.sockets: dict[int, tuple[str, socket.socket, bytes]] = {}
        self.found: dict[tuple[int, int, str, str], AoeTarget] = {}
        self.identify_tags: dict[int, tuple[int, int, str, str]] = {}
        try:
            for interface in dict.fromkeys(interfaces):
                sock = _open(interface)
                self.sockets[sock.fileno()] = (interface, sock, sock.getsockname()[4])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for _, sock, _ in self.sockets.values():
            sock.close()

    def query(self) -> None:
        for interface, sock, mac in self.sockets.values():
            _send(sock, interface, query_config_frame(mac, tag=self.query_tag))

    def receive(self, fileno: int, *, want: tuple[int, int] | None, deadline: float) -> None:
        interface, sock, mac = self.sockets[fileno]
        for frame, address in _drain(sock, deadline=deadline):
            if address[0] != interface or address[2] == _PACKET_OUTGOING:
                continue
            target = parse_config_response(frame, tag=self.query_tag, interface=interface)
            if target is None:
                self._record_size(frame)
                continue
            key = (target.shelf, target.slot, interface, target.mac)
            if key in self.found or (len(self.found) >= MAX_ANSWERS and (target.shelf, target.slot) != want):
                continue
            self.found[key] = target
            tag = (self.query_tag + 1 + len(self.identify_tags)) & 0xFFFFFFFF
            self.identify_tags[tag] = key
            peer = bytes.fromhex(target.mac.replace(":", ""))
            _send(sock, interface, identify_frame(mac, peer, shelf=target.shelf, slot=target.slot, tag=tag))

    def _record_size(self, frame: bytes) -> None:
        response = parse_response(frame)
        key = self.identify_tags.get(response.tag) if response else None
        if response is None or key is None or (response.shelf, response.slot, format_mac(response.mac)) != (key[0], key[1], key[3]):
            return
        sectors = parse_identify_response(frame, tag=response.tag)
        if sectors is not None:
            self.found[key] = replace(self.found[key], sectors=sectors)

    def answered(self, want: tuple[int, int]) -> bool:
        return any(key[:2] == want for key in self.found)


def discover(interfaces: Sequence[str], *, timeout: float, want: tuple[int, int] | None = None) -> list[AoeTarget]:
    """The AoE targets that answer a broadcast Query Config on INTERFACES within TIMEOUT seconds.

    The query is repeated with backoff (a frame may be lost, a target may start late) and every
    answer gets an ATA IDENTIFY for its size. With WANT (shelf, slot), returns as soon as that
    target answered (plus a short grace). One entry per (shelf, slot, interface, MAC), sorted.
    """
    if not interfaces:
        return []
    if os.geteuid() != 0:
        raise KiwiOverlayError("AoE discovery needs root (raw Ethernet sockets)")
    started = time.monotonic()
    deadline = started + timeout
    probe = _Probe(interfaces)
    try:
        next_query, interval = started, 0.25
        while True:
            now = time.monotonic()
            if now >= next_query:
                probe.query()
                next_query, interval = now + interval, min(interval * 2, 2.0)
            if want is not None and probe.answered(want):
                deadline = min(deadline, now + _WANT_GRACE)
            if now >= deadline:
                break
            readable, _, _ = select.select(list(probe.sockets), [], [], min(next_query, deadline) - now)
            for fileno in readable:
                probe.receive(fileno, want=want, deadline=deadline)
    finally:
        probe.close()
    log.debug(f"AoE discovery on {', '.join(interfaces)}: {len(probe.found)} answer(s) in {time.monotonic() - started:.3f} s")
    return sorted(probe.found.values(), key=_order)


def _drain(sock: socket.socket, *, deadline: float) -> Iterable[tuple[bytes, tuple[str, int, int, int, bytes]]]:
    """What SOCK has queued, up to a batch and never past DEADLINE: a sender that never pauses cannot keep us here."""
    for _ in range(_DRAIN_BATCH):
        if time.monotonic() >= deadline:
            return
        try:
            yield sock.recvfrom(2048)
        except BlockingIOError:
            return


@dataclass(frozen=True)
class Located:
    target: str  # "e0.1"
    interfaces: tuple[str, ...]  # the interfaces it answered on
    answers: tuple[AoeTarget, ...]  # everything that answered the last probe


def _link_state(names: Iterable[str], ready: Sequence[str]) -> list[str]:
    """NAMES for a message, each marked when it had no carrier or did not exist."""
    return [name if name in ready else f"{name} ({'no carrier' if Path('/sys/class/net', name).exists() else 'missing'})" for name in names]


def locate(root: AoeRoot, *, deadline: float) -> Located:
    """Bring the AoE links up and probe the wire until ROOT's target answers or DEADLINE (monotonic) passes.

    Probes and carrier waits alternate in growing windows, so a link that gets carrier late, or an
    interface whose driver is still loading, is waited for rather than refused.
    """
    from kiwi_overlay.net.links import links_up

    want = parse_target(root.target) if root.target else None
    named = list(dict.fromkeys(([root.interface] if root.interface else []) + list(root.interfaces)))  # empty: every Ethernet link
    started = time.monotonic()
    window = 0.5
    heard: dict[AoeTarget, None] = {}
    probe: list[str] = []
    tried = named
    while (remaining := deadline - time.monotonic()) > 0:
        present = [name for name in named if Path("/sys/class/net", name).exists()]
        if named and not present:
            time.sleep(min(window, remaining))  # their drivers may still be loading
            ready: tuple[str, ...] = ()
        else:
            # Wait for carrier only while there is nothing to probe; later rounds pick up links that got it since.
            ready = links_up(present or None, timeout=0.0 if probe else min(window, remaining))
        tried = _link_state(named or ready, ready)
        probe = [name for name in ([root.interface] if root.interface else ready) if name in ready]
        if probe:
            # At least a short probe even when carrier came at the deadline: the error should say what answers.
            answers = discover(probe, timeout=max(min(window, deadline - time.monotonic()), 0.1), want=want)
            heard.update(dict.fromkeys(answers[: max(MAX_ANSWERS - len(heard), 0)]))
            matching = [target for target in answers if want is None or (target.shelf, target.slot) == want]
            if len({target.name for target in matching}) > 1:
                raise several_targets_error(root.interface or "", matching)
            if matching:
                return Located(matching[0].name, tuple(dict.fromkeys(t.interface for t in matching)), tuple(sorted(heard, key=_order)))
        window = min(window * 2, 4.0)
    raise KiwiOverlayError(not_found_message(root.target, timeout=deadline - started, tried=tried, answers=sorted(heard, key=_order)))


def _order(target: AoeTarget) -> tuple[int, int, str, str]:
    return (target.shelf, target.slot, target.interface, target.mac)
