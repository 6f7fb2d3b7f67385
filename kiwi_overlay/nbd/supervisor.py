"""The long-lived `@kiwi-overlay-nbd` process: negotiates, attaches, and keeps one device connected.

It is started by `kiwi_overlay.nbd.attach` with argv[0] beginning with '@' (systemd's root storage
daemon convention), so it survives the switch to the real root and the shutdown killing spree.
After switch_root the initrd's files are gone: everything it will ever need (modules, TLS files,
the server's numeric address, the netlink sockets, /dev/kmsg) is loaded or opened before it says
it is ready. It then waits for NBD_CMD_LINK_DEAD notifications for its device, negotiates a new
connection with backoff, and hands it to the kernel (NBD_CMD_RECONFIGURE); with the ioctl
interface it re-runs SET_SOCK .. DO_IT instead. It ends on SIGTERM (`kiwi-overlay nbd detach`).

Protocol with the starting process: a JSON request on stdin; one line on stdout, `ok /dev/nbdN`
or `error MESSAGE`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiwi_overlay import log
from kiwi_overlay.config import NbdRoot
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.nbd import connect, kernel
from kiwi_overlay.nbd.protocol import ExportInfo, NbdError

if TYPE_CHECKING:
    import ssl

PROCESS_NAME = "@kiwi-overlay-nbd"
MAX_KERNEL_BLOCK = 4096


@dataclass(frozen=True)
class Request:
    root: NbdRoot
    timeout: float
    device: int | None
    state_dir: Path
    log_to_kmsg: bool
    debug: bool = False
    ioctl: bool = False  # the old interface even where netlink exists (like nbd-client -nonetlink)

    def to_json(self) -> str:
        root = {name: str(value) if isinstance(value, Path) else value for name, value in self.root.__dict__.items() if name != "transport"}
        return json.dumps(
            {
                "root": root,
                "timeout": self.timeout,
                "device": self.device,
                "state_dir": str(self.state_dir),
                "kmsg": self.log_to_kmsg,
                "debug": self.debug,
                "ioctl": self.ioctl,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Request:
        data = json.loads(text)
        root = dict(data["root"])
        for name in ("tls_ca", "tls_cert", "tls_key"):
            root[name] = Path(root[name]) if root[name] else None
        return cls(
            root=NbdRoot(**root),
            timeout=float(data["timeout"]),
            device=data["device"],
            state_dir=Path(data["state_dir"]),
            log_to_kmsg=bool(data["kmsg"]),
            debug=bool(data["debug"]),
            ioctl=bool(data["ioctl"]),
        )


def kernel_block_size(info: ExportInfo, *, peer: str) -> int:
    """The device's logical block size: the server's minimum, at least 512, at most a page."""
    minimum = info.block_sizes.minimum if info.block_sizes else 512
    if minimum > MAX_KERNEL_BLOCK:
        raise NbdError(f"NBD server {peer}: export needs {minimum}-byte blocks; the kernel supports at most {MAX_KERNEL_BLOCK}")
    return max(512, minimum)


class TlsProxy:
    """Copies between the kernel's end of a socketpair and one TLS connection (the kernel has no TLS)."""

    def __init__(self, tls: socket.socket) -> None:
        self.tls = tls
        self.inner, self.kernel_end = socket.socketpair()
        for source, target in ((self.inner, tls), (tls, self.inner)):
            threading.Thread(target=self._copy, args=(source, target), daemon=True).start()

    def _copy(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(256 * 1024):
                target.sendall(data)
        except OSError:
            pass
        # Either side gone: close both so the kernel sees a dead link and asks for a new one.
        for sock in (self.inner, self.tls):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Supervisor:
    def __init__(self, request: Request) -> None:
        self.request = request
        self.root = request.root
        self.context: ssl.SSLContext | None = connect.tls_context(self.root)
        self.info: ExportInfo | None = None
        self.kmsg: int | None = None

    # -- connections --------------------------------------------------------------------

    def _open(self, deadline: float, greeting: float) -> tuple[socket.socket, ExportInfo]:
        return connect.open_export(self.root, deadline=deadline, context=self.context, greeting=greeting)

    def kernel_socket(self, sock: socket.socket) -> socket.socket:
        """The socket the kernel gets: SOCK itself, or a proxied socketpair end for TLS."""
        # The proxy lives as long as its threads do: until either side of it is gone.
        return sock if self.context is None else TlsProxy(sock).kernel_end

    def first_connections(self) -> list[socket.socket]:
        sock, info = connect.with_retry(self._open, root=self.root, timeout=self.request.timeout)
        socks = [sock]
        try:
            wanted = self.root.connections if info.multi_conn else 1
            if wanted < self.root.connections:
                log.info(f"{self.root.uri}: server does not allow several connections; using one")
            for _ in range(wanted - 1):
                socks.append(connect.with_retry(self._open, root=self.root, timeout=self.request.timeout)[0])
        except BaseException:
            for each in socks:
                each.close()
            raise
        self.info = info
        return [self.kernel_socket(each) for each in socks]

    def reconnect(self) -> socket.socket:
        """A new connection, trying forever with backoff: a root device has no one else to ask."""
        attempt = 0
        while True:
            attempt += 1
            try:
                sock, info = self._open(time.monotonic() + connect.ATTEMPT_TIMEOUT, connect.greeting_timeout(attempt))
            except KiwiOverlayError as error:
                if attempt <= 5 or attempt % 20 == 0:  # a long outage must not flood the kernel log
                    self.say(f"reconnecting {self.root.uri} (attempt {attempt}): {error}")
                time.sleep(connect.backoff(attempt))
                continue
            assert self.info is not None
            if info.size != self.info.size:
                sock.close()
                self.say(f"{self.root.uri} now has {info.size} bytes instead of {self.info.size}; not reconnecting to it")
                time.sleep(connect.backoff(attempt))
                continue
            return self.kernel_socket(sock)

    # -- messages after start -----------------------------------------------------------

    def say(self, text: str) -> None:
        if self.kmsg is not None:
            try:
                os.write(self.kmsg, f"<6>kiwi-overlay-nbd[{os.getpid()}]: {text}\n".encode()[:1000])
                return
            except OSError:
                pass
        log.info(text)

    # -- kernel ---------------------------------------------------------------------------

    def config(self) -> kernel.Config:
        assert self.info is not None
        return kernel.Config(
            size=self.info.size,
            block_size=kernel_block_size(self.info, peer=self.root.address),
            server_flags=self.info.flags,
            io_timeout=self.root.io_timeout,
            dead_conn_timeout=self.request.timeout,
            backend=f"kiwi-overlay {self.root.uri}",
        )

    def record(self, index: int, mode: str) -> None:
        self.request.state_dir.mkdir(parents=True, exist_ok=True)
        state = {"device": str(kernel.device_path(index)), "index": index, "uri": self.root.uri, "pid": os.getpid(), "mode": mode}
        path = self.request.state_dir / f"nbd{index}.json"
        path.with_suffix(".tmp").write_text(json.dumps(state) + "\n")
        path.with_suffix(".tmp").rename(path)

    def run(self, ready: Any) -> None:
        log.debug("nbd supervisor: started")
        try:
            if self.request.ioctl:
                kernel.load_nbd_module()
                raise kernel.Unsupported("the ioctl interface was asked for")
            link = kernel.Netlink()  # first: a kernel without nbd fails now, not after the wait for the server
        except kernel.Unsupported as why:
            log.debug(f"nbd supervisor: {why}; using the ioctl interface")
            self.run_ioctl(self.first_connections(), ready)
            return
        log.debug("nbd supervisor: nbd netlink family bound")
        socks = self.first_connections()
        log.debug(f"nbd supervisor: {len(socks)} connection(s) to {self.root.uri} negotiated")
        listener = kernel.Netlink(load_module=False)
        listener.subscribe()
        index = kernel.connect(link, [sock.fileno() for sock in socks], self.config(), index=self.request.device)
        log.debug(f"nbd supervisor: /dev/nbd{index} connected")
        try:
            for sock in socks:
                sock.close()  # the kernel holds its own references
            self.record(index, "netlink")
            kernel.status(link, index)  # warms up every code path the reconnect uses, before switch_root
            self.start_logging()
            ready(f"ok {kernel.device_path(index)}")
        except BaseException:
            kernel.disconnect(link, index)
            raise
        while True:
            try:
                dead_links = kernel.dead_link_indexes(listener.events())
            except Exception as error:  # a root device's only helper does not give up
                self.say(f"/dev/nbd{index}: reading kernel notifications failed ({error}); retrying")
                time.sleep(1)
                continue
            for _ in (dead for dead in dead_links if dead == index):
                self.say(f"/dev/nbd{index}: connection to {self.root.address} lost; reconnecting")
                sock = self.reconnect()
                try:
                    kernel.reconfigure(link, index, [sock.fileno()], backend=self.config().backend)
                    self.say(f"/dev/nbd{index}: reconnected to {self.root.uri}")
                except Exception as error:
                    self.say(f"/dev/nbd{index}: {error}")
                finally:
                    sock.close()

    def run_ioctl(self, socks: list[socket.socket], ready: Any) -> None:
        """The old interface: SET_SOCK .. DO_IT; DO_IT blocks (in a thread) while the device is up."""
        index = self.request.device if self.request.device is not None else kernel.ioctl_free_device()
        device = kernel.device_path(index)
        for extra in socks[1:]:
            extra.close()
        sock = socks[0]
        device_fd = os.open(device, os.O_RDWR)
        while True:
            kernel.ioctl_configure(device_fd, sock.fileno(), self.config())
            done = threading.Event()
            threading.Thread(target=self._do_it, args=(device_fd, done), daemon=True).start()
            while not kernel.connected(index) and not done.is_set():
                time.sleep(0.01)
            if done.is_set():
                raise NbdError(f"{device}: the kernel refused the connection (NBD_DO_IT)")
            if ready is not None:
                self.record(index, "ioctl")
                self.start_logging()
                ready(f"ok {device}")
                ready = None
            done.wait()
            sock.close()
            self.say(f"{device}: connection to {self.root.address} lost; reconnecting")
            sock = self.reconnect()

    @staticmethod
    def _do_it(device_fd: int, done: threading.Event) -> None:
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.ioctl(device_fd, kernel.NBD_DO_IT)
        done.set()

    def start_logging(self) -> None:
        if self.request.log_to_kmsg:
            try:
                self.kmsg = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                self.kmsg = None


def _harden() -> None:
    """Not the OOM killer's first choice (the root filesystem depends on us); no hold on the initrd's cwd."""
    os.chdir("/")
    with contextlib.suppress(OSError):  # not root, or no /proc: fine for `nbd attach` by hand
        Path("/proc/self/oom_score_adj").write_text("-1000\n")


def main() -> int:
    request = Request.from_json(sys.stdin.read())
    log.configure(debug=request.debug)
    _harden()
    out = sys.stdout

    def ready(line: str) -> None:
        out.write(line + "\n")
        out.flush()
        # Nothing after this may depend on the starting process or the initrd's files.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        os.close(null)

    try:
        Supervisor(request).run(ready)
    except KiwiOverlayError as error:
        out.write(f"error {error}\n")
    except Exception as error:  # reported as one line by the starting process, not as a traceback
        out.write(f"error unexpected {type(error).__name__}: {error}\n")
    out.flush()
    return 1


if __name__ == "__main__":
    sys.exit(main())
