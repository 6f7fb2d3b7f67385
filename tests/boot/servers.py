"""The servers a guest boots from, started and removed by the harness.

- NbdServer / QemuNbd: an export on 127.0.0.1 at a free port. A guest on QEMU user networking
  reaches it at GUEST_HOST (10.0.2.2) and the same port. Both can be stopped and started again
  on the same port while a guest runs (server down / restarted scenarios).
- AoeTarget: vblade in a network namespace, its veth's host end and a tap device on one bridge;
  a guest gets the tap (`Guest(taps=(target.tap,))`). AoE frames never leave that bridge.
All are context managers; leaving the block removes everything they created, also on errors.
Names on the host start with PREFIX (ko-bt-) plus a short random part, so runs do not collide.
A server on a fixed port (NBD's 10809) holds that port's lock file (PORT_LOCKS) while it exists:
another test run on this machine waits for it, and a foreign listener is reported, never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from kiwi_overlay.run import run

GUEST_HOST = "10.0.2.2"  # the host as seen from a guest on QEMU user networking
PREFIX = "ko-bt-"
START_TIMEOUT = 10.0
PORT_LOCKS = Path("/run/lock")  # kiwi-overlay-port-PORT.lock
PORT_LOCK_TIMEOUT = 900.0  # the longest a test holds a fixed port (a few boots)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def lock_port(port: int) -> int:
    """Hold PORT's lock file (the descriptor returned; closing it releases): one user of a fixed port at a time."""
    path = PORT_LOCKS / f"kiwi-overlay-port-{port}.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + PORT_LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(descriptor)
                raise RuntimeError(f"port {port}: still held by another kiwi-overlay test after {PORT_LOCK_TIMEOUT:g} s ({path})") from None
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(pid: int) -> None:
    """End the process group PID leads (a server and the children it forked per client)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
            if not _alive(pid):
                return
            time.sleep(0.05)


class _Server:
    """A server process group, stopped and started again on the same port at will."""

    what = "server"

    def __init__(self, image: Path, *, name: str, readonly: bool, port: int | None) -> None:
        self.image = image
        self.name = name
        self.readonly = readonly
        self.fixed_port = port is not None
        self.port = port or free_port()
        self._pid: int | None = None
        self._port_lock: int | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix=f"{PREFIX}{self.what}-")
        self.log = Path(self._workdir.name) / "log"  # the server's output; removed with the server

    def _launch(self) -> int:
        """Start the server; return the pid that leads its process group."""
        raise NotImplementedError

    def start(self) -> None:
        if self.running:
            return
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            # Another server there would take the guest's connections (a fixed port, e.g. NBD's 10809).
            raise RuntimeError(f"{self.what}: 127.0.0.1:{self.port} is already in use")
        self._pid = self._launch()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if not self.running or time.monotonic() > deadline:
                self.stop()
                output = self.log.read_text(errors="replace").strip()
                raise RuntimeError(f"{self.what}: not listening on 127.0.0.1:{self.port} after {START_TIMEOUT:g} s: {output}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server and every connection it serves (the guest sees the server go down)."""
        if self._pid is not None:
            _stop_group(self._pid)
        self._pid = None

    @property
    def running(self) -> bool:
        return self._pid is not None and _alive(self._pid)

    def __enter__(self) -> Self:
        try:
            if self.fixed_port:
                self._port_lock = lock_port(self.port)
            self.start()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()
        self._release()

    def _release(self) -> None:
        self._workdir.cleanup()
        if self._port_lock is not None:
            os.close(self._port_lock)
        self._port_lock = None

    def nbd_root(self, fstype: str = "auto") -> str:
        """This export in dracut's own syntax (95nbd): nbd:SERVER:PORT:FSTYPE:FLAGS:NBDOPTS, for root=."""
        return f"nbd:{GUEST_HOST}:{self.port}:{fstype}:ro:-name,{self.name}"

    def url(self) -> str:
        """The export as an NBD URI for the guest (kiwi-overlay's root=overlay:nbd://...)."""
        return f"nbd://{GUEST_HOST}:{self.port}/{self.name}"


