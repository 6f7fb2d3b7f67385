"""A VLAN for a guest on a host without 802.1Q: a one-port tagging switch in user space.

The host kernel has no 8021q module and its bridges no VLAN filtering (facts.md), so the switch is
this process: the guest's NIC is a QEMU `dgram` netdev on a Unix datagram socket, and a thread
passes frames between that socket and a tap device inside a network namespace of the test's own.
Frames from the guest pass only when tagged with VID (the tag is removed); frames to the guest get
the tag. Everything else is dropped and counted, so a guest that does not tag reaches nothing.
Behind the tap, in the namespace: SERVER_ADDRESS/24, dnsmasq's DHCP, qemu-nbd on NBD's port.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import select
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from kiwi_overlay.run import run
from tests.boot.servers import PREFIX, START_TIMEOUT, stop_group

SERVER_ADDRESS = "10.42.0.1"  # inside the namespace only
NBD_PORT = 10809
TPID = 0x8100
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


class VlanSegment:
    """The namespace behind the switch, with DHCP and an NBD export of IMAGE named NAME, for a guest tagging VID."""

    def __init__(self, image: Path, *, vid: int, name: str = "root") -> None:
        self.image = image
        self.vid = vid
        self.name = name
        tag = secrets.token_hex(2)
        self.namespace = f"{PREFIX}vlan{tag}"
        self.tap = f"{PREFIX}vt{tag}"
        self._workdir = tempfile.TemporaryDirectory(prefix=f"{PREFIX}vlan-")
        work = Path(self._workdir.name)
        self.guest_socket = work / "guest.sock"  # QEMU's end, bound by QEMU
        self._switch_socket = work / "switch.sock"
        self.log = work / "servers.log"
        self.tagged = 0  # frames from the guest with the right tag, passed on
        self.dropped = 0  # frames from the guest without it
        self._processes: list[int] = []
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._tap_fd = -1
        self._socket: socket.socket | None = None

    def netdev(self) -> str:
        """The QEMU -netdev backend for the guest's NIC (Guest(netdevs=(...,)))."""
        return f"dgram,local.type=unix,local.path={self.guest_socket},remote.type=unix,remote.path={self._switch_socket}"

    def url(self) -> str:
        return f"nbd://{SERVER_ADDRESS}:{NBD_PORT}/{self.name}"

    def __enter__(self) -> Self:
        try:
            self._create()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._remove()

    def _in_namespace(self, *argv: str | Path) -> list[str | Path]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def _create(self) -> None:
        run(["ip", "netns", "add", self.namespace])
        # The tap is made here (its file descriptor is the switch's port), then moved into the namespace.
        self._tap_fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(self._tap_fd, TUNSETIFF, struct.pack("16sH22x", self.tap.encode(), IFF_TAP | IFF_NO_PI))
        run(["ip", "link", "set", self.tap, "netns", self.namespace])
        run(self._in_namespace("sysctl", "-qw", f"net.ipv6.conf.{self.tap}.disable_ipv6=1"))
        run(["ip", "-n", self.namespace, "addr", "add", f"{SERVER_ADDRESS}/24", "dev", self.tap])
        run(["ip", "-n", self.namespace, "link", "set", self.tap, "up"])
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self._switch_socket))
        self._thread = threading.Thread(target=self._switch, name=f"vlan switch {self.vid}", daemon=True)
        self._thread.start()
        prefix = SERVER_ADDRESS.rpartition(".")[0]
        dnsmasq = ["dnsmasq", "--no-daemon", "--no-ping", "--conf-file=/dev/null", "--port=0", "--log-facility=-", "--log-dhcp"]
        dnsmasq += [f"--interface={self.tap}", "--bind-interfaces", f"--dhcp-range={prefix}.50,{prefix}.99,255.255.255.0,1h"]
        dnsmasq += [f"--dhcp-leasefile={Path(self._workdir.name) / 'leases'}"]
        nbd = ["qemu-nbd", f"--bind={SERVER_ADDRESS}", f"--port={NBD_PORT}", f"--export-name={self.name}", "--format=raw"]
        nbd += ["--persistent", "--shared=8", "--read-only", str(self.image)]
        with self.log.open("ab") as log:
            for argv in (dnsmasq, nbd):
                process = subprocess.Popen(
                    self._in_namespace(*argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
                self._processes.append(process.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while f":{NBD_PORT}" not in run(self._in_namespace("ss", "-Hltn"), capture=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"qemu-nbd not listening in {self.namespace}: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def _switch(self) -> None:
        assert self._socket is not None
        tag = struct.pack("!HH", TPID, self.vid)
        while True:
            readable, _, _ = select.select([self._tap_fd, self._socket, self._stop_r], [], [])
            if self._stop_r in readable:
                return
            if self._socket in readable:
                frame = self._socket.recv(65536)
                if frame[12:14] == tag[:2] and struct.unpack("!H", frame[14:16])[0] & 0xFFF == self.vid:
                    self.tagged += 1
                    os.write(self._tap_fd, frame[:12] + frame[16:])
                else:
                    self.dropped += 1
            if self._tap_fd in readable:
                frame = os.read(self._tap_fd, 65536)
                with contextlib.suppress(OSError):  # no guest (yet, or any more)
                    self._socket.sendto(frame[:12] + tag + frame[12:], str(self.guest_socket))

    def _remove(self) -> None:
        for pid in self._processes:
            stop_group(pid)
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=10)
        for fd in (self._stop_r, self._stop_w, self._tap_fd):
            if fd >= 0:
                os.close(fd)
        if self._socket is not None:
            self._socket.close()
        run(["ip", "netns", "delete", self.namespace], check=False, capture=True)
        self._workdir.cleanup()
