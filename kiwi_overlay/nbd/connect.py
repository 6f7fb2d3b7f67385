"""Reaching an NBD server: TCP (and TLS) connect, handshake, retries with backoff and jitter.

Many clients boot at once after a power cut: retries back off exponentially with random jitter
so they do not hammer the server in lockstep. Stdlib only; ssl is imported only for nbds://.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from kiwi_overlay import log
from kiwi_overlay.nbd import protocol
from kiwi_overlay.nbd.protocol import ExportEntry, ExportInfo, NbdError, Wire

if TYPE_CHECKING:
    import ssl

    from kiwi_overlay.config import NbdRoot

T = TypeVar("T")

FIRST_DELAY = 0.25
MAX_DELAY = 10.0
# One attempt may not use the whole boot timeout: a stalled server must not hide a restarted one.
ATTEMPT_TIMEOUT = 30.0
# A client caught in a full accept queue (nbd-server listens with a backlog of 10) waits for a
# SYN retransmission or the server's SYN-ACK retransmission (1 s, 3 s, 7 s later); a new
# connection is the quicker way in. So the first attempt allows FIRST_GREETING_TIMEOUT for the
# connection and the greeting, each further one twice as long up to GREETING_TIMEOUT (a loaded
# server still gets the time to accept and fork).
FIRST_GREETING_TIMEOUT = 0.5
GREETING_TIMEOUT = 5.0


class Unreachable(NbdError):
    """The server could not be reached (yet): worth another attempt until the deadline."""


def tls_context(root: NbdRoot) -> ssl.SSLContext | None:
    """The client TLS context for ROOT (its CA and client certificate), or None without TLS.

    Built once: the files are read now, so a long-lived process needs them no more.
    """
    if not root.tls:
        return None
    import ssl

    try:
        context = ssl.create_default_context(cafile=str(root.tls_ca) if root.tls_ca else None)
        if root.tls_cert and root.tls_key:
            context.load_cert_chain(str(root.tls_cert), str(root.tls_key))
    except (OSError, ssl.SSLError) as error:
        files = ", ".join(str(path) for path in (root.tls_ca, root.tls_cert, root.tls_key) if path)
        raise NbdError(f"TLS files for {root.uri} unusable ({files}): {getattr(error, 'strerror', None) or error}") from None
    return context


def resolve(root: NbdRoot) -> list[tuple[socket.AddressFamily, tuple[str, int] | tuple[str, int, int, int]]]:
    """The addresses of ROOT's server (numeric, so a later reconnect needs no resolver)."""
    try:
        infos = socket.getaddrinfo(root.host, root.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise Unreachable(f"NBD server {root.address}: cannot resolve {root.host} ({error})") from None
    return [(family, address) for family, _, _, _, address in infos]  # type: ignore[misc]


def _tcp(root: NbdRoot, deadline: float) -> socket.socket:
    last: Exception | None = None
    for family, address in resolve(root):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.connect(address)
        except OSError as error:
            sock.close()
            last = error
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A vanished server (power cut) is noticed by the kernel within about a minute.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        return sock
    reason = "timed out" if isinstance(last, TimeoutError) else getattr(last, "strerror", None) or str(last)
    raise Unreachable(f"NBD server {root.address}: {reason.lower()}")


def greeting_timeout(attempt: int) -> float:
    """Seconds attempt ATTEMPT (from 1) allows for the TCP connection and the server's greeting."""
    return min(GREETING_TIMEOUT, FIRST_GREETING_TIMEOUT * 2.0 ** min(attempt - 1, 16))


def handshake(root: NbdRoot, *, deadline: float, context: ssl.SSLContext | None, greeting: float = GREETING_TIMEOUT) -> tuple[Wire, int]:
    """Connect, read the greeting (both within GREETING seconds) and start TLS when asked; the wire and the handshake flags."""
    greeting_deadline = min(deadline, time.monotonic() + greeting)
    wire = Wire(_tcp(root, greeting_deadline), peer=root.address, deadline=greeting_deadline)
    try:
        try:
            flags = protocol.greet(wire)
        except NbdError as error:
            # A server that is starting or overloaded may stall or close before its greeting: try again.
            if error.lost:
                raise Unreachable(str(error)) from None
            raise
        wire.deadline = deadline
        if context is not None:
            protocol.start_tls(wire, context, server_hostname=root.host)
    except BaseException:
        wire.sock.close()
        raise
    return wire, flags


def open_export(
    root: NbdRoot, *, deadline: float, context: ssl.SSLContext | None, greeting: float = GREETING_TIMEOUT
) -> tuple[socket.socket, ExportInfo]:
    """One connection in transmission phase on ROOT's export (blocking socket) and what the server said about it."""
    wire, flags = handshake(root, deadline=deadline, context=context, greeting=greeting)
    try:
        info = protocol.open_export(wire, root.export, handshake_flags=flags)
    except BaseException:
        wire.sock.close()
        raise
    wire.sock.settimeout(None)
    return wire.sock, info


def list_exports(
    root: NbdRoot, *, deadline: float, context: ssl.SSLContext | None, greeting: float = GREETING_TIMEOUT
) -> list[ExportEntry]:
    wire, _ = handshake(root, deadline=deadline, context=context, greeting=greeting)
    try:
        exports = protocol.list_exports(wire)
        protocol.abort(wire)
        return exports
    finally:
        wire.sock.close()


def export_info(root: NbdRoot, *, deadline: float, context: ssl.SSLContext | None, greeting: float = GREETING_TIMEOUT) -> ExportInfo:
    """Size, flags and block sizes of ROOT's export (GO then NBD_CMD_DISC: INFO may not report the size)."""
    sock, info = open_export(root, deadline=deadline, context=context, greeting=greeting)
    try:
        protocol.disconnect(Wire(sock, peer=root.address, deadline=deadline))
        return info
    finally:
        sock.close()


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt ATTEMPT+1: exponential, capped, with jitter."""
    return min(MAX_DELAY, FIRST_DELAY * 2.0 ** min(attempt, 16)) * random.uniform(0.5, 1.5)


def with_retry(action: Callable[[float, float], T], *, root: NbdRoot, timeout: float) -> T:
    """ACTION(deadline, greeting timeout) until it does not raise Unreachable or TIMEOUT seconds pass, printing progress."""
    start = time.monotonic()
    end = start + timeout
    attempt = 0
    while True:
        attempt += 1
        began = time.monotonic()
        greeting = greeting_timeout(attempt)
        try:
            return action(min(end, began + ATTEMPT_TIMEOUT), greeting)
        except Unreachable as error:
            now = time.monotonic()
            # An attempt that waited out its greeting timeout has backed off already (the timeouts
            # double): only a little jitter before the next. A refused connection backs off.
            delay = random.uniform(0.0, FIRST_DELAY) if now - began >= greeting else backoff(attempt)
            if now + delay >= end:
                raise NbdError(f"{error} (gave up after {timeout:.0f} s, {attempt} attempts)") from None
            log.debug(str(error))
            log.info(f"waiting for NBD server {root.address} (attempt {attempt}, {now - start:.0f} s of {timeout:.0f} s)")
            time.sleep(delay)
