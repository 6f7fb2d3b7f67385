"""DHCPv4 for a boot: DISCOVER, OFFER, REQUEST, ACK on a packet socket, with the standard library only.

pyroute2's own DHCP layers differ between the releases kiwi-overlay supports: 0.7 (Debian 12
and 13) has a blocking socket and a message codec without the host name, domain name, root path
and MTU options; 0.9 has an asyncio client, socket and codec of another shape. The few hundred
bytes of RFC 2131 are simpler to write than to bridge, and one code path serves every release
(and imports no pyroute2). Every candidate interface is asked at once from one select() loop,
without asyncio, which nothing else on the boot path imports (it loads ssl with it). A boot needs
no renewal and no release: the booted system's DHCP client takes the lease over (the lease file,
see bringup).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiwi_overlay import log

# DHCP retransmissions for a boot: quick at first (RFC 2131's 4 s start is for busy networks).
DHCP_RETRY = (0.5, 1.0, 1.0, 2.0)
SERVER_PORT, CLIENT_PORT = 67, 68
ETH_P_IP = 0x0800
BROADCAST_MAC = b"\xff" * 6
MAGIC_COOKIE = b"c\x82Sc"
BOOTREQUEST, BOOTREPLY = 1, 2
FLAG_BROADCAST = 0x8000  # the client has no address yet: servers answer by broadcast
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
MIN_BOOTP_SIZE = 300  # some servers ignore shorter requests (RFC 951's size)
# The options a reply carries that kiwi-overlay reads: code -> (name, kind). Names as pyroute2's
# lease files spell them, so the booted system's tools read kiwi-overlay's lease file alike.
OPTIONS: dict[int, tuple[str, str]] = {
    1: ("subnet_mask", "ip"),
    3: ("router", "ips"),
    6: ("name_server", "ips"),
    12: ("host_name", "text"),
    15: ("domain_name", "text"),
    17: ("root_path", "text"),
    26: ("interface_mtu", "u16"),
    28: ("broadcast_address", "ip"),
    51: ("lease_time", "u32"),
    53: ("message_type", "u8"),
    54: ("server_id", "ip"),
    58: ("renewal_time", "u32"),
    59: ("rebinding_time", "u32"),
}
# Requested (option 55): mask, router, DNS, host and domain name, root path (root=dhcp), MTU, times.
PARAMETER_LIST = (1, 3, 6, 12, 15, 17, 26, 28, 51, 58, 59)


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
    record: dict[str, Any]  # the lease file's content: the ACK as JSON, in pyroute2's lease file layout
    root_path: str | None = None  # option 17: where the root is (root=dhcp)


@dataclass(frozen=True)
class Reply:
    """A decoded server reply."""

    xid: int
    yiaddr: str
    siaddr: str
    chaddr: bytes
    options: dict[str, Any] = field(default_factory=dict)


def _option(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def encode(*, kind: int, xid: int, mac: bytes, hostname: str | None, requested: str | None = None, server: str | None = None) -> bytes:
    """A BOOTREQUEST of message type KIND from MAC, padded to the BOOTP minimum."""
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", BOOTREQUEST, 1, 6, 0, xid, 0, FLAG_BROADCAST, *(b"\0" * 4,) * 4, mac, b"", b"")
    options = _option(53, bytes((kind,))) + _option(61, b"\x01" + mac) + _option(55, bytes(PARAMETER_LIST))
    options += _option(57, struct.pack("!H", 1500))
    if hostname:
        options += _option(12, hostname.encode()[:255])
    if requested:
        options += _option(50, socket.inet_aton(requested))
    if server:
        options += _option(54, socket.inet_aton(server))
    message = header + MAGIC_COOKIE + options + b"\xff"
    return message.ljust(MIN_BOOTP_SIZE, b"\0")


def _value(kind: str, data: bytes) -> Any:
    if kind == "ip":
        return socket.inet_ntoa(data[:4]) if len(data) >= 4 else None
    if kind == "ips":
        return [socket.inet_ntoa(data[index : index + 4]) for index in range(0, len(data) - 3, 4)]
    if kind == "text":
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")
    size = {"u8": 1, "u16": 2, "u32": 4}[kind]
    return int.from_bytes(data[:size], "big") if len(data) >= size else None


def decode(message: bytes) -> Reply | None:
    """A BOOTREPLY's fields and the options of OPTIONS; None for anything else."""
    if len(message) < 240 or message[0] != BOOTREPLY or message[236:240] != MAGIC_COOKIE:
        return None
    xid = int.from_bytes(message[4:8], "big")
    raw: dict[int, bytes] = {}
    offset = 240
    while offset < len(message) and message[offset] != 255:
        code = message[offset]
        if code == 0:  # pad
            offset += 1
            continue
        length = message[offset + 1] if offset + 1 < len(message) else 0
        raw[code] = raw.get(code, b"") + message[offset + 2 : offset + 2 + length]  # RFC 3396: repeated codes concatenate
        offset += 2 + length
    options = {name: _value(kind, raw[code]) for code, (name, kind) in OPTIONS.items() if code in raw}
    return Reply(
        xid=xid,
        yiaddr=socket.inet_ntoa(message[16:20]),
        siaddr=socket.inet_ntoa(message[20:24]),
        chaddr=message[28:34],
        options={name: value for name, value in options.items() if value is not None},
    )


