"""Extra (issue 17, item 5): sequential NBD reads on loopback, plain against TLS through the supervisor's proxy.

Native, on the host (the host has no nbd module, and in a TCG guest the proxy's crypto would be
emulated). qemu-nbd serves a zero-padded image plain and with TLS (server certificate made here);
each client reads the whole export with NBD_CMD_READ, CHUNK bytes, one in flight (benchmarks.storm):
- plain: the TCP socket, as the kernel gets it for nbd://;
- TLS proxy: the end of the socket pair that the supervisor hands the kernel for nbds://
  (kiwi_overlay.nbd.tls_proxy.TlsProxy copying to and from the TLS socket);
- TLS socket itself: the same requests over the SSL socket in this process: no proxy hop, the crypto
  only. This is roughly what kernel TLS would leave (the kernel socket would carry the records).
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.stats import median, ratio, seconds, spread
from benchmarks.storm import read_export
from benchmarks.throughput import padded_image
from kiwi_overlay.nbd import connect, root_from_uri
from kiwi_overlay.nbd.tls_proxy import TlsProxy
from tests.boot.servers import GUEST_HOST, QemuNbd
from tests.nbd_servers import make_ca, sign

Reader = Callable[[socket.socket], socket.socket]
VARIANTS: dict[str, tuple[bool, Reader]] = {
    "plain NBD (nbd://)": (False, lambda sock: sock),
    "TLS through the proxy (nbds://, what the kernel reads)": (True, lambda sock: TlsProxy(sock).kernel_end),
    "TLS socket read directly (no proxy hop: about what kernel TLS would give)": (True, lambda sock: sock),
}
CIPHERS: set[str] = set()  # the TLS version and cipher the connections negotiated


@dataclass
class Samples:
    mb_per_second: list[float] = field(default_factory=list)  # wall clock: shared cores make it noisy
    client_cpu_per_gib: list[float] = field(default_factory=list)  # this process, proxy threads included
    server_cpu_per_gib: list[float] = field(default_factory=list)  # qemu-nbd


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _read_once(server: QemuNbd, ca: Path | None, reader: Reader, samples: Samples) -> None:
    """One whole-export read through READER's socket, added to SAMPLES."""
    root = root_from_uri(server.url().replace(GUEST_HOST, "127.0.0.1"), tls_ca=ca)
    context = connect.tls_context(root)
    sock, info = connect.open_export(root, deadline=time.monotonic() + 30, context=context)
    try:
        # Blocking, as the supervisor leaves it: the proxy's two threads share the SSL socket.
        if isinstance(sock, ssl.SSLSocket) and (cipher := sock.cipher()):
            CIPHERS.add(f"{cipher[1]} {cipher[0]}")
        target = reader(sock)
        assert server.pid is not None
        server_cpu, own_cpu, started = _process_cpu(server.pid), _own_cpu(), time.perf_counter()
        read_export(target, info.size)
        wall = time.perf_counter() - started
        gib = info.size / (1 << 30)
        samples.mb_per_second.append(info.size / wall / 1e6)
        samples.client_cpu_per_gib.append((_own_cpu() - own_cpu) / gib)
        samples.server_cpu_per_gib.append((_process_cpu(server.pid) - server_cpu) / gib)
    finally:
        sock.close()


def measure(*, runs: int, image: Path, size_mb: int) -> dict[str, Samples]:
    results = {label: Samples() for label in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="ko-bn-tls-") as scratch:
        directory = Path(scratch)
        ca = make_ca(directory, "ca")
        server = sign(directory, ca, "server", san="IP:127.0.0.1", usage="serverAuth")
        creds = directory / "qemu"
        creds.mkdir()
        for source, name in ((ca[0], "ca-cert.pem"), (server[0], "server-cert.pem"), (server[1], "server-key.pem")):
            shutil.copy(source, creds / name)
        padded = padded_image(image, size_mb=size_mb, output=directory / "padded.squashfs")
        with QemuNbd(padded) as plain, QemuNbd(padded, tls_dir=creds) as tls:
            for _ in range(runs):  # variants interleaved, so a busy moment hits all alike
                for label, (use_tls, reader) in VARIANTS.items():
                    _read_once(tls if use_tls else plain, ca[0] if use_tls else None, reader, results[label])
    return results


def table(results: dict[str, Samples], *, size_mb: int) -> str:
    reference = median(next(iter(results.values())).client_cpu_per_gib)
    rows = [
        f"| client ({size_mb} MiB, qemu-nbd on 127.0.0.1) | client CPU per GiB | / plain | client ceiling | server CPU per GiB | wall |",
        "|---|---|---|---|---|---|",
    ]
    for label, samples in results.items():
        cpu = median(samples.client_cpu_per_gib)
        ceiling = f"{(1 << 30) / cpu / 1e6:.0f} MB/s" if cpu else "n/m"
        rows.append(
            f"| {label} | **{seconds(cpu, 2)}** | {ratio(cpu, reference)} | {ceiling} | {seconds(median(samples.server_cpu_per_gib), 2)} "
            f"| {spread(samples.mb_per_second, 'MB/s', 0)} |"
        )
    runs = len(next(iter(results.values())).mb_per_second)
    return "\n".join([*rows, "", f"Medians of {runs} reads each; {ssl.OPENSSL_VERSION}, {', '.join(sorted(CIPHERS))}."])


if __name__ == "__main__":
    import argparse

    from tests.boot.rootfs import root_image

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=256)
    args = parser.parse_args()
    print(table(measure(runs=args.runs, image=root_image("squashfs"), size_mb=args.size_mb), size_mb=args.size_mb))
