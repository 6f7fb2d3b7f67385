"""Issue 14 items 10 and 11 on the host: fewer connections than asked, sub-second timeouts, a broken
stderr, and the TLS proxy on one thread. The kernel side (ioctl detach order) is in the QEMU suite.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from nbd_servers import FIRST_SECTOR, IMAGE_SIZE, make_ca, make_image, qemu_nbd, sign
from test_nbd_protocol import read_first_sector

from kiwi_overlay.nbd import genetlink, kernel, protocol, root_from_uri
from kiwi_overlay.nbd.supervisor import Request, Supervisor, TlsProxy


def request_for(uri: str, **options: object) -> Request:
    return Request(root=root_from_uri(uri, **options), timeout=20, device=None, state_dir=Path("/nonexistent"), log_to_kmsg=False)  # type: ignore[arg-type]


def test_fewer_connections_than_asked_fall_back_with_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 10: qemu-nbd --shared=2 advertises multi-conn but takes only 2 clients: 2 of 4, not a failed attach."""
    image = make_image(tmp_path / "rootfs.img")
    with qemu_nbd(image, extra=("--shared=2",)) as port:
        supervisor = Supervisor(request_for(f"nbd://127.0.0.1:{port}/rootfs", connections=4))
        socks = supervisor.first_connections()
        try:
            assert supervisor.info is not None and supervisor.info.multi_conn
            assert len(socks) == 2
            for sock in socks:
                assert read_first_sector(sock) == FIRST_SECTOR
        finally:
            for sock in socks:
                sock.close()
    err = capsys.readouterr().err
    assert f"kiwi-overlay: nbd://127.0.0.1:{port}/rootfs: the server accepted 2 of 4 connections; using 2 (" in err, err


@pytest.mark.parametrize(("seconds", "kernel_seconds"), [(0.4, 1), (0.5, 1), (1.2, 2), (30.0, 30)])
def test_sub_second_timeouts_never_become_zero(seconds: float, kernel_seconds: int) -> None:
    """Item 11: round(0.4) == 0 is 'no timeout' to the kernel; the timeout is rounded up instead."""
    config = kernel.Config(size=IMAGE_SIZE, block_size=512, server_flags=1, io_timeout=seconds, dead_conn_timeout=seconds, backend="b")
    message = genetlink.parse(kernel.build(kernel.CMD_CONNECT, index=0, config=config))
    timeouts = (message.get(kernel.ATTR_TIMEOUT), message.get(kernel.ATTR_DEAD_CONN_TIMEOUT))
    assert tuple(genetlink.unsigned(value or b"") for value in timeouts) == (kernel_seconds, kernel_seconds)
    assert kernel.kernel_seconds(seconds) == kernel_seconds


def test_logging_survives_a_broken_stderr() -> None:
    """Item 11: the supervisor's messages go to an inherited stderr whose reader may be gone (EPIPE)."""
    program = (
        "import os, sys\n"
        "from kiwi_overlay import log\n"
        "from kiwi_overlay.nbd.supervisor import Supervisor, Request\n"
        "read_end, write_end = os.pipe()\n"
        "os.close(read_end)\n"
        "os.dup2(write_end, 2)\n"
        "log.info('one')\n"
        "log.configure(debug=True, log_file=None)\n"
        "log.debug('two')\n"
        "supervisor = Supervisor.__new__(Supervisor)\n"
        "supervisor.kmsg = None\n"
        "supervisor.say('three')\n"
        "print('alive')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "alive\n"), result.stderr


def test_tls_proxy_uses_one_thread_and_carries_pipelined_requests(tmp_path: Path) -> None:
    """Item 11: one SSLSocket is driven from one thread only; many requests in flight both ways arrive intact."""
    ca = make_ca(tmp_path, "ca")
    server = sign(tmp_path, ca, "server", san="IP:127.0.0.1", usage="serverAuth")
    creds = tmp_path / "creds"
    creds.mkdir()
    for source, name in ((ca[0], "ca-cert.pem"), (server[0], "server-cert.pem"), (server[1], "server-key.pem")):
        (creds / name).write_bytes(source.read_bytes())
    image = make_image(tmp_path / "rootfs.img")
    with image.open("r+b") as handle:  # a pattern to check every block against
        handle.write(b"".join(struct.pack(">Q", block) * 512 for block in range(256)))
    extra = ("--object", f"tls-creds-x509,id=tls0,dir={creds},endpoint=server,verify-peer=off", "--tls-creds", "tls0")
    with qemu_nbd(image, extra=extra) as port:
        supervisor = Supervisor(request_for(f"nbds://127.0.0.1:{port}/rootfs", tls_ca=ca[0]))
        sock, _ = supervisor._open(supervisor.root.servers[0], time.monotonic() + 20)
        before = threading.active_count()
        proxy = TlsProxy(sock)
        assert threading.active_count() - before == 1
        kernel_end = proxy.kernel_end
        with kernel_end:
            requests = b"".join(
                struct.pack(">IHHQQI", protocol.REQUEST_MAGIC, 0, 0, handle, (handle % 256) * 4096, 4096) for handle in range(2000)
            )
            sender = threading.Thread(target=kernel_end.sendall, args=(requests,))
            sender.start()  # all 2000 requests go out while the answers come back
            answered = set()
            for _ in range(2000):  # replies may come in any order (NBD allows it, qemu-nbd does it)
                magic, error, handle = struct.unpack(">IIQ", _recv_exact(kernel_end, 16))
                assert (magic, error) == (0x67446698, 0)
                assert _recv_exact(kernel_end, 4096) == struct.pack(">Q", handle % 256) * 512
                answered.add(handle)
            sender.join()
            assert answered == set(range(2000))


def _recv_exact(sock: object, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))  # type: ignore[attr-defined]
        assert chunk, "connection closed"
        data += chunk
    return bytes(data)