def udp_payload(packet: bytes) -> bytes | None:
    """The payload of an IPv4 UDP packet to the DHCP client port (not fragmented); None for anything else."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    if int.from_bytes(packet[6:8], "big") & 0x3FFF:  # more fragments, or an offset
        return None
    header = (packet[0] & 0x0F) * 4
    sport, dport, length = struct.unpack("!HHH", packet[header : header + 6])
    if dport != CLIENT_PORT or sport != SERVER_PORT:
        return None
    return packet[header + 8 : header + length]


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_packet(payload: bytes) -> bytes:
    """PAYLOAD from 0.0.0.0:68 to 255.255.255.255:67 as an IPv4 packet (the UDP checksum is optional in IPv4)."""
    udp = struct.pack("!HHHH", CLIENT_PORT, SERVER_PORT, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0, b"\0" * 4, b"\xff" * 4)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def new_xid() -> int:
    return int.from_bytes(os.urandom(4), "big")


def _retransmission() -> Iterator[float]:
    yield from DHCP_RETRY
    while True:
        yield DHCP_RETRY[-1]


class _Exchange:
    """One interface's transaction on a packet socket of its own (IPv4; the kernel handles the link layer):
    DISCOVER until an OFFER, REQUEST until an ACK (a NAK starts over), each retransmitted on its own clock."""

    def __init__(self, name: str, hostname: str | None) -> None:
        self.name = name
        self.hostname = hostname
        self.mac = bytes.fromhex(Path(f"/sys/class/net/{name}/address").read_text().strip().replace(":", ""))
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, socket.htons(ETH_P_IP))
        try:
            self.sock.bind((name, ETH_P_IP))
        except BaseException:
            self.sock.close()
            raise
        self.due = 0.0

    def fileno(self) -> int:
        return self.sock.fileno()

    def discover(self) -> None:
        self.xid = new_xid()
        self._ask(encode(kind=DISCOVER, xid=self.xid, mac=self.mac, hostname=self.hostname), (OFFER,))

    def _ask(self, request: bytes, wanted: tuple[int, ...]) -> None:
        self.packet = udp_packet(request)
        self.wanted = wanted
        self.waits = _retransmission()
        self.send()

    def send(self) -> None:
        """(Re)transmit the current request; the next retransmission is due at self.due."""
        self.sock.sendto(self.packet, (self.name, ETH_P_IP, 0, 0, BROADCAST_MAC))
        self.due = time.monotonic() + next(self.waits)

    def receive(self) -> DhcpLease | None:
        """Take the packet that arrived: the lease once the server acknowledged, else None."""
        try:
            data, address = self.sock.recvfrom(4096)
        except BlockingIOError:
            return None
        payload = udp_payload(data)
        reply = decode(payload) if payload else None
        if not (reply and reply.xid == self.xid and reply.chaddr == self.mac and reply.options.get("message_type") in self.wanted):
            return None
        server = reply.options.get("server_id")
        if reply.options["message_type"] == OFFER:
            log.debug(f"{self.name}: DHCP offer of {reply.yiaddr} from {server}")
            request = encode(kind=REQUEST, xid=self.xid, mac=self.mac, hostname=self.hostname, requested=reply.yiaddr, server=server)
            self._ask(request, (ACK, NAK))
            return None
        if reply.options["message_type"] == NAK:
            log.debug(f"{self.name}: DHCP NAK from {server}, starting over")
            self.discover()
            return None
        return _lease(self.name, reply, address[4])

    def close(self) -> None:
        self.sock.close()


def first_leases(jobs: Sequence[tuple[Sequence[str], str | None]], *, deadline: float) -> list[DhcpLease | list[str]]:
    """For each job (interfaces, host name to send): the first DHCPv4 lease on one of its interfaces,
    all asked at once until the time.monotonic() DEADLINE; a job without one gets the problems seen."""
    leases: list[DhcpLease | None] = [None] * len(jobs)
    problems: list[list[str]] = [[] for _ in jobs]
    exchanges: dict[_Exchange, int] = {}  # the ones still asking, and their job

    def drop(exchange: _Exchange, problem: OSError | None = None) -> None:
        number = exchanges.pop(exchange)
        exchange.close()
        if problem:
            problems[number].append(f"{exchange.name}: {problem.strerror or problem}")

    try:
        for number, (names, hostname) in enumerate(jobs):
            for name in names:
                try:
                    exchange = _Exchange(name, hostname)
                except OSError as error:
                    problems[number].append(f"{name}: {error.strerror or error}")
                    continue
                exchanges[exchange] = number
                try:
                    exchange.discover()
                except OSError as error:
                    drop(exchange, error)
        while exchanges and (now := time.monotonic()) < deadline:
            wake = min(min(exchange.due for exchange in exchanges), deadline)
            readable, _, _ = select.select(list(exchanges), [], [], max(0.0, wake - now))
            for exchange in readable:
                if exchange not in exchanges:  # its job got a lease on another interface just now
                    continue
                try:
                    lease = exchange.receive()
                except OSError as error:
                    drop(exchange, error)
                    continue
                if lease:
                    number = exchanges[exchange]
                    leases[number] = lease
                    for other in [other for other, job in exchanges.items() if job == number]:
                        drop(other)
            now = time.monotonic()
            for exchange in [exchange for exchange in exchanges if exchange.due <= now]:
                try:
                    exchange.send()
                except OSError as error:
                    drop(exchange, error)
    finally:
        for exchange in list(exchanges):
            drop(exchange)
    return [lease or problem for lease, problem in zip(leases, problems, strict=True)]


def _lease(name: str, ack: Reply, server_mac: bytes) -> DhcpLease:
    import ipaddress

    options = ack.options
    mask = options.get("subnet_mask")
    record = {
        "ack": {
            "op": BOOTREPLY,
            "xid": ack.xid,
            "yiaddr": ack.yiaddr,
            "siaddr": ack.siaddr,
            "chaddr": ack.chaddr.hex(":"),
            "options": options,
        },
        "interface": name,
        "server_mac": server_mac.hex(":"),
        "obtained": time.time(),
    }
    return DhcpLease(
        interface=name,
        address=ack.yiaddr,
        prefix=ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if mask else 32,
        routers=tuple(options.get("router", ())),
        nameservers=tuple(options.get("name_server", ())),
        domain=options.get("domain_name") or None,
        mtu=options.get("interface_mtu"),
        server=options.get("server_id"),
        record=record,
        root_path=options.get("root_path") or None,
    )
