"""6. Boot storm: N clients at once against one nbd-server on loopback (the morning after a power cut).

Threads: each kiwi-overlay client (connect.with_retry + open_export, as in the boot) negotiates and
reads the whole export with NBD_CMD_READ, one request in flight, then disconnects. Threads start
within a millisecond of each other: the worst case for a server's accept queue.

Processes with processes: N kiwi-overlay client processes (benchmarks.storm_client: the boot's
connect.with_retry + open_export + NBD_CMD_DISC) and N nbd-client processes (negotiation only:
without the nbd module on this host they fail right after it). Each process starts, opens a FIFO,
reports that it is ready (interpreter and imports done; for nbd-client, the shell that will exec
it) and blocks reading the FIFO; closing its only writer releases them all at once. In a storm every client is
its own machine: the interpreter start is not the shared server's load, so it is left out for both.
Per client: success, and the time from the release to its negotiated export: kiwi-overlay's
client reports it (CLOCK_MONOTONIC) and lives on until the storm is over, as the boot's NBD
supervisor does; nbd-client's is when its `size =` line arrives (it prints it once negotiated, then
fails to attach and exits). One loop reads every client's output as it comes.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.stats import median, millis, percentile, ratio
from kiwi_overlay.config.plan import NbdRoot
from kiwi_overlay.nbd import connect, protocol, root_from_uri
from tests.boot.servers import NbdServer

CMD_READ = 0
SIMPLE_REPLY_MAGIC = 0x67446698
CHUNK = 256 * 1024
TIMEOUT = 60.0  # per client


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


def processes(argvs: Sequence[list[str]], *, expect: str, release: Path, done: Path) -> tuple[tuple[float, ...], tuple[str, ...], float]:
    """Start every ARGV (each opens the FIFO RELEASE, prints `ready` and reads it), release them together, time each to EXPECT.

    A client succeeded once a line of its output holds EXPECT; its time is the CLOCK_MONOTONIC
    stamp the line carries (`at monotonic S`), or else when the line arrived. Clients that wait on
    the FIFO DONE are let go when every client has succeeded or ended; any still running after
    TIMEOUT are killed.
    """
    # Held open for writing while the clients start: their reads block until it is closed (EOF for all at once).
    writers = [os.open(release, os.O_RDWR)]
    done_writer = os.open(done, os.O_RDWR)

    def let_go() -> None:
        os.close(writers.pop())

    clients: list[subprocess.Popen[bytes]] = []
    try:
        clients += [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for argv in argvs]
        for client in clients:
            assert client.stdout is not None
            line = client.stdout.readline().strip()
            if line != b"ready":
                raise RuntimeError(f"a storm client did not start: {line.decode(errors='replace') or 'no output'}")
        times, failures, began = _timed(clients, expect=expect.encode(), release=let_go)
        return times, failures, time.monotonic() - began
    finally:
        os.close(done_writer)
        if writers:  # not released: a client did not start
            let_go()
        for client in clients:
            if client.poll() is None:
                client.kill()
            client.wait()
            if client.stdout is not None:
                client.stdout.close()


def _timed(
    clients: Sequence[subprocess.Popen[bytes]], *, expect: bytes, release: Callable[[], None]
) -> tuple[tuple[float, ...], tuple[str, ...], float]:
    """RELEASE() the CLIENTS and read their output until each showed EXPECT or ended: (times, failures, release time)."""
    outputs = {client.pid: b"" for client in clients}
    times: dict[int, float] = {}
    ended: set[int] = set()
    with selectors.DefaultSelector() as selector:
        for client in clients:
            assert client.stdout is not None
            selector.register(client.stdout, selectors.EVENT_READ, client)
        began = time.monotonic()
        release()
        while len(set(times) | ended) < len(clients) and time.monotonic() < began + TIMEOUT:
            for key, _ in selector.select(timeout=1.0):
                pid = key.data.pid
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    ended.add(pid)
                    continue
                outputs[pid] += chunk
                whole_lines = outputs[pid].rpartition(b"\n")[0].splitlines()
                line = next((line for line in whole_lines if expect in line), None)
                if line is not None and pid not in times:
                    stamp = re.search(rb"at monotonic ([\d.]+)", line)
                    times[pid] = float(stamp[1]) - began if stamp else time.monotonic() - began
    failures = []
    for client in clients:
        if client.pid not in times:
            lines = outputs[client.pid].decode(errors="replace").strip().splitlines()
            failures.append(lines[-1] if client.pid in ended and lines else f"no result within {TIMEOUT:g} s (killed)")
    return tuple(times.values()), tuple(failures), began


def measure(*, sizes: Sequence[int], image: Path) -> list[Storm]:
    storms = []
    with NbdServer(image) as server, tempfile.TemporaryDirectory(prefix="ko-storm-") as scratch:
        uri = f"nbd://127.0.0.1:{server.port}/{server.name}"
        root = root_from_uri(uri)
        release, done = Path(scratch) / "release", Path(scratch) / "done"
        os.mkfifo(release)
        os.mkfifo(done)
        kiwi_argv = [sys.executable, "-m", "benchmarks.storm_client", str(release), str(done), uri]
        # The shell waits on the FIFO, then becomes nbd-client.
        shell = 'exec 3< "$1"; shift; echo ready; read -r _ <&3; exec 3<&-; exec "$@"'
        nbd_argv = ["sh", "-c", shell, "sh", str(release), "nbd-client", "127.0.0.1", str(server.port), "-N", server.name, "/dev/nbd0"]
        for clients in sizes:
            for label, client in (
                ("kiwi-overlay threads: negotiate + read the export", lambda: kiwi_client(root, read=True)),
                ("kiwi-overlay threads: negotiate only", lambda: kiwi_client(root, read=False)),
            ):
                times, failures, wall = _run(clients, client)
                storms.append(Storm(label, clients, times, failures, wall))
                time.sleep(1)  # nbd-server reaps its children
            kinds = [("kiwi-overlay processes: negotiate only", kiwi_argv, "negotiated")]
            if not Path("/sys/module/nbd").exists():  # else nbd-client would attach a device
                kinds.append(("nbd-client processes: negotiate only", nbd_argv, "size ="))
            for label, argv, expect in kinds:
                times, failures, wall = processes([argv] * clients, expect=expect, release=release, done=done)
                storms.append(Storm(label, clients, times, failures, wall))
                time.sleep(1)
    return storms


def table(storms: list[Storm]) -> str:
    rows = [
        "| clients | what | succeeded | median | p99 | all done | p99 / nbd-client's |",
        "|---|---|---|---|---|---|---|",
    ]
    for storm in storms:
        reference = next((s for s in storms if s.clients == storm.clients and s.label.startswith("nbd-client")), None)
        compare = (
            ratio(percentile(storm.times, 0.99), percentile(reference.times, 0.99)) if reference and "processes" in storm.label else ""
        )
        rows.append(
            f"| {storm.clients} | {storm.label} | {len(storm.times)}/{storm.clients} ({storm.success_rate:.0%}) "
            f"| {millis(median(storm.times))} | {millis(percentile(storm.times, 0.99))} | {millis(storm.wall)} | {compare} |"
        )
    failures = sorted({f"- {storm.clients} × {storm.label}: {failure}" for storm in storms for failure in storm.failures})
    return "\n".join(rows + (["", *failures[:10]] if failures else []))
