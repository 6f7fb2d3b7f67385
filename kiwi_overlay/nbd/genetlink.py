"""Generic netlink with the socket module: messages, attributes, family and multicast group lookup.

The NBD supervisor needs five commands of one family. pyroute2 would do it too, but importing it
loads asyncio: about 0.1 s natively, over a second in a TCG guest, on the boot's critical path.
Layouts from include/uapi/linux/netlink.h and genetlink.h.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_GENL = struct.Struct("=BBH")  # genlmsghdr: command, version, reserved
_ATTR = struct.Struct("=HH")  # nlattr: length, type

# An attribute value: bytes as they are, an int as u32 or u64 (by the caller's choice), a str
# NUL-terminated, a list of attributes nested.
Attribute = tuple[int, "bytes | str | U32 | U64 | list[Attribute]"]


@dataclass(frozen=True)
class U32:
    value: int


@dataclass(frozen=True)
class U64:
    value: int


class NetlinkError(Exception):
    """The kernel answered with an error (an errno value)."""

    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.code = code


def attribute(kind: int, value: bytes | str | U32 | U64 | list[Attribute]) -> bytes:
    if isinstance(value, list):
        payload = b"".join(attribute(*item) for item in value)
        kind |= NLA_F_NESTED
    elif isinstance(value, str):
        payload = value.encode() + b"\0"
    elif isinstance(value, U32):
        payload = struct.pack("=I", value.value)
    elif isinstance(value, U64):
        payload = struct.pack("=Q", value.value)
    else:
        payload = value
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in DATA, in order."""
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        yield kind & NLA_TYPE_MASK, data[offset + _ATTR.size : offset + length]
        offset += (length + 3) & ~3


def unsigned(payload: bytes) -> int:
    """A u8, u16, u32 or u64 attribute's value."""
    return int.from_bytes(payload, sys.byteorder)


@dataclass(frozen=True)
class Message:
    """One generic netlink message: its command and its (type, payload) attributes."""

    command: int
    attributes: tuple[tuple[int, bytes], ...]

    def get(self, kind: int) -> bytes | None:
        return next((payload for found, payload in self.attributes if found == kind), None)


def payload(command: int, attrs: Sequence[Attribute], *, version: int = 1) -> bytes:
    """genlmsghdr and attributes: a message without its netlink header."""
    return _GENL.pack(command, version, 0) + b"".join(attribute(kind, value) for kind, value in attrs)


class GenericNetlink:
    """A NETLINK_GENERIC socket talking to one family, looked up by name."""

    def __init__(self, family: str) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sequence = 0
        try:
            self.sock.bind((0, 0))
            self.family_id, self.groups = self._lookup(family)
        except BaseException:
            self.sock.close()
            raise

    def _lookup(self, family: str) -> tuple[int, dict[str, int]]:
        (reply,) = self.request(GENL_ID_CTRL, payload(CTRL_CMD_GETFAMILY, [(CTRL_ATTR_FAMILY_NAME, family)]))
        family_id = reply.get(CTRL_ATTR_FAMILY_ID)
        if family_id is None:
            raise NetlinkError(errno.ENOENT)
        groups = {}
        for _, group in attributes(reply.get(CTRL_ATTR_MCAST_GROUPS) or b""):
            fields = dict(attributes(group))
            if CTRL_ATTR_MCAST_GRP_NAME in fields and CTRL_ATTR_MCAST_GRP_ID in fields:
                groups[fields[CTRL_ATTR_MCAST_GRP_NAME].rstrip(b"\0").decode()] = unsigned(fields[CTRL_ATTR_MCAST_GRP_ID])
        return unsigned(family_id), groups

    def request(self, family_id: int, body: bytes) -> list[Message]:
        """Send BODY (from payload()) with an acknowledgement asked for; the replies before it. NetlinkError on an error."""
        self.sequence += 1
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), family_id, NLM_F_REQUEST | NLM_F_ACK, self.sequence, 0) + body)
        replies: list[Message] = []
        while True:
            for kind, sequence, data in self._receive():
                if sequence != self.sequence:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data)[0]
                    if code:
                        raise NetlinkError(code)
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append(parse(data))

    def send(self, body: bytes) -> list[Message]:
        """A request to the family this socket was opened for."""
        return self.request(self.family_id, body)

    def subscribe(self, group: str) -> None:
        if group not in self.groups:
            raise NetlinkError(errno.ENOENT)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, self.groups[group])

    def events(self) -> list[Message]:
        """The next batch of messages of this family (blocks)."""
        return [parse(data) for kind, _, data in self._receive() if kind == self.family_id]

    def _receive(self) -> Iterator[tuple[int, int, bytes]]:
        data = self.sock.recv(65536)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _, sequence, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                break
            yield kind, sequence, data[offset + _HEADER.size : offset + length]
            offset += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()


def parse(data: bytes) -> Message:
    """A message body (genlmsghdr and attributes) as a Message."""
    command, _, _ = _GENL.unpack_from(data)
    return Message(command=command, attributes=tuple(attributes(data[_GENL.size :])))
