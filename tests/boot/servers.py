"""The servers a guest boots from, started and removed by the harness.

- NbdServer / QemuNbd: an export on 127.0.0.1 (QemuNbd: or ::1) at a free port. A guest on QEMU user
  networking reaches it at GUEST_HOST (10.0.2.2; ::1 at GUEST_HOST6, fec0::2) and the same port. Both can be stopped and started again
  on the same port while a guest runs (server down / restarted scenarios).
- AoeTarget: vblade in a network namespace, its veth's host end and a tap device on one bridge;
  a guest gets the tap (`Guest(taps=(target.tap,))`). AoE frames never leave that bridge.
- DhcpSegment: the same bridge and namespace, with dnsmasq (DHCP, a root-path) and qemu-nbd there.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from kiwi_overlay.run import run

GUEST_HOST = "10.0.2.2"  # the host as seen from a guest on QEMU user networking
GUEST_HOST6 = "fec0::2"  # ... over IPv6 (router advertisements give the guest fec0::/64); reaches the host's ::1
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


def stop_group(pid: int) -> None:
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
    scheme = "nbd"  # of url(): "nbds" for a server that requires TLS

    def __init__(self, image: Path, *, name: str, readonly: bool, port: int | None, bind: str = "127.0.0.1") -> None:
        self.image = image
        self.bind = bind  # 127.0.0.1, or ::1 for a guest that reaches GUEST_HOST6
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
        with contextlib.suppress(OSError), socket.create_connection((self.bind, self.port), timeout=1):
            # Another server there would take the guest's connections (a fixed port, e.g. NBD's 10809).
            raise RuntimeError(f"{self.what}: {self.bind} port {self.port} is already in use")
        self._pid = self._launch()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection((self.bind, self.port), timeout=1).close()
                return
            except OSError:
                pass
            if not self.running or time.monotonic() > deadline:
                self.stop()
                output = self.log.read_text(errors="replace").strip()
                raise RuntimeError(f"{self.what}: not listening on {self.bind} port {self.port} after {START_TIMEOUT:g} s: {output}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server and every connection it serves (the guest sees the server go down)."""
        if self._pid is not None:
            stop_group(self._pid)
        self._pid = None

    @property
    def pid(self) -> int | None:
        """The server process (leader of its group) while it runs."""
        return self._pid

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

    def nbd_root(self, fstype: str = "auto", *, options: Sequence[str] = ()) -> str:
        """This export in dracut's own syntax (95nbd): nbd:SERVER:PORT:FSTYPE:FLAGS:NBDOPTS, for root=; OPTIONS go to nbd-client."""
        return f"nbd:{GUEST_HOST}:{self.port}:{fstype}:ro:" + ",".join(("-name", self.name, *options))

    def url(self) -> str:
        """The export as an NBD URI for the guest (kiwi-overlay's root=overlay:nbd://..., nbds:// with TLS)."""
        host = f"[{GUEST_HOST6}]" if ":" in self.bind else GUEST_HOST
        return f"{self.scheme}://{host}:{self.port}/{self.name}"