class NbdServer(_Server):
    """nbd-server 3.24 with one named export, configured by a private config file.

    It runs as the daemon it wants to be: in the foreground (-d) it serves a single connection.
    """

    what = "nbd-server"

    def __init__(
        self, image: Path, *, name: str = "root", readonly: bool = True, port: int | None = None, config: str | None = None
    ) -> None:
        """CONFIG: the whole config file instead of the generated one (KIWI's page's); it must say NAME, PORT, READONLY."""
        super().__init__(image, name=name, readonly=readonly, port=port)
        self.config = Path(self._workdir.name) / "config"
        self.config.write_text(
            config
            or f"[generic]\nport = {self.port}\nlistenaddr = 127.0.0.1\nallowlist = true\n"
            f"[{name}]\nexportname = {image}\nreadonly = {str(readonly).lower()}\n"
        )
        self._pidfile = Path(self._workdir.name) / "pid"

    def _launch(self) -> int:
        self._pidfile.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            # The parent returns once the daemon (its own session: pid = process group) runs.
            subprocess.run(
                ["nbd-server", "-C", self.config, "-p", self._pidfile], stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._pidfile.exists() or not self._pidfile.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nbd-server wrote no pid file: {self.log.read_text(errors='replace').strip()}")
            time.sleep(0.02)
        return int(self._pidfile.read_text())


class QemuNbd(_Server):
    """qemu-nbd with one named export that takes several connections at once."""

    what = "qemu-nbd"

    def __init__(
        self, image: Path, *, name: str = "root", readonly: bool = True, port: int | None = None, connections: int = 8, trace: bool = False
    ) -> None:
        super().__init__(image, name=name, readonly=readonly, port=port)
        self.connections = connections
        self.trace = trace  # qemu-nbd's nbd_* trace events (every request, with its type) into self.log

    def _launch(self) -> int:
        argv = [
            "qemu-nbd",
            "--bind=127.0.0.1",
            f"--port={self.port}",
            f"--export-name={self.name}",
            "--format=raw",
            "--persistent",
            f"--shared={self.connections}",
            *(["--read-only"] if self.readonly else []),
            *(["--trace=nbd_*"] if self.trace else []),
            str(self.image),
        ]
        with self.log.open("ab") as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True).pid


@dataclass(frozen=True)
class AoeNames:
    namespace: str
    bridge: str
    tap: str
    veth_host: str
    veth_target: str

    @classmethod
    def fresh(cls) -> AoeNames:
        tag = secrets.token_hex(2)  # interface names have at most 15 characters
        return cls(f"{PREFIX}aoe{tag}", f"{PREFIX}br{tag}", f"{PREFIX}tap{tag}", f"{PREFIX}vh{tag}", f"{PREFIX}vt{tag}")


class AoeTarget:
    """vblade exporting IMAGE as eSHELF.SLOT behind a bridge that a guest's tap joins.

    DAEMON runs it as KIWI's page does, `vbladed SHELF SLOT IFACE IMAGE` (vblade in the background,
    its output to syslog through logger); removing the target ends every process in its namespace.
    """

    def __init__(self, image: Path, *, shelf: int = 0, slot: int = 1, readonly: bool = True, daemon: bool = False) -> None:
        self.image = image
        self.shelf = shelf
        self.slot = slot
        self.readonly = readonly
        self.daemon = daemon
        self.names = AoeNames.fresh()
        self._vblade: subprocess.Popen[bytes] | None = None

    @property
    def tap(self) -> str:
        return self.names.tap

    @property
    def bridge(self) -> str:
        return self.names.bridge

    @property
    def target(self) -> str:
        return f"e{self.shelf}.{self.slot}"

    def __enter__(self) -> Self:
        try:
            self._create()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._remove()

    def _create(self) -> None:
        n = self.names
        run(["ip", "netns", "add", n.namespace])
        run(["ip", "link", "add", n.bridge, "type", "bridge"])
        run(["ip", "tuntap", "add", "dev", n.tap, "mode", "tap"])
        run(["ip", "link", "add", n.veth_host, "type", "veth", "peer", "name", n.veth_target, "netns", n.namespace])
        for link in (n.bridge, n.tap, n.veth_host):
            # No addresses and no IPv6 on the host side: the only traffic here is the guest's.
            Path(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6").write_text("1\n")
        for port in (n.tap, n.veth_host):
            run(["ip", "link", "set", port, "master", n.bridge])
            run(["ip", "link", "set", port, "up"])
        run(["ip", "link", "set", n.bridge, "up"])
        run(["ip", "-n", n.namespace, "link", "set", n.veth_target, "up"])
        argv = ["ip", "netns", "exec", n.namespace, "vbladed" if self.daemon else "vblade", *(["-r"] if self.readonly else [])]
        argv += [str(self.shelf), str(self.slot), n.veth_target, str(self.image)]
        if self.daemon:
            run(argv)
            deadline = time.monotonic() + START_TIMEOUT
            while not any(Path(f"/proc/{pid}/comm").read_text().strip() == "vblade" for pid in self._namespace_pids()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vbladed: no vblade running in {n.namespace} after {START_TIMEOUT:g} s")
                time.sleep(0.05)
            return
        with tempfile.TemporaryFile() as log:
            self._vblade = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            time.sleep(0.2)  # vblade opens its socket at once; a quick exit means bad arguments
            if self._vblade.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"vblade exited with status {self._vblade.returncode}: {log.read().decode(errors='replace').strip()}")

    def _namespace_pids(self) -> list[int]:
        out = run(["ip", "netns", "pids", self.names.namespace], check=False, capture=True).stdout
        return [int(pid) for pid in out.split()]

    def _remove(self) -> None:
        if self._vblade is not None:
            _stop_group(self._vblade.pid)
        self._vblade = None
        for pid in self._namespace_pids():  # vbladed's vblade and logger
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        n = self.names
        for link in (n.tap, n.veth_host, n.bridge):
            run(["ip", "link", "delete", link], check=False, capture=True)
        run(["ip", "netns", "delete", n.namespace], check=False, capture=True)
