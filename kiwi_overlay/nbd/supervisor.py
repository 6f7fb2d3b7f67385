"""The long-lived `@kiwi-overlay-nbd` process: negotiates, attaches, and keeps one device connected.

`kiwi_overlay.nbd.attach_root` forks it (start), and it takes an argv[0] beginning with '@' (systemd's
root storage daemon convention), so it survives the switch to the real root and the shutdown killing
spree.
After switch_root the initrd's files are gone: everything it will ever need (modules, TLS files,
the server's numeric address, the netlink sockets, /dev/kmsg) is loaded or opened before it says
it is ready. It then waits for NBD_CMD_LINK_DEAD notifications for its device, negotiates a new
connection with backoff, and hands it to the kernel (NBD_CMD_RECONFIGURE); with the ioctl
interface it re-runs SET_SOCK .. DO_IT instead. It ends on SIGTERM (`kiwi-overlay nbd detach`).
The connections themselves, first and after a loss, come from failover.Servers.

It reports to the starting process in one line on a pipe: `ok /dev/nbdN` or `error MESSAGE`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kiwi_overlay import log
from kiwi_overlay.config.plan import NbdRoot
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.nbd import kernel
from kiwi_overlay.nbd.failover import Servers
from kiwi_overlay.nbd.protocol import FLAG_READ_ONLY, ExportInfo, NbdError

PROCESS_NAME = "@kiwi-overlay-nbd"
# The kernel's dead-connection timeout for "wait": ten years (it takes seconds; 0 would fail I/O at once).
WAIT_FOREVER = 10 * 365 * 86400.0
MAX_KERNEL_BLOCK = 4096


@dataclass(frozen=True)
class Request:
    root: NbdRoot
    timeout: float
    device: int | None
    state_dir: Path
    log_to_kmsg: bool
    ioctl: bool = False  # the old interface even where netlink exists (like nbd-client -nonetlink)
    verity: str | None = None  # rd.root.overlay.verity: a reconnect checks the server's image has this root hash


def kernel_block_size(info: ExportInfo, *, peer: str) -> int:
    """The device's logical block size: the server's minimum, at least 512, at most a page."""
    minimum = info.block_sizes.minimum if info.block_sizes else 512
    if minimum > MAX_KERNEL_BLOCK:
        raise NbdError(f"NBD server {peer}: export needs {minimum}-byte blocks; the kernel supports at most {MAX_KERNEL_BLOCK}")
    return max(512, minimum)


class Supervisor:
    def __init__(self, request: Request) -> None:
        self.request = request
        self.root = request.root
        self.kmsg: int | None = None
        self.sysrq: int | None = None  # /proc/sysrq-trigger, opened before switch_root for lost=reboot
        self.state: dict[str, object] = {}  # the record of the attached device (see record)
        self.state_dir_fd: int | None = None
        self.servers = Servers(request.root, timeout=request.timeout, verity=request.verity, say=self.say)

    def reconnect(self, *, give_up: Callable[[], None] | None = None) -> socket.socket:
        """A new connection through the servers (see Servers.reconnect); tries forever.

        After rd.root.overlay.nbd.lost's SECONDS without a server: reboot, or GIVE_UP() (fail I/O) once, and go on trying.
        """
        return self.servers.reconnect(lost_too_long=partial(self.lost_too_long, give_up))

    def lost_too_long(self, give_up: Callable[[], None] | None) -> None:
        """rd.root.overlay.nbd.lost=fail:SECONDS or reboot:SECONDS: SECONDS have passed without a server."""
        lost = self.root.lost
        option = f"rd.root.overlay.nbd.lost={lost.action}:{lost.seconds:g}"
        if lost.action == "reboot":
            self.say(f"no NBD server for {lost.seconds:g} s: rebooting ({option})", level=2)
            if self.sysrq is not None:
                os.write(self.sysrq, b"b")  # at once: a sync would wait on the root device that is gone
            return
        self.say(f"no NBD server for {lost.seconds:g} s: I/O on the root device fails from now on ({option})", level=2)
        if give_up is not None:
            try:
                give_up()
            except Exception as error:  # the kernel fails I/O after SECONDS by itself; keep reconnecting
                self.say(f"cannot make I/O fail at once: {error}")

    # -- messages after start -----------------------------------------------------------

    def say(self, text: str, *, level: int = 6) -> None:
        """TEXT in the kernel log (and so on the console and in the journal) at syslog LEVEL, or on stderr before start."""
        if self.kmsg is not None:
            try:
                os.write(self.kmsg, f"<{level}>kiwi-overlay-nbd[{os.getpid()}]: {text}\n".encode()[:1000])
                return
            except OSError:
                pass
        log.info(text)

    # -- kernel ---------------------------------------------------------------------------

    def config(self) -> kernel.Config:
        info = self.servers.info
        assert info is not None
        return kernel.Config(
            size=info.size,
            block_size=kernel_block_size(info, peer=self.root.address),
            # The read layer: the kernel device is read-only whatever the export allows (issue 14 item 5).
            server_flags=info.flags | FLAG_READ_ONLY,
            io_timeout=self.root.io_timeout,
            dead_conn_timeout=self.dead_conn_timeout(),
            backend=f"kiwi-overlay {self.root.uri}",
        )

    def dead_conn_timeout(self) -> float:
        """How long the kernel holds I/O while no connection is alive: lost=fail:SECONDS, else until a reconnect."""
        lost = self.root.lost
        return lost.seconds if lost.action == "fail" and lost.seconds is not None else WAIT_FOREVER

    def record(self, index: int, mode: str) -> None:
        """STATE_DIR/nbdINDEX.json for detach and `kiwi-overlay status`; kept up to date through a directory descriptor.

        After switch_root this process still sees the initrd's (emptied) tree; /run moved to the real root with the descriptor.
        """
        self.request.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir_fd = os.open(self.request.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.state = {
            "device": str(kernel.device_path(index)),
            "index": index,
            "uri": self.root.uri,
            "servers": [self.root.server_uri(server) for server in self.root.servers],
            "pid": os.getpid(),
            "mode": mode,
        }
        self.update_state("connected")

    def update_state(self, connection: str) -> None:
        """The connection state in the record: connected, reconnecting, or failing (lost=fail gave up)."""
        if self.state_dir_fd is None:
            return
        self.state |= {"connection": connection, "server": self.root.server_uri(self.servers.server), "since": time.time()}
        name = f"nbd{self.state['index']}.json"
        try:
            fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=self.state_dir_fd)
            try:
                os.write(fd, (json.dumps(self.state) + "\n").encode())
            finally:
                os.close(fd)
            os.rename(name + ".tmp", name, src_dir_fd=self.state_dir_fd, dst_dir_fd=self.state_dir_fd)
        except OSError as error:  # only `kiwi-overlay status` reads it: not worth failing for
            self.say(f"cannot update {name}: {error.strerror}")

    def run(self, ready: Any) -> None:
        log.debug("nbd supervisor: started")
        try:
            if self.request.ioctl:
                kernel.load_nbd_module()
                raise kernel.Unsupported("the ioctl interface was asked for")
            link = kernel.Netlink()  # first: a kernel without nbd fails now, not after the wait for the server
        except kernel.Unsupported as why:
            log.debug(f"nbd supervisor: {why}; using the ioctl interface")
            self.run_ioctl(self.servers.first_connections(), ready)
            return
        log.debug("nbd supervisor: nbd netlink family bound")
        socks = self.servers.first_connections()
        log.debug(f"nbd supervisor: {len(socks)} connection(s) to {self.root.uri} negotiated")
        listener = kernel.Netlink(load_module=False)
        listener.subscribe()
        index = kernel.connect(link, [sock.fileno() for sock in socks], self.config(), index=self.request.device)
        log.debug(f"nbd supervisor: /dev/nbd{index} connected")
        try:
            for sock in socks:
                sock.close()  # the kernel holds its own references
            _note_standby_connections(index, len(socks))
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
                self.say(f"/dev/nbd{index}: connection to {self.servers.server.address} lost; reconnecting")
                self.update_state("reconnecting")

                def give_up() -> None:
                    # Requests fail at once from now on, instead of each waiting for a server.
                    kernel.reconfigure(link, index, [], backend=self.config().backend, dead_conn_timeout=0)
                    self.update_state("failing")

                sock = self.reconnect(give_up=give_up)
                try:
                    kernel.reconfigure(
                        link, index, [sock.fileno()], backend=self.config().backend, dead_conn_timeout=self.dead_conn_timeout()
                    )
                    self.say(f"/dev/nbd{index}: reconnected to {self.root.server_uri(self.servers.server)}")
                    self.update_state("connected")
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
        detaching = threading.Event()
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
                self._detach_on_sigterm(device_fd, detaching)
                ready(f"ok {device}")
                ready = None
            else:
                self.update_state("connected")
            done.wait()
            sock.close()
            if detaching.is_set():
                with contextlib.suppress(OSError):
                    fcntl.ioctl(device_fd, kernel.NBD_CLEAR_SOCK)
                os.close(device_fd)
                sys.exit(0)
            self.say(f"{device}: connection to {self.servers.server.address} lost; reconnecting")
            self.update_state("reconnecting")
            # The old interface has no dead-connection wait: I/O fails while no connection is alive, whatever lost= says.
            sock = self.reconnect()

    @staticmethod
    def _detach_on_sigterm(device_fd: int, detaching: threading.Event) -> None:
        """SIGTERM (`kiwi-overlay nbd detach`): the kernel sends NBD_CMD_DISC first, then NBD_DO_IT returns.

        Dying at once would take the DO_IT with it: the server would see the connection drop
        without a disconnect, and anything still queued would be failed rather than flushed.
        """

        def disconnect(*_: object) -> None:
            detaching.set()
            with contextlib.suppress(OSError):
                fcntl.ioctl(device_fd, kernel.NBD_DISCONNECT)

        signal.signal(signal.SIGTERM, disconnect)

    @staticmethod
    def _do_it(device_fd: int, done: threading.Event) -> None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(device_fd, kernel.NBD_DO_IT)
        done.set()

    def start_logging(self) -> None:
        """Open what messages and lost=reboot need, while the initrd's /dev and /proc are there."""
        if self.request.log_to_kmsg:
            try:
                self.kmsg = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                self.kmsg = None
        if self.root.lost.action == "reboot":
            try:
                self.sysrq = os.open("/proc/sysrq-trigger", os.O_WRONLY | os.O_CLOEXEC)
            except OSError as error:
                log.info(
                    f"rd.root.overlay.nbd.lost=reboot: cannot open /proc/sysrq-trigger ({error.strerror}); the machine will not reboot"
                )