@dataclass(frozen=True)
class ServerTls:
    """A TLS server's files: its certificate and key, and the CA that client certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path


class NbdServer(_Server):
    """nbd-server 3.24 with one named export, configured by a private config file.

    It runs as the daemon it wants to be: in the foreground (-d) it serves a single connection.
    With TLS a client must STARTTLS before anything else (`force_tls`: 3.24 still served a plain
    client an export marked only `tlsonly`), and must present a certificate that CLIENT_CA signed
    (3.24 ends the session of a TLS client without one: "Error in the certificate").
    """

    what = "nbd-server"

    def __init__(
        self,
        image: Path,
        *,
        name: str = "root",
        readonly: bool = True,
        port: int | None = None,
        tls: ServerTls | None = None,
        config: str | None = None,
    ) -> None:
        """CONFIG: the whole config file instead of the generated one (KIWI's page's); it must say NAME, PORT, READONLY."""
        super().__init__(image, name=name, readonly=readonly, port=port)
        self.scheme = "nbds" if tls else "nbd"
        self.config = Path(self._workdir.name) / "config"
        generic = f"port = {self.port}\nlistenaddr = 127.0.0.1\nallowlist = true\n"
        export = f"exportname = {image}\nreadonly = {str(readonly).lower()}\n"
        if tls:
            generic += f"force_tls = true\ncertfile = {tls.cert}\nkeyfile = {tls.key}\ncacertfile = {tls.client_ca}\n"
            export += "tlsonly = true\n"
        self.config.write_text(config or f"[generic]\n{generic}[{name}]\n{export}")
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
        self,
        image: Path,
        *,
        name: str = "root",
        readonly: bool = True,
        port: int | None = None,
        connections: int = 8,
        trace: bool = False,
        tls_dir: Path | None = None,
        bind: str = "127.0.0.1",
    ) -> None:
        super().__init__(image, name=name, readonly=readonly, port=port, bind=bind)
        self.connections = connections
        # TLS_DIR holds server-cert.pem and server-key.pem (QEMU's names); no client certificate is asked for.
        self.tls_dir = tls_dir
        self.scheme = "nbds" if tls_dir else "nbd"
        self.trace = trace  # qemu-nbd's nbd_* trace events (every request, with its type) into self.log

    def _launch(self) -> int:
        argv = [
            "qemu-nbd",
            f"--bind={self.bind}",
            f"--port={self.port}",
            f"--export-name={self.name}",
            "--format=raw",
            "--persistent",
            f"--shared={self.connections}",
            *(["--read-only"] if self.readonly else []),
            *(["--trace=nbd_*"] if self.trace else []),
            *(
                ["--object", f"tls-creds-x509,id=tls0,dir={self.tls_dir},endpoint=server,verify-peer=off", "--tls-creds=tls0"]
                if self.tls_dir
                else []
            ),
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


class _Segment:
    """A namespace behind a veth and the tap a guest gets (`Guest(taps=(segment.tap,))`), on one bridge of their own.

    Subclasses start their servers in the namespace (`_start`) and end them (`stop`); leaving the
    block removes everything, also on errors.
    """

    def __init__(self) -> None:
        self.names = AoeNames.fresh()

    @property
    def tap(self) -> str:
        return self.names.tap

    @property
    def bridge(self) -> str:
        return self.names.bridge

    def __enter__(self) -> Self:
        try:
            self._make()
            self._start()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._remove()

    def _make(self) -> None:
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

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _remove(self) -> None:
        self.stop()
        n = self.names
        for link in (n.tap, n.veth_host, n.bridge):
            run(["ip", "link", "delete", link], check=False, capture=True)
        run(["ip", "netns", "delete", n.namespace], check=False, capture=True)


class AoeTarget(_Segment):
    """vblade exporting IMAGE as eSHELF.SLOT behind a bridge that a guest's tap joins.

    DAEMON runs it as KIWI's page does, `vbladed SHELF SLOT IFACE IMAGE` (vblade in the background,
    its output to syslog through logger); stop() ends every process in the target's namespace.
    """

    def __init__(self, image: Path, *, shelf: int = 0, slot: int = 1, readonly: bool = True, daemon: bool = False) -> None:
        super().__init__()
        self.image = image
        self.shelf = shelf
        self.slot = slot
        self.readonly = readonly
        self.daemon = daemon
        self._vblade: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"e{self.shelf}.{self.slot}"

    def _start(self) -> None:
        n = self.names
        argv = ["ip", "netns", "exec", n.namespace, "vbladed" if self.daemon else "vblade", *(["-r"] if self.readonly else [])]
        argv += [str(self.shelf), str(self.slot), n.veth_target, str(self.image)]
        if self.daemon:
            run(argv)
            deadline = time.monotonic() + START_TIMEOUT
            while "vblade" not in self._namespace_programs():
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

    def _namespace_programs(self) -> set[str]:
        """The names of the programs running in the namespace (one may end while it is looked at)."""
        names = set()
        for pid in self._namespace_pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        return names

    def pause(self, *, paused: bool = True) -> None:
        """Stop vblade in its tracks (SIGSTOP), or let it go on (PAUSED false): requests stay unanswered meanwhile."""
        assert self._vblade is not None, "pause() needs vblade started by the target (daemon=False)"
        os.kill(self._vblade.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def stop(self) -> None:
        """End vblade (the links stay): the target stops answering."""
        if self._vblade is not None:
            stop_group(self._vblade.pid)
        self._vblade = None
        for pid in self._namespace_pids():  # vbladed's vblade and its logger
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class DhcpSegment(_Segment):
    """dnsmasq (DHCP, with ROOT_PATH as option 17 when given) and qemu-nbd exporting IMAGE as NAME, in a
    namespace at SERVER_ADDRESS behind a bridge that a guest's tap joins (`Guest(user_net=False, taps=(segment.tap,))`)."""

    SERVER_ADDRESS = "10.43.0.1"  # inside the namespace only
    NBD_PORT = 10809

    def __init__(self, image: Path, *, root_path: str | None, name: str = "root") -> None:
        super().__init__()
        self.image = image
        self.root_path = root_path
        self.name = name
        self._workdir = tempfile.TemporaryDirectory(prefix=f"{PREFIX}dhcp-")
        self.log = Path(self._workdir.name) / "servers.log"
        self._processes: list[int] = []

    def url(self) -> str:
        return f"nbd://{self.SERVER_ADDRESS}:{self.NBD_PORT}/{self.name}"

    def _start(self) -> None:
        n = self.names
        run(["ip", "-n", n.namespace, "addr", "add", f"{self.SERVER_ADDRESS}/24", "dev", n.veth_target])
        prefix = self.SERVER_ADDRESS.rpartition(".")[0]
        dnsmasq = ["dnsmasq", "--no-daemon", "--no-ping", "--conf-file=/dev/null", "--port=0", "--log-facility=-", "--log-dhcp"]
        dnsmasq += [f"--interface={n.veth_target}", "--bind-interfaces", f"--dhcp-range={prefix}.50,{prefix}.99,255.255.255.0,1h"]
        dnsmasq += [f"--dhcp-leasefile={Path(self._workdir.name) / 'leases'}"]
        dnsmasq += [f"--dhcp-option=option:root-path,{self.root_path}"] if self.root_path else []
        nbd = ["qemu-nbd", f"--bind={self.SERVER_ADDRESS}", f"--port={self.NBD_PORT}", f"--export-name={self.name}", "--format=raw"]
        nbd += ["--persistent", "--shared=8", "--read-only", str(self.image)]
        with self.log.open("ab") as log:
            for argv in (dnsmasq, nbd):
                process = subprocess.Popen(
                    ["ip", "netns", "exec", n.namespace, *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
                self._processes.append(process.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while f":{self.NBD_PORT}" not in run(["ip", "netns", "exec", n.namespace, "ss", "-Hltn"], capture=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"qemu-nbd not listening in {n.namespace}: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        """End dnsmasq and qemu-nbd (the links stay)."""
        for pid in self._processes:
            stop_group(pid)
        self._processes = []

    def _remove(self) -> None:
        super()._remove()
        self._workdir.cleanup()
