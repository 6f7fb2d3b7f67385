"""The root's NBD servers as the supervisor uses them: the first connections, and reconnects that fail over.

The device is attached through the first server that answers (with several connections where the
server allows them); a reconnect tries that server first, then any other that serves the same image
(the same size, and with rd.root.overlay.verity the same root hash). Every server's address is
resolved while the initrd's resolver works: after switch_root there may be none.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kiwi_overlay import log
from kiwi_overlay.config.plan import NbdRoot, NbdServer
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.nbd import connect, protocol
from kiwi_overlay.nbd.protocol import ExportInfo, NbdError, Wire
from kiwi_overlay.nbd.tls_proxy import TlsProxy

if TYPE_CHECKING:
    import ssl


class Servers:
    """ROOT's servers: which one the device is connected through (`server`), the export it serves (`info`)."""

    def __init__(self, root: NbdRoot, *, timeout: float, verity: str | None, say: Callable[[str], None]) -> None:
        self.root = root
        self.timeout = timeout  # for the first connections
        self.verity = verity  # rd.root.overlay.verity: a reconnect checks the server's image has this root hash
        self.say = say  # messages while reconnecting
        self.context: ssl.SSLContext | None = connect.tls_context(root)
        self.info: ExportInfo | None = None
        # Each server's numeric addresses, resolved once: after switch_root there may be no resolver.
        self.addresses: dict[NbdServer, list[connect.Address]] = {}
        self.server = root.servers[0]  # the one the device is connected through
        if verity is not None:
            # A reconnect checks the root hash with it: loaded now, while the initrd's files are there.
            import kiwi_overlay.verity  # noqa: F401

    def open(self, server: NbdServer, deadline: float) -> tuple[socket.socket, ExportInfo]:
        if server not in self.addresses:
            self.addresses[server] = connect.resolve(self.root.through(server))
        return connect.open_export(self.root.through(server), deadline=deadline, context=self.context, addresses=self.addresses[server])

    def _open_first(self, servers: Sequence[NbdServer], deadline: float) -> tuple[NbdServer, socket.socket, ExportInfo]:
        """A connection through the first of SERVERS that answers; each gets an equal share of the time left."""
        failures = []
        for position, server in enumerate(servers):
            share = (deadline - time.monotonic()) / (len(servers) - position)
            try:
                return (server, *self.open(server, time.monotonic() + share))
            except connect.Unreachable as error:
                failures.append(str(error))
        raise connect.Unreachable("; ".join(failures))

    def kernel_socket(self, sock: socket.socket) -> socket.socket:
        """The socket the kernel gets: SOCK itself, or a proxied socketpair end for TLS."""
        # The proxy lives as long as its threads do: until either side of it is gone.
        return sock if self.context is None else TlsProxy(sock).kernel_end

    def first_connections(self) -> list[socket.socket]:
        server, sock, info = connect.with_retry(
            lambda deadline: self._open_first(self.root.servers, deadline), root=self.root, timeout=self.timeout
        )
        socks = [sock]
        try:
            wanted = self.root.connections if info.multi_conn else 1
            if wanted < self.root.connections:
                log.info(f"{self.root.server_uri(server)}: server does not allow several connections; using one")
            socks += self._extra_connections(server, wanted - 1)
        except BaseException:
            for each in socks:
                each.close()
            raise
        self.info, self.server = info, server
        if len(self.root.servers) > 1:
            log.info(f"{self.root.server_uri(server)} answered first")
        self._resolve_the_others()
        return [self.kernel_socket(each) for each in socks]

    def _extra_connections(self, server: NbdServer, count: int) -> list[socket.socket]:
        """Up to COUNT more connections, one attempt each: a server that takes fewer (a connection
        limit, a full backlog) gets the ones it took, with a console line, not a failed attach."""
        socks: list[socket.socket] = []
        for _ in range(count):
            try:
                socks.append(self.open(server, time.monotonic() + connect.ATTEMPT_TIMEOUT)[0])
            except KiwiOverlayError as error:
                accepted = len(socks) + 1
                log.info(
                    f"{self.root.server_uri(server)}: the server accepted {accepted} of {count + 1} connections; using {accepted} ({error})"
                )
                break
        return socks

    def _resolve_the_others(self) -> None:
        """The addresses of every other server now, while the initrd's resolver works."""
        for server in self.root.servers:
            if server not in self.addresses:
                try:
                    self.addresses[server] = connect.resolve(self.root.through(server))
                except connect.Unreachable as error:
                    self.addresses[server] = []
                    log.info(f"{error}; it will not be used to reconnect")

    def different_image(self, server: NbdServer, info: ExportInfo, sock: socket.socket) -> str | None:
        """Why SERVER's export (INFO, open on SOCK) is not the image the device was attached to, or None when it is the same.

        A reconnect only goes where this says None: another server may hold another version of the image.
        The size must match; with rd.root.overlay.verity, the root hash of the image's verity superblock and
        top hash block, read over SOCK, too. A connection lost while reading raises NbdError (worth another try).
        """
        assert self.info is not None
        uri = self.root.server_uri(server)
        if info.size != self.info.size:
            return f"{uri} has {info.size} bytes instead of {self.info.size}"
        if self.verity is None:
            return None
        from kiwi_overlay import verity

        expected = self.verity
        locations = verity.hash_locations(info.size, digest_size=len(expected) // 2)
        if locations is None:
            return f"{uri}: its {info.size} bytes hold no verity hash tree after the data (rd.root.overlay.verity)"
        wire = Wire(sock, peer=uri, deadline=time.monotonic() + connect.ATTEMPT_TIMEOUT)
        try:
            superblock, top = [protocol.read(wire, offset=offset, length=verity.BLOCK) for offset in locations]
            found = verity.root_hash_of(superblock, top)
        except verity.VerityError as error:
            return f"{uri}: its verity superblock {error} (rd.root.overlay.verity)"
        except NbdError as error:
            if error.lost:
                raise
            return str(error)
        finally:
            sock.settimeout(None)  # blocking again, as the kernel (or the TLS proxy) takes it
        if found != expected:
            return f"{uri} serves an image with root hash {found} instead of rd.root.overlay.verity={expected}"
        return None

    def reconnect(self, *, lost_too_long: Callable[[], None] | None = None) -> socket.socket:
        """A new connection to the server the device used, else to any other with the same image; tries forever.

        After rd.root.overlay.nbd.lost's SECONDS without a server: LOST_TOO_LONG() once, and go on trying.
        """
        lost = self.root.lost
        policy_at = time.monotonic() + lost.seconds if lost.seconds is not None else None
        previous = self.server
        order = [previous, *(server for server in self.root.servers if server != previous and self.addresses.get(server))]
        attempt = 0
        while True:
            attempt += 1
            deadline = time.monotonic() + connect.ATTEMPT_TIMEOUT
            if policy_at is not None:
                deadline = min(deadline, max(policy_at, time.monotonic() + 1))
            try:
                server, sock, info = self._open_first(order, deadline)
                try:
                    problem = self.different_image(server, info, sock)
                except NbdError:  # lost while looking at the image: like an unreachable server, tried after the others
                    sock.close()
                    order.remove(server)
                    order.append(server)
                    raise
            except KiwiOverlayError as error:
                if attempt <= 5 or attempt % 20 == 0:  # a long outage must not flood the kernel log
                    self.say(f"reconnecting {self.root.uri} (attempt {attempt}): {error}")
            else:
                if problem is None:
                    if server != previous:
                        self.say(f"{self.root.server_uri(server)} took over from {self.root.server_uri(previous)} (same image)")
                    self.server = server
                    return self.kernel_socket(sock)
                sock.close()
                self.say(f"{problem}; not reconnecting to it")
                order.remove(server)
            if policy_at is not None and time.monotonic() >= policy_at:
                policy_at = None
                if lost_too_long is not None:
                    lost_too_long()
            time.sleep(connect.backoff(attempt))
