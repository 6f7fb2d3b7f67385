"""A netlink socket of the standard library that sends and receives pyroute2's messages.

pyroute2's own sockets (IPRoute, GenericNetlinkSocket) run on asyncio since 0.9 and import it, ssl,
multiprocessing and unittest with them: about a second in a TCG guest, and most of what the
initrd's Python would carry. A boot sends a few dozen requests one at a time, which needs only
send, receive until the acknowledgement, and the error code.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any, Self

from kiwi_overlay.netlink import pyroute

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSG_MIN_TYPE = 0x10
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_ERROR = struct.Struct("=i")  # nlmsgerr's first field: 0 (an acknowledgement) or -errno
# Large enough for any one datagram of a dump (the kernel fills at most 32 KiB).
_RECEIVE = 1 << 16


class NetlinkSocket:
    """One netlink socket: requests answered in order, and the multicast GROUPS it is bound to."""

    def __init__(self, protocol: int, *, groups: int = 0) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        try:
            self.sock.bind((0, groups))
        except BaseException:
            self.sock.close()
            raise
        self.sequence = 0
        # Multicast messages that arrived while a request waited for its answer, for receive().
        self.pending: list[tuple[int, bytes]] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def add_membership(self, group: int) -> None:
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def request(self, msg: Any, *, msg_type: int, flags: int = 0, dump: bool = False, reply: type[Any] | None = None) -> list[Any]:
        """Send MSG with FLAGS (NLM_F_CREATE, ...), or as a DUMP; return the answers (decoded as REPLY,
        default MSG's class) up to the acknowledgement or the end of the dump. An error answer raises
        pyroute2's NetlinkError."""
        self.sequence += 1
        header = msg["header"]
        header["type"] = msg_type
        # A dump ends with NLMSG_DONE; anything else is acknowledged, so the end is always known.
        header["flags"] = NLM_F_REQUEST | flags | (NLM_F_DUMP if dump else NLM_F_ACK)
        header["sequence_number"] = self.sequence
        header["pid"] = 0
        msg.encode()
        self.sock.send(msg.data)
        decode = reply or type(msg)
        answers: list[Any] = []
        while True:
            for kind, sequence, data in split(self.sock.recv(_RECEIVE)):
                if sequence == 0:
                    self.pending.append((kind, data))  # a notification
                elif sequence != self.sequence:
                    continue  # the rest of an earlier request's answer, cut short by its error
                elif kind == NLMSG_ERROR:
                    code = -_ERROR.unpack_from(data, _HEADER.size)[0]
                    if code:
                        raise pyroute.NetlinkError(code, os.strerror(code))
                    return answers
                elif kind == NLMSG_DONE:
                    return answers
                elif kind >= NLMSG_MIN_TYPE:
                    answers.append(decoded(decode, data))

    def receive(self) -> list[tuple[int, bytes]]:
        """The messages (type, bytes) of the next datagram (blocks), or those a request set aside."""
        if not self.pending:
            self.pending = [(kind, data) for kind, _, data in split(self.sock.recv(_RECEIVE)) if kind >= NLMSG_MIN_TYPE]
        messages, self.pending = self.pending, []
        return messages

    def discard(self) -> None:
        """Read the next datagram (blocks) and drop it: for a caller that looks at the state again after any event."""
        try:
            self.sock.recv(_RECEIVE)
        except OSError as error:
            if error.errno != errno.ENOBUFS:  # events were lost: looking again is all the caller does anyway
                raise


def split(datagram: bytes) -> list[tuple[int, int, bytes]]:
    """The messages of one DATAGRAM: (type, sequence number, the message's bytes)."""
    messages = []
    offset = 0
    while offset + _HEADER.size <= len(datagram):
        length, kind, _, sequence, _ = _HEADER.unpack_from(datagram, offset)
        if length < _HEADER.size:
            break
        messages.append((kind, sequence, datagram[offset : offset + length]))
        offset += (length + 3) & ~3
    return messages


def decoded(message_class: type[Any], data: bytes) -> Any:
    msg = message_class(data)
    msg.decode()
    return msg
