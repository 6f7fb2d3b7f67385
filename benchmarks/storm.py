"""6. Boot storm: N clients at once against one nbd-server on loopback (the morning after a power cut).

Each kiwi-overlay client (a thread here, as in the boot: connect.with_retry + open_export) negotiates
and reads the whole export with NBD_CMD_READ, one request in flight, then disconnects. Threads
start within a millisecond of each other: the worst case for a server's accept queue. The
alternative: N nbd-client processes, negotiation only (without the nbd module on this host they
cannot read), compared with N `kiwi-overlay nbd info` processes: spawning staggers both alike.
Per client: success, and the time from the common start.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.negotiation import KIWI_OVERLAY
from benchmarks.stats import median, millis, percentile, ratio
from kiwi_overlay.config import NbdRoot
from kiwi_overlay.nbd import connect, protocol, root_from_uri
from tests.boot.servers import NbdServer

CMD_READ = 0
SIMPLE_REPLY_MAGIC = 0x67446698
CHUNK = 256 * 1024
TIMEOUT = 120.0  # per client: the boot's default rd.root.overlay.timeout is longer


@dataclass(frozen=True)
class Storm:
    label: str
    clients: int
    times: tuple[float, ...]  # of the clients that succeeded
    failures: tuple[str, ...]
    wall: float

    @property
    def success_rate(self) -> float:
        return len(self.times) / self.clients


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    view = bytearray(size)
    got = 0
    while got < size:
        received = sock.recv_into(memoryview(view)[got:], size - got)
        if not received:
            raise ConnectionError("server closed the connection")
        got += received
    return bytes(view)


def read_export(sock: socket.socket, size: int) -> int:
    """Read SIZE bytes from the start of the export in CHUNK requests; returns the bytes read."""
    for handle, offset in enumerate(range(0, size, CHUNK)):
        length = min(CHUNK, size - offset)
        sock.sendall(struct.pack(">IHHQQI", protocol.REQUEST_MAGIC, 0, CMD_READ, handle, offset, length))
        magic, error, reply_handle = struct.unpack(">IIQ", _recv_exact(sock, 16))
        if magic != SIMPLE_REPLY_MAGIC or error or reply_handle != handle:
            raise ConnectionError(f"read at {offset}: reply magic {magic:#x}, error {error}, handle {reply_handle}")
        _recv_exact(sock, length)
    return size


def kiwi_client(root: NbdRoot, *, read: bool) -> None:
    sock, info = connect.with_retry(lambda deadline: connect.open_export(root, deadline=deadline, context=None), root=root, timeout=TIMEOUT)
    try:
        sock.settimeout(TIMEOUT)
        if read:
            read_export(sock, info.size)
        protocol.disconnect(protocol.Wire(sock, peer=root.address, deadline=time.monotonic() + 10))
    finally:
        sock.close()


def _run(clients: int, client: Callable[[], None]) -> tuple[tuple[float, ...], tuple[str, ...], float]:
    start = threading.Barrier(clients + 1)
    began = [0.0]

    def one() -> float:
        start.wait()
        client()
        return time.perf_counter() - began[0]

    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(one) for _ in range(clients)]
        began[0] = time.perf_counter()
        start.wait()
        times, failures = [], []
        for future in futures:
            try:
                times.append(future.result())
            except Exception as error:
                failures.append(str(error) or type(error).__name__)
    return tuple(times), tuple(failures), time.perf_counter() - began[0]


def process(argv: list[str], *, expect: str) -> None:
    """Run one client process to its end; it failed unless EXPECT is in its output."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    output = (result.stdout + result.stderr).strip()
    if expect not in output:
        raise RuntimeError(output.splitlines()[-1] if output else f"no output, exit status {result.returncode}")


def measure(*, sizes: Sequence[int], image: Path) -> list[Storm]:
    storms = []
    with NbdServer(image) as server:
        uri = f"nbd://127.0.0.1:{server.port}/{server.name}"
        root = root_from_uri(uri)
        kinds: list[tuple[str, Callable[[], None]]] = [
            ("kiwi-overlay threads: negotiate + read the export", lambda: kiwi_client(root, read=True)),
            ("kiwi-overlay threads: negotiate only", lambda: kiwi_client(root, read=False)),
        ]
        # As processes, both clients start as staggered as spawning them makes them.
        kinds.append(
            ("kiwi-overlay nbd info processes: negotiate only", lambda: process([str(KIWI_OVERLAY), "nbd", "info", uri], expect="size:"))
        )
        if not Path("/sys/module/nbd").exists():
            argv = ["nbd-client", "127.0.0.1", str(server.port), "-N", server.name, "/dev/nbd0"]
            kinds.append(("nbd-client processes: negotiate only", lambda: process(argv, expect="size =")))
        for clients in sizes:
            for label, client in kinds:
                times, failures, wall = _run(clients, client)
                storms.append(Storm(label, clients, times, failures, wall))
                time.sleep(1)  # nbd-server reaps its children
    return storms


def table(storms: list[Storm]) -> str:
    rows = ["| clients | what | succeeded | median | p99 | all done | median / nbd-client's |", "|---|---|---|---|---|---|---|"]
    for storm in storms:
        reference = next((s for s in storms if s.clients == storm.clients and s.label.startswith("nbd-client")), None)
        compare = ratio(median(storm.times), median(reference.times)) if reference and "only" in storm.label else ""
        rows.append(
            f"| {storm.clients} | {storm.label} | {len(storm.times)}/{storm.clients} ({storm.success_rate:.0%}) "
            f"| {millis(median(storm.times))} | {millis(percentile(storm.times, 0.99))} | {millis(storm.wall)} | {compare} |"
        )
    failures = sorted({f"- {storm.clients} × {storm.label}: {failure}" for storm in storms for failure in storm.failures})
    return "\n".join(rows + (["", *failures[:10]] if failures else []))