def _note_standby_connections(index: int, count: int) -> None:
    """Say so when some of the COUNT connections carry no requests: fewer CPUs than connections."""
    try:
        queues = kernel.hardware_queues(index)
    except OSError:
        return  # only a note: the device works either way
    if 0 < queues < count:
        log.info(
            f"/dev/nbd{index}: the kernel sends requests over {queues} of the {count} connections (one per CPU); "
            "the rest stand by for failover"
        )


def _harden() -> None:
    """Not the OOM killer's first choice (the root filesystem depends on us); no hold on the initrd's cwd."""
    os.chdir("/")
    with contextlib.suppress(OSError):  # not root, or no /proc: fine for `nbd attach` by hand
        Path("/proc/self/oom_score_adj").write_text("-1000\n")


def _release_inherited(keep: tuple[int, ...]) -> None:
    """Point every descriptor but KEEP at /dev/null: what they held is let go (a pipe kept open would
    never report its end to the process at its other end), while their numbers stay taken, so an
    object of the starting process that closes its descriptor one day cannot close one of ours."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep or fd == null:
            continue
        try:
            os.fstat(fd)
        except OSError:  # the listing's own descriptor, closed by now
            continue
        os.dup2(null, fd)
    os.close(null)


def _take_name(name: str) -> None:
    """NAME as this process's argv[0] where systemd reads it (/proc/PID/cmdline): over the original arguments.

    The kernel shows the memory between arg_start and arg_end (/proc/PID/stat fields 48 and 49);
    Python keeps copies of the arguments, so nothing else reads that memory.
    """
    import ctypes

    fields = Path("/proc/self/stat").read_bytes().rpartition(b")")[2].split()  # field 3 onwards
    start, end = int(fields[48 - 3]), int(fields[49 - 3])
    title = name.encode() + b"\0"
    if end - start < len(title):
        raise KiwiOverlayError(f"cannot name the NBD supervisor {name}: the command line it was started with has {end - start} bytes")
    ctypes.memmove(start, title.ljust(end - start, b"\0"), end - start)


def start(request: Request) -> tuple[int, int]:
    """Fork the supervisor for REQUEST; returns its pid and the pipe it reports on (read end).

    A fork, not a new interpreter: the caller has imported everything the supervisor runs, and
    a new interpreter with the same imports costs half a second of an emulated (TCG) boot. The
    child leaves the caller's session and its signals, and keeps only the standard descriptors.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(write_end)
        return pid, read_end
    status = 1
    try:
        os.close(read_end)
        os.setsid()
        _release_inherited(keep=(0, 1, 2, write_end))
        status = _serve(request, write_end)
    finally:
        os._exit(status)


def _serve(request: Request, report: int) -> int:
    """The supervisor's life in the forked child: one report line on REPORT, then the device's."""
    out = os.fdopen(report, "w")

    def ready(line: str) -> None:
        out.write(line + "\n")
        out.flush()
        # Nothing after this may depend on the starting process or the initrd's files.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, report):
            os.dup2(null, fd)
        os.close(null)

    try:
        _take_name(PROCESS_NAME)
        _harden()
        Supervisor(request).run(ready)
    except SystemExit as exit:  # detached (ioctl interface)
        return exit.code if isinstance(exit.code, int) else 1
    except KiwiOverlayError as error:
        out.write(f"error {error}\n")
    except Exception as error:  # reported as one line by the starting process, not as a traceback
        out.write(f"error unexpected {type(error).__name__}: {error}\n")
    out.flush()
    return 1
