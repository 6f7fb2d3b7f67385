"""TLS for the kernel's NBD client, which has none: a socketpair end for the kernel, TLS to the server."""

from __future__ import annotations

import contextlib
import socket
import threading


class TlsProxy:
    """Copies between the kernel's end of a socketpair and one TLS connection (the kernel has no TLS).

    One thread drives the TLS socket both ways with select(): OpenSSL's connection objects are
    not safe to use from two threads at once.
    """

    CHUNK = 256 * 1024

    def __init__(self, tls: socket.socket) -> None:
        self.tls = tls
        self.inner, self.kernel_end = socket.socketpair()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            self._copy_both_ways()
        # Either side gone: close both so the kernel sees a dead link and asks for a new one.
        for sock in (self.inner, self.tls):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _copy_both_ways(self) -> None:
        import select
        import ssl

        tls, plain = self.tls, self.inner
        tls.setblocking(False)
        plain.setblocking(False)
        up = b""  # from the kernel, being sent over TLS: resent unchanged after a WANT_* (OpenSSL asks that)
        down = b""  # from the server, decrypted, not yet taken by the kernel's socket
        tls_read_needs: object = None  # what a TLS read waits for: readable (None) or writable (WANT_WRITE)
        tls_write_needs: object = None
        while True:
            readers: list[socket.socket] = [] if up else [plain]
            writers: list[socket.socket] = [plain] if down else []
            if up:
                (readers if tls_write_needs == "read" else writers).append(tls)
            # Records OpenSSL has already decrypted wait in its buffer, invisible to select.
            tls_ready = not down and isinstance(tls, ssl.SSLSocket) and tls.pending() > 0
            if not down and not tls_ready:
                (writers if tls_read_needs == "write" else readers).append(tls)
            readable, writable, _ = select.select(readers, writers, [], 0 if tls_ready else None)
            if plain in readable:
                up = plain.recv(self.CHUNK)
                if not up:
                    return
            if up and (tls in writable or tls in readable):
                try:
                    up = up[tls.send(up) :]
                    tls_write_needs = None
                except ssl.SSLWantReadError:
                    tls_write_needs = "read"
                except ssl.SSLWantWriteError:
                    tls_write_needs = None
            if not down and (tls_ready or tls in readable or tls in writable):
                try:
                    down = tls.recv(self.CHUNK)
                    tls_read_needs = None
                except ssl.SSLWantReadError:
                    tls_read_needs = None
                except ssl.SSLWantWriteError:
                    tls_read_needs = "write"
                else:
                    if not down:
                        return
            if down and plain in writable:
                down = down[plain.send(down) :]
