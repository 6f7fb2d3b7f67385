"""Real NBD servers on loopback for the tests: nbd-server, qemu-nbd (plain and TLS), and a scripted hostile one."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

IMAGE_SIZE = 4 << 20
FIRST_SECTOR = b"kiwi-overlay nbd test image\n".ljust(512, b".")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    for _ in range(1000):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)
    raise RuntimeError(f"nothing listens on port {port}")


def make_image(path: Path) -> Path:
    with path.open("wb") as image:
        image.write(FIRST_SECTOR)
        image.truncate(IMAGE_SIZE)
    return path


@contextmanager
def nbd_server(directory: Path, *, port: int | None = None) -> Iterator[int]:
    """nbd-server 3.24 with exports `rootfs` (read-only) and `scratch`; yields its port."""
    port = port or free_port()
    image = make_image(directory / "rootfs.img") if not (directory / "rootfs.img").exists() else directory / "rootfs.img"
    pid_file = directory / "nbd-server.pid"
    pid_file.unlink(missing_ok=True)
    config = directory / "nbd-server.conf"
    config.write_text(
        "[generic]\n"
        "user = root\ngroup = root\n"
        f"port = {port}\nlistenaddr = 127.0.0.1\n"
        "allowlist = true\n"
        f"[rootfs]\nexportname = {image}\nreadonly = true\n"
        f"[scratch]\nexportname = {image}\n"
    )
    # Without -d, nbd-server forks per client and serves many; -d would serve a single one.
    subprocess.run(["nbd-server", "-C", str(config), "-p", str(pid_file)], check=True, capture_output=True)
    try:
        wait_for_port(port)
        yield port
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(500):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.01)


@contextmanager
def qemu_nbd(image: Path, *, name: str = "rootfs", extra: tuple[str, ...] = ()) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [
            "qemu-nbd",
            "--persistent",
            "--shared=0",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "-x",
            name,
            "-f",
            "raw",
            "--read-only",
            *extra,
            str(image),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}-key.pem", directory / f"{name}-cert.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}")
    return cert, key


def sign(directory: Path, ca: tuple[Path, Path], name: str, *, san: str, usage: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / f"{name}{suffix}" for suffix in ("-key.pem", ".csr", "-cert.pem", ".ext"))
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
    return cert, key


def qemu_nbd_tls(directory: Path) -> tuple[Path, tuple[str, ...]]:
    """A CA and a server certificate for 127.0.0.1, made in DIRECTORY: the CA's certificate and qemu-nbd's TLS options."""
    ca = make_ca(directory, "ca")
    server = sign(directory, ca, "server", san="IP:127.0.0.1", usage="serverAuth")
    creds = directory / "creds"
    creds.mkdir()
    for source, name in ((ca[0], "ca-cert.pem"), (server[0], "server-cert.pem"), (server[1], "server-key.pem")):
        (creds / name).write_bytes(source.read_bytes())
    return ca[0], ("--object", f"tls-creds-x509,id=tls0,dir={creds},endpoint=server,verify-peer=off", "--tls-creds", "tls0")


class Hostile:
    """A TCP server on loopback that runs SCRIPT(conn) for each client, in a thread."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.script = script
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with suppress(OSError):
            self.script(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            conn.close()


NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9


def recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def greeting(conn: socket.socket, flags: int = 3) -> None:
    conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, flags))
    recv_exact(conn, 4)


def read_option(conn: socket.socket) -> tuple[int, bytes]:
    _, option, length = struct.unpack(">QII", recv_exact(conn, 16))
    return option, recv_exact(conn, length)


def reply(conn: socket.socket, option: int, kind: int, data: bytes = b"", *, magic: int = REPLY_MAGIC, length: int | None = None) -> None:
    conn.sendall(struct.pack(">QIII", magic, option, kind, len(data) if length is None else length) + data)
