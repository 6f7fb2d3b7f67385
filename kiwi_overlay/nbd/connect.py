"""Reaching an NBD server: TCP (and TLS) connect, handshake, retries with backoff and jitter.

Many clients boot at once after a power cut: retries back off exponentially with random jitter
so they do not hammer the server in lockstep. Stdlib only; ssl is imported only for nbds://.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, TypeVar

from kiwi_overlay import log
from kiwi_overlay.nbd import protocol
from kiwi_overlay.nbd.protocol import ExportEntry, ExportInfo, NbdError, Wire

if TYPE_CHECKING:
    import ssl

    from kiwi_overlay.config.plan import NbdRoot

T = TypeVar("T")
# (family, sockaddr) with a numeric host, as getaddrinfo gives them.
Address = tuple[socket.AddressFamily, tuple[str, int] | tuple[str, int, int, int]]

FIRST_DELAY = 0.25
MAX_DELAY = 10.0
# One attempt may not use the whole boot timeout: a stalled server must not hide a restarted one.
ATTEMPT_TIMEOUT = 30.0
# A client caught in a full accept queue (nbd-server listens with a backlog of 10) waits for a
# SYN or SYN-ACK retransmission (1 s, 3 s, 7 s later); a new connection is the quicker way in.
# So with_retry's first attempt allows each of its first two steps, the connect and the server's
# greeting, FIRST_STEP_TIMEOUT; each next attempt twice as long, up to STEP_TIMEOUT (a loaded
# server still gets the time to accept and fork).
FIRST_STEP_TIMEOUT = 0.5
STEP_TIMEOUT = 5.0
# The current attempt's step timeout: set by with_retry around each attempt (per thread).
_step_timeout: ContextVar[float] = ContextVar("step_timeout", default=STEP_TIMEOUT)


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


def resolve(root: NbdRoot) -> list[Address]:
    """The addresses of ROOT's (first) server, numeric: resolved once, a reconnect needs no resolver.

    After switch_root the initrd's /etc (hosts, resolv.conf) is gone or another's: a name that
    resolved at attach time may resolve to nothing, or elsewhere, later.
    """
    try:
        infos = socket.getaddrinfo(root.host, root.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise Unreachable(f"NBD server {root.address}: cannot resolve {root.host} ({error})") from None
    return [(family, address) for family, _, _, _, address in infos]  # type: ignore[misc]


def _tcp(root: NbdRoot, deadline: float, addresses: Sequence[Address] | None) -> socket.socket:
    last: Exception | None = None
    for family, address in resolve(root) if addresses is None else addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Not the whole attempt: a SYN that a full accept queue dropped is sent again only after 1 s.
            sock.settimeout(max(0.01, min(deadline, time.monotonic() + _step_timeout.get()) - time.monotonic()))
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


@contextmanager
def _retried_when_lost() -> Iterator[None]:
    """A connection that stalled, closed or was reset, before or after the greeting, is worth another attempt.

    A server that is starting, restarting or has a full accept queue does that; the deadline bounds the attempts.
    """
    try:
        yield
    except NbdError as error:
        if error.lost:
            raise Unreachable(str(error)) from None
        raise


def handshake(
    root: NbdRoot, *, deadline: float, context: ssl.SSLContext | None, addresses: Sequence[Address] | None = None
) -> tuple[Wire, int]:
    """Connect (to ADDRESSES from resolve(), or resolve now), read the greeting and start TLS when asked.

    Returns the wire and the handshake flags. TLS checks the certificate against the host name, not the address.
    """
    wire = Wire(_tcp(root, deadline, addresses), peer=root.address, deadline=min(deadline, time.monotonic() + _step_timeout.get()))
    try:
        with _retried_when_lost():
            flags = protocol.greet(wire)
            wire.deadline = deadline
            if context is not None:
                protocol.start_tls(wire, context, server_hostname=root.host)
    except BaseException:
        wire.sock.close()
        raise
    return wire, flags


def open_export(
    root: NbdRoot, *, deadline: float, context: ssl.SSLContext | None, addresses: Sequence[Address] | None = None
) -> tuple[socket.socket, ExportInfo]:
    """One connection in transmission phase on ROOT's export (blocking socket) and what the server said about it."""
    wire, flags = handshake(root, deadline=deadline, context=context, addresses=addresses)
    try:
        with _retried_when_lost():
            info = protocol.open_export(wire, root.export, handshake_flags=flags)
    except BaseException:
        wire.sock.close()
        raise
    wire.sock.settimeout(None)
    return wire.sock, info


def list_exports(root: NbdRoot, *, deadline: float, context: ssl.SSLContext | None) -> list[ExportEntry]:
    wire, _ = handshake(root, deadline=deadline, context=context)
    try:
        with _retried_when_lost():
            exports = protocol.list_exports(wire)
        protocol.abort(wire)
        return exports
    finally:
        wire.sock.close()


def export_info(root: NbdRoot, *, deadline: float, context: ssl.SSLContext | None) -> ExportInfo:
    """Size, flags and block sizes of ROOT's export (GO then NBD_CMD_DISC: INFO may not report the size)."""
    sock, info = open_export(root, deadline=deadline, context=context)
    try:
        protocol.disconnect(Wire(sock, peer=root.address, deadline=deadline))
        return info
    finally:
        sock.close()


def step_timeout(attempt: int) -> float:
    """Seconds attempt ATTEMPT (from 1) of with_retry allows to connect, and again for the server's greeting."""
    return min(STEP_TIMEOUT, FIRST_STEP_TIMEOUT * 2.0 ** min(attempt - 1, 16))


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt ATTEMPT+1: exponential, capped, with jitter."""
    return min(MAX_DELAY, FIRST_DELAY * 2.0 ** min(attempt, 16)) * random.uniform(0.5, 1.5)


def with_retry(action: Callable[[float], T], *, root: NbdRoot, timeout: float) -> T:
    """ACTION(deadline) until it does not raise Unreachable or TIMEOUT seconds pass, printing progress."""
    start = time.monotonic()
    end = start + timeout
    attempt = 0
    while True:
        attempt += 1
        began = time.monotonic()
        step = step_timeout(attempt)
        token = _step_timeout.set(step)
        try:
            return action(min(end, began + ATTEMPT_TIMEOUT))
        except Unreachable as error:
            now = time.monotonic()
            # An attempt that waited out a step timeout has backed off already (the timeouts
            # double): only a little jitter before the next. A refused connection backs off.
            delay = random.uniform(0.0, FIRST_DELAY) if now - began >= step else backoff(attempt)
            if now + delay >= end:
                raise NbdError(f"{error} (gave up after {timeout:.0f} s, {attempt} attempts)") from None
            log.debug(str(error))
            log.info(f"waiting for NBD server {root.address} (attempt {attempt}, {now - start:.0f} s of {timeout:.0f} s)")
            time.sleep(delay)
        finally:
            _step_timeout.reset(token)
