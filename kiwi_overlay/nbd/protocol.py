"""The NBD handshake (fixed newstyle) over one socket: greeting, STARTTLS, LIST, INFO/GO, EXPORT_NAME.

Pure protocol, stdlib only (ssl is imported by the caller that builds a context). Every read is
bounded by a deadline and every length is checked before anything is allocated: a broken or
hostile server ends in one NbdError line, never a hang or a huge buffer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiwi_overlay.errors import KiwiOverlayError

if TYPE_CHECKING:
    import ssl

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# Handshake flags (server) and client flags.
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1

# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7

# Option reply types.
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_FLAG_ERROR = 1 << 31
REP_ERRORS = {
    REP_FLAG_ERROR + 1: "not supported",
    REP_FLAG_ERROR + 2: "refused by server policy",
    REP_FLAG_ERROR + 3: "invalid request",
    REP_FLAG_ERROR + 4: "not supported on this platform",
    REP_FLAG_ERROR + 5: "server requires TLS (use nbds://)",
    REP_FLAG_ERROR + 6: "export not found",
    REP_FLAG_ERROR + 7: "server is shutting down",
    REP_FLAG_ERROR + 8: "server requires block size negotiation",
    REP_FLAG_ERROR + 9: "request too big",
}
REP_ERR_UNSUP = REP_FLAG_ERROR + 1
REP_ERR_POLICY = REP_FLAG_ERROR + 2

# Information types (NBD_OPT_INFO / NBD_OPT_GO).
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Transmission flags.
TRANSMISSION_FLAGS = {
    1 << 0: "has-flags",
    1 << 1: "read-only",
    1 << 2: "flush",
    1 << 3: "fua",
    1 << 4: "rotational",
    1 << 5: "trim",
    1 << 6: "write-zeroes",
    1 << 7: "df",
    1 << 8: "multi-conn",
    1 << 9: "resize",
    1 << 10: "cache",
    1 << 11: "fast-zero",
    1 << 12: "block-status-payload",
}
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_CAN_MULTI_CONN = 1 << 8
CMD_READ = 0
CMD_DISC = 2
# The cookie of our own requests: one at a time, before the kernel has the connection.
COOKIE = int.from_bytes(b"kiwi-ovl", "big")

# Limits: the spec caps names and strings at 4096 bytes; option replies are small.
MAX_NAME = 4096
MAX_REPLY = 64 * 1024
MAX_LIST_ENTRIES = 65536
MAX_INFO_REPLIES = 64
# read(): a superblock or a hash block, never the image.
MAX_READ = 64 * 1024


class NbdError(KiwiOverlayError):
    """A failed NBD negotiation or attach, as one line naming the server.

    REPLY is the server's option error code; LOST says the connection stalled or closed.
    """

    def __init__(self, message: str, *, reply: int | None = None, lost: bool = False) -> None:
        super().__init__(message)
        self.reply = reply
        self.lost = lost


@dataclass(frozen=True)
class BlockSizes:
    minimum: int
    preferred: int
    maximum: int


@dataclass(frozen=True)
class ExportInfo:
    name: str
    size: int
    flags: int  # transmission flags
    block_sizes: BlockSizes | None
    description: str = ""

    @property
    def read_only(self) -> bool:
        return bool(self.flags & FLAG_READ_ONLY)

    @property
    def multi_conn(self) -> bool:
        return bool(self.flags & FLAG_CAN_MULTI_CONN)

    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(name for bit, name in TRANSMISSION_FLAGS.items() if self.flags & bit)


@dataclass(frozen=True)
class ExportEntry:
    name: str
    description: str


def _text(data: bytes) -> str:
    """Server-supplied text, safe for one line of output."""
    text = data.decode("utf-8", "replace")
    return "".join(char if char.isprintable() else "?" for char in text)[:200]


class Wire:
    """One socket with a deadline: exact reads, bounded lengths, one-line errors naming PEER."""

    def __init__(self, sock: socket.socket, *, peer: str, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline = deadline

    def fail(self, problem: str, *, reply: int | None = None, lost: bool = False) -> NbdError:
        return NbdError(f"NBD server {self.peer}: {problem}", reply=reply, lost=lost)

    def _arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self.fail("no answer in time", lost=True)
        self.sock.settimeout(remaining)

    def send(self, data: bytes) -> None:
        self._arm()
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise self.fail("no answer in time (send stalled)", lost=True) from None
        except OSError as error:
            raise self.fail(f"connection lost while sending ({error.strerror or error})", lost=True) from None

    def recv(self, size: int, what: str) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            self._arm()
            try:
                chunk = self.sock.recv(min(size - len(chunks), 65536))
            except TimeoutError:
                raise self.fail(f"no answer in time (waiting for {what})", lost=True) from None
            except OSError as error:
                raise self.fail(f"connection lost while reading {what} ({error.strerror or error})", lost=True) from None
            if not chunk:
                raise self.fail(f"closed the connection while sending {what}", lost=True)
            chunks += chunk
        return bytes(chunks)


def greet(wire: Wire) -> int:
    """Read the server greeting, answer with our client flags; returns the handshake flags."""
    magic, option_magic = struct.unpack(">QQ", wire.recv(16, "the greeting"))
    if magic != NBDMAGIC:
        raise wire.fail(f"not an NBD server (bad greeting magic {magic:#018x})")
    if option_magic != IHAVEOPT:
        if option_magic == 0x00420281861253:
            raise wire.fail("old-style NBD server; only the fixed newstyle handshake is supported")
        raise wire.fail(f"bad greeting (magic {option_magic:#018x})")
    (flags,) = struct.unpack(">H", wire.recv(2, "the greeting"))
    if not flags & FLAG_FIXED_NEWSTYLE:
        raise wire.fail("server does not speak the fixed newstyle handshake")
    wire.send(struct.pack(">I", flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)))
    return int(flags)


def send_option(wire: Wire, option: int, data: bytes = b"") -> None:
    wire.send(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)


def read_reply(wire: Wire, option: int) -> tuple[int, bytes]:
    """One option reply (type, payload); checks the magic, the option echo and the length."""
    magic, echoed, reply, length = struct.unpack(">QIII", wire.recv(20, "an option reply"))
    if magic != REPLY_MAGIC:
        raise wire.fail(f"bad option reply magic {magic:#018x}")
    if echoed != option:
        raise wire.fail(f"reply to option {echoed} while option {option} was asked")
    if length > MAX_REPLY:
        raise wire.fail(f"option reply of {length} bytes is too long (at most {MAX_REPLY})")
    return reply, wire.recv(length, "an option reply") if length else b""


def _error(wire: Wire, what: str, reply: int, payload: bytes) -> NbdError:
    if reply & REP_FLAG_ERROR:
        problem = REP_ERRORS.get(reply, f"error {reply - REP_FLAG_ERROR}")
        detail = f" ({_text(payload)})" if payload.strip(b"\0 ") else ""
        return wire.fail(f"{what}: {problem}{detail}", reply=reply)
    return wire.fail(f"{what}: unexpected reply type {reply}")


def start_tls(wire: Wire, context: ssl.SSLContext, *, server_hostname: str) -> None:
    """NBD_OPT_STARTTLS, then the TLS handshake; WIRE then carries the TLS socket."""
    import ssl

    send_option(wire, OPT_STARTTLS)
    reply, payload = read_reply(wire, OPT_STARTTLS)
    if reply != REP_ACK:
        raise _error(wire, "server refused TLS", reply, payload)
    if payload:
        raise wire.fail("STARTTLS acknowledgement carries data")
    wire._arm()
    try:
        wire.sock = context.wrap_socket(wire.sock, server_hostname=server_hostname)
    except ssl.SSLCertVerificationError as error:
        raise wire.fail(f"TLS certificate does not verify: {error.verify_message or error.reason}") from None
    except ssl.SSLError as error:
        raise wire.fail(f"TLS handshake failed: {error.reason or error}") from None
    except TimeoutError:
        raise wire.fail("no answer in time (TLS handshake)", lost=True) from None
    except OSError as error:
        raise wire.fail(f"connection lost during the TLS handshake ({error.strerror or error})", lost=True) from None


def list_exports(wire: Wire) -> list[ExportEntry]:
    """NBD_OPT_LIST: every export the server names, with its description."""
    send_option(wire, OPT_LIST)
    exports: list[ExportEntry] = []
    while True:
        reply, payload = read_reply(wire, OPT_LIST)
        if reply == REP_ACK:
            return exports
        if reply != REP_SERVER:
            raise _error(wire, "listing exports", reply, payload)
        if len(payload) < 4:
            raise wire.fail("export list entry is truncated")
        (length,) = struct.unpack(">I", payload[:4])
        if length > min(len(payload) - 4, MAX_NAME):
            raise wire.fail(f"export list entry claims a name of {length} bytes in a {len(payload)}-byte reply")
        if len(exports) >= MAX_LIST_ENTRIES:
            raise wire.fail(f"more than {MAX_LIST_ENTRIES} exports listed")
        exports.append(ExportEntry(_text(payload[4 : 4 + length]), _text(payload[4 + length :])))


def _check_flags(wire: Wire, flags: int) -> int:
    if not flags & FLAG_HAS_FLAGS:
        raise wire.fail(f"transmission flags {flags:#06x} lack the has-flags bit")
    return flags


def _check_size(wire: Wire, export: str, size: int) -> int:
    if size == 0:
        raise wire.fail(f"export {export!r} has size 0")
    if size >= 1 << 63:
        raise wire.fail(f"export {export!r} claims an impossible size of {size} bytes")
    return size


def _block_sizes(wire: Wire, payload: bytes) -> BlockSizes:
    minimum, preferred, maximum = struct.unpack(">III", payload)
    powers = all(value and not value & (value - 1) for value in (minimum, preferred))
    if not powers or minimum > 65536 or preferred < minimum or maximum < preferred:
        raise wire.fail(f"invalid block sizes (minimum {minimum}, preferred {preferred}, maximum {maximum})")
    return BlockSizes(minimum, preferred, maximum)


def request_info(wire: Wire, export: str, *, go: bool) -> ExportInfo:
    """NBD_OPT_GO (enter transmission) or NBD_OPT_INFO for EXPORT, asking for block sizes.

    Raises NbdError; its reply code is on `.reply` so callers can fall back on ERR_UNSUP.
    """
    option = OPT_GO if go else OPT_INFO
    name = export.encode()
    if len(name) > MAX_NAME:
        raise wire.fail(f"export name longer than {MAX_NAME} bytes")
    send_option(wire, option, struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE))
    size: int | None = None
    flags = 0
    sizes: BlockSizes | None = None
    description = ""
    for _ in range(MAX_INFO_REPLIES):
        reply, payload = read_reply(wire, option)
        if reply == REP_ACK:
            if size is None:
                raise wire.fail(f"export {export!r}: no size before the acknowledgement")
            if go:
                size = _check_size(wire, export, size)
            return ExportInfo(name=export, size=size, flags=flags, block_sizes=sizes, description=description)
        if reply != REP_INFO:
            raise _error(wire, f"export {export!r}", reply, payload)
        if len(payload) < 2:
            raise wire.fail("information reply is truncated")
        (kind,) = struct.unpack(">H", payload[:2])
        body = payload[2:]
        expected = {INFO_EXPORT: 10, INFO_BLOCK_SIZE: 12}.get(kind)
        if expected is not None and len(body) != expected:
            raise wire.fail(f"information reply {kind} has {len(body)} bytes instead of {expected}")
        if kind == INFO_EXPORT:
            size, flags = struct.unpack(">QH", body)
            flags = _check_flags(wire, flags)
        elif kind == INFO_BLOCK_SIZE:
            sizes = _block_sizes(wire, body)
        elif kind == INFO_DESCRIPTION:
            description = _text(body)
    raise wire.fail(f"more than {MAX_INFO_REPLIES} information replies")


def export_name(wire: Wire, export: str, *, no_zeroes: bool) -> ExportInfo:
    """NBD_OPT_EXPORT_NAME, for servers without NBD_OPT_GO; a server that lacks EXPORT just closes."""
    name = export.encode()
    send_option(wire, OPT_EXPORT_NAME, name)
    try:
        size, flags = struct.unpack(">QH", wire.recv(10, "the export size"))
    except NbdError as error:
        if error.lost:
            raise wire.fail(f"export {export!r} not found (or the server closed the connection)") from None
        raise
    if not no_zeroes:
        wire.recv(124, "the export padding")
    return ExportInfo(name=export, size=_check_size(wire, export, size), flags=_check_flags(wire, flags), block_sizes=None)


def open_export(wire: Wire, export: str, *, handshake_flags: int) -> ExportInfo:
    """Enter transmission on EXPORT: NBD_OPT_GO, or NBD_OPT_EXPORT_NAME where GO is unsupported."""
    try:
        return request_info(wire, export, go=True)
    except NbdError as error:
        if error.reply != REP_ERR_UNSUP:
            raise
    return export_name(wire, export, no_zeroes=bool(handshake_flags & FLAG_NO_ZEROES))


def read(wire: Wire, *, offset: int, length: int) -> bytes:
    """NBD_CMD_READ of LENGTH bytes (at most MAX_READ) at OFFSET, in transmission phase (simple replies).

    For the supervisor's own look at an export before the kernel gets the connection: checks the
    reply's magic, cookie and error. A server's error reply raises NbdError naming the errno.
    """
    if not 0 < length <= MAX_READ or offset < 0:
        raise ValueError(f"read of {length} bytes at {offset}: at most {MAX_READ} bytes at a non-negative offset")
    wire.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, COOKIE, offset, length))
    magic, error, cookie = struct.unpack(">IIQ", wire.recv(16, "a read reply"))
    if magic != SIMPLE_REPLY_MAGIC:
        kind = "a structured reply, which was not negotiated" if magic == STRUCTURED_REPLY_MAGIC else f"magic {magic:#010x}"
        raise wire.fail(f"read reply with {kind}")
    if cookie != COOKIE:
        raise wire.fail(f"read reply for request {cookie:#018x}, not ours ({COOKIE:#018x})")
    if error:
        said = os.strerror(error) if error < 4096 else "unknown error"  # errno values; os.strerror takes a C int
        raise wire.fail(f"read of {length} bytes at {offset} failed: {said} (error {error})")
    return wire.recv(length, "the data read")


def abort(wire: Wire) -> None:
    """End the handshake politely (NBD_OPT_ABORT); the server's answer is optional."""
    with contextlib.suppress(NbdError):
        send_option(wire, OPT_ABORT)


def disconnect(wire: Wire) -> None:
    """End transmission politely (NBD_CMD_DISC)."""
    with contextlib.suppress(NbdError):
        wire.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
