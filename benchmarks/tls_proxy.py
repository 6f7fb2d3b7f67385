"""Extra (issue 17, item 5): sequential NBD reads on loopback, plain against TLS through the supervisor's proxy.

Native, on the host (the host has no nbd module, and in a TCG guest the proxy's crypto would be
emulated). qemu-nbd serves a zero-padded image plain and with TLS (server certificate made here);
each client reads the whole export with NBD_CMD_READ, CHUNK bytes, one in flight (benchmarks.storm):
- plain: the TCP socket, as the kernel gets it for nbd://;
- TLS proxy: the end of the socket pair that the supervisor hands the kernel for nbds://
  (kiwi_overlay.nbd.supervisor.TlsProxy copying to and from the TLS socket);
- TLS socket itself: the same requests over the SSL socket in this process: no proxy hop, the crypto
  only. This is roughly what kernel TLS would leave (the kernel socket would carry the records).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.stats import median, ratio, spread
from benchmarks.storm import read_export
from benchmarks.throughput import padded_image
from kiwi_overlay.nbd import connect, root_from_uri
from kiwi_overlay.nbd.supervisor import TlsProxy
from tests.boot.servers import QemuNbd
from tests.nbd_servers import make_ca, sign

Reader = Callable[[socket.socket], socket.socket]
VARIANTS: dict[str, tuple[bool, Reader]] = {
    "plain NBD (nbd://)": (False, lambda sock: sock),
    "TLS through the proxy (nbds://, what the kernel reads)": (True, lambda sock: TlsProxy(sock).kernel_end),
    "TLS socket read directly (no proxy hop: about what kernel TLS would give)": (True, lambda sock: sock),
}


CIPHERS: set[str] = set()  # the TLS version and cipher the connections negotiated


def _read_once(url: str, ca: Path | None, reader: Reader) -> float:
    """MB/s of one whole-export read through READER's socket."""
    root = root_from_uri(url, tls_ca=ca)
    context = connect.tls_context(root)
    sock, info = connect.open_export(root, deadline=time.monotonic() + 30, context=context)
    try:
        sock.settimeout(60)
        if isinstance(sock, ssl.SSLSocket) and (cipher := sock.cipher()):
            CIPHERS.add(f"{cipher[1]} {cipher[0]}")
        target = reader(sock)
        started = time.perf_counter()
        read_export(target, info.size)
        return info.size / (time.perf_counter() - started) / 1e6
    finally:
        sock.close()


def measure(*, runs: int, image: Path, size_mb: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {label: [] for label in VARIANTS}
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
                    url = f"nbds://127.0.0.1:{tls.port}/root" if use_tls else f"nbd://127.0.0.1:{plain.port}/root"
                    results[label].append(_read_once(url, ca[0] if use_tls else None, reader))
    return results


def table(results: dict[str, list[float]], *, size_mb: int) -> str:
    reference_values = next(iter(results.values()))
    reference = median(reference_values)
    rows = [f"| client ({size_mb} MiB from qemu-nbd on 127.0.0.1) | median | range | / plain |", "|---|---|---|---|"]
    for label, values in results.items():
        rows.append(f"| {label} | **{median(values) or 0:.0f} MB/s** | {spread(values, 'MB/s', 0)} | {ratio(median(values), reference)} |")
    return "\n".join([*rows, "", f"{len(reference_values)} reads each, {ssl.OPENSSL_VERSION}, {', '.join(sorted(CIPHERS))}."])


if __name__ == "__main__":
    import argparse

    from tests.boot.rootfs import root_image

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=256)
    args = parser.parse_args()
    print(table(measure(runs=args.runs, image=root_image("squashfs"), size_mb=args.size_mb), size_mb=args.size_mb))
