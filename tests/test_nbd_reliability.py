"""Issue 14 items 10 and 11 on the host: fewer connections than asked, sub-second timeouts, a broken
stderr, and the TLS proxy on one thread. The kernel side (ioctl detach order) is in the QEMU suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from nbd_servers import (
    FIRST_SECTOR,
    IMAGE_SIZE,
    Hostile,
    greeting,
    make_image,
    nbd_server,
    qemu_nbd,
    qemu_nbd_tls,
    read_option,
    recv_exact,
    reply,
)
from test_nbd_protocol import info_export, read_first_sector

from kiwi_overlay.config.plan import NbdServer
from kiwi_overlay.nbd import kernel, protocol, root_from_uri
from kiwi_overlay.nbd.protocol import FLAG_READ_ONLY
from kiwi_overlay.nbd.supervisor import Request, Supervisor
from kiwi_overlay.nbd.tls_proxy import TlsProxy
from kiwi_overlay.verity import BLOCK, format_image


def request_for(uri: str, **options: object) -> Request:
    return Request(root=root_from_uri(uri, **options), timeout=20, device=None, state_dir=Path("/nonexistent"), log_to_kmsg=False)  # type: ignore[arg-type]


def test_fewer_connections_than_asked_fall_back_with_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 10: qemu-nbd --shared=2 advertises multi-conn but takes only 2 clients: 2 of 4, not a failed attach."""
    image = make_image(tmp_path / "rootfs.img")
    with qemu_nbd(image, extra=("--shared=2",)) as port:
        supervisor = Supervisor(request_for(f"nbd://127.0.0.1:{port}/rootfs", connections=4))
        socks = supervisor.servers.first_connections()
        try:
            assert supervisor.servers.info is not None and supervisor.servers.info.multi_conn
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
    message = kernel.build(kernel.CMD_CONNECT, index=0, config=config)
    attrs = dict(message["attrs"])
    assert (attrs["NBD_ATTR_TIMEOUT"], attrs["NBD_ATTR_DEAD_CONN_TIMEOUT"]) == (kernel_seconds, kernel_seconds)
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
    ca, extra = qemu_nbd_tls(tmp_path)
    image = make_image(tmp_path / "rootfs.img")
    with image.open("r+b") as handle:  # a pattern to check every block against
        handle.write(b"".join(struct.pack(">Q", block) * 512 for block in range(256)))
    with qemu_nbd(image, extra=extra) as port:
        supervisor = Supervisor(request_for(f"nbds://127.0.0.1:{port}/rootfs", tls_ca=ca))
        sock, _ = supervisor.servers.open(supervisor.root.servers[0], time.monotonic() + 20)
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


def test_the_kernel_gets_the_read_only_flag_for_a_writable_export(tmp_path: Path) -> None:
    """Item 5: the read layer's kernel device is read-only even when the export is writable."""
    with nbd_server(tmp_path) as port:
        supervisor = Supervisor(request_for(f"nbd://127.0.0.1:{port}/scratch"))
        for sock in supervisor.servers.first_connections():
            sock.close()
    assert supervisor.servers.info is not None and not supervisor.servers.info.flags & FLAG_READ_ONLY  # the export is writable
    assert supervisor.config().server_flags & FLAG_READ_ONLY


# ---- issue 17 item 2: a reconnect checks the root hash (rd.root.overlay.verity) ---------------------------------


OTHER_SECTOR = b"another version".ljust(512, b".")


def _verity_images(directory: Path) -> tuple[dict[str, Path], str, str]:
    """Verity-formatted images of one size: the attached one, a copy, another content, and the size without a tree."""
    images = {name: directory / f"{name}.img" for name in ("attached", "copy", "other", "unformatted")}
    images["attached"].write_bytes(FIRST_SECTOR * (200 * BLOCK // 512))  # 200 blocks: a two-level tree
    images["other"].write_bytes(OTHER_SECTOR * (200 * BLOCK // 512))
    root_hash, other_hash = format_image(images["attached"]), format_image(images["other"])
    shutil.copyfile(images["attached"], images["copy"])
    images["unformatted"].write_bytes(bytes(images["attached"].stat().st_size))
    assert len({image.stat().st_size for image in images.values()}) == 1
    return images, root_hash, other_hash


def _reconnect(supervisor: Supervisor) -> socket.socket:
    """supervisor.reconnect(), which tries forever, within 60 s."""

    def expire(*_: object) -> None:
        raise TimeoutError("reconnect() found no server with the image in 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    try:
        return supervisor.reconnect()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check(supervisor: Supervisor, server: NbdServer, *, first_sector: bytes = FIRST_SECTOR) -> str | None:
    """different_image() on a new connection to SERVER; a connection it accepts must still serve the kernel."""
    sock, info = supervisor.servers.open(server, time.monotonic() + 20)
    with sock:
        problem = supervisor.servers.different_image(server, info, sock)
        if problem is None:
            assert sock.gettimeout() is None  # blocking, as the kernel needs it, with nothing left unread
            assert read_first_sector(sock) == first_sector
    return problem


def test_a_reconnect_takes_only_a_server_whose_image_has_the_root_hash(tmp_path: Path) -> None:
    """Same size, different content: only the root hash tells them apart; without it the size is all there is."""
    images, root_hash, other_hash = _verity_images(tmp_path)
    with (
        qemu_nbd(images["attached"]) as attached,
        qemu_nbd(images["copy"]) as copy,
        qemu_nbd(images["other"]) as other,
        qemu_nbd(images["unformatted"]) as unformatted,
    ):
        uris = ",".join(f"nbd://127.0.0.1:{port}/rootfs" for port in (attached, copy, other, unformatted))
        checked = Supervisor(replace(request_for(uris), verity=root_hash))
        unchecked = Supervisor(request_for(uris))
        for supervisor in (checked, unchecked):
            for sock in supervisor.servers.first_connections():
                sock.close()
        _, copy_server, other_server, unformatted_server = checked.root.servers
        assert _check(checked, copy_server) is None
        assert _check(checked, other_server) == (
            f"nbd://127.0.0.1:{other}/rootfs serves an image with root hash {other_hash} instead of rd.root.overlay.verity={root_hash}"
        )
        assert _check(checked, unformatted_server) == (
            f"nbd://127.0.0.1:{unformatted}/rootfs: its verity superblock lacks the magic verity\\0\\0 (rd.root.overlay.verity)"
        )
        assert _check(unchecked, other_server, first_sector=OTHER_SECTOR) is None


def test_a_reconnect_over_tls_checks_the_root_hash_too(tmp_path: Path) -> None:
    images, root_hash, other_hash = _verity_images(tmp_path)
    ca, extra = qemu_nbd_tls(tmp_path)
    with (
        qemu_nbd(images["attached"], extra=extra) as attached,
        qemu_nbd(images["copy"], extra=extra) as copy,
        qemu_nbd(images["other"], extra=extra) as other,
    ):
        uris = ",".join(f"nbds://127.0.0.1:{port}/rootfs" for port in (attached, copy, other))
        supervisor = Supervisor(replace(request_for(uris, tls_ca=ca), verity=root_hash))
        for sock in supervisor.servers.first_connections():
            sock.close()
        _, copy_server, other_server = supervisor.root.servers
        assert _check(supervisor, copy_server) is None
        assert f"root hash {other_hash} instead of" in (_check(supervisor, other_server) or "")


def test_reconnect_skips_a_server_with_another_root_hash_with_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The attached server gone: the next one in order serves another image (one line, skipped), the one after takes over."""
    images, root_hash, other_hash = _verity_images(tmp_path)
    with qemu_nbd(images["other"]) as other, qemu_nbd(images["copy"]) as copy:
        with qemu_nbd(images["attached"]) as attached:
            uris = ",".join(f"nbd://127.0.0.1:{port}/rootfs" for port in (attached, other, copy))
            supervisor = Supervisor(replace(request_for(uris), verity=root_hash))
            for sock in supervisor.servers.first_connections():
                sock.close()
        with _reconnect(supervisor) as sock:
            assert read_first_sector(sock) == FIRST_SECTOR
    assert supervisor.servers.server == supervisor.root.servers[2]
    err = capsys.readouterr().err
    assert f"nbd://127.0.0.1:{other}/rootfs serves an image with root hash {other_hash} instead of " in err, err
    assert "; not reconnecting to it\n" in err
    assert f"nbd://127.0.0.1:{copy}/rootfs took over from nbd://127.0.0.1:{attached}/rootfs (same image)" in err


AFTER_SWITCH_ROOT = """
import sys
from pathlib import Path
from nbd_servers import FIRST_SECTOR, qemu_nbd
from test_nbd_protocol import read_first_sector
from kiwi_overlay.nbd import root_from_uri
from kiwi_overlay.nbd.supervisor import Request, Supervisor

attached, copy, root_hash = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with qemu_nbd(copy) as copy_port:
    with qemu_nbd(attached) as attached_port:
        uris = f"nbd://127.0.0.1:{attached_port}/rootfs,nbd://127.0.0.1:{copy_port}/rootfs"
        request = Request(root=root_from_uri(uris), timeout=20, device=None, state_dir=Path("/none"), log_to_kmsg=False, verity=root_hash)
        supervisor = Supervisor(request)
        for sock in supervisor.servers.first_connections():
            sock.close()
    finders = sys.meta_path[:]
    sys.meta_path.clear()  # what switch_root does to the initrd's files: nothing more can be imported
    try:
        sock = supervisor.reconnect()
    finally:
        sys.meta_path[:] = finders
    with sock:
        assert read_first_sector(sock) == FIRST_SECTOR
print(supervisor.servers.server.port == copy_port)
"""


def test_the_root_hash_check_needs_no_import_after_switch_root(tmp_path: Path) -> None:
    """The supervisor loads the check's code before it reports: a reconnect after switch_root cannot import."""
    images, root_hash, _ = _verity_images(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", AFTER_SWITCH_ROOT, str(images["attached"]), str(images["copy"]), root_hash],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "True\n"
    assert "took over from" in result.stderr


def test_a_connection_lost_while_reading_the_hash_is_tried_again_after_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that hangs up on the read is not a different image (not skipped for good), nor in the way of the next."""
    images, root_hash, _ = _verity_images(tmp_path)
    size = images["attached"].stat().st_size

    def hang_up_on_the_read(conn: socket.socket) -> None:
        greeting(conn)
        option, _ = read_option(conn)
        reply(conn, option, protocol.REP_INFO, info_export(size, 1 | FLAG_READ_ONLY))
        reply(conn, option, protocol.REP_ACK)
        recv_exact(conn, 28)
        conn.close()

    hostile = Hostile(hang_up_on_the_read)
    try:
        with qemu_nbd(images["copy"]) as copy:
            with qemu_nbd(images["attached"]) as attached:
                uris = ",".join(f"nbd://127.0.0.1:{port}/rootfs" for port in (attached, hostile.port, copy))
                supervisor = Supervisor(replace(request_for(uris), verity=root_hash))
                for sock in supervisor.servers.first_connections():
                    sock.close()
            with _reconnect(supervisor) as sock:
                assert read_first_sector(sock) == FIRST_SECTOR
    finally:
        hostile.close()
    err = capsys.readouterr().err
    hung_up = f"nbd://127.0.0.1:{hostile.port}/rootfs: closed the connection while sending a read reply"
    assert f"reconnecting nbd://127.0.0.1:{attached}/rootfs (attempt 1): NBD server {hung_up}\n" in err, err
    assert "not reconnecting to it" not in err
    assert f"nbd://127.0.0.1:{copy}/rootfs took over from nbd://127.0.0.1:{attached}/rootfs (same image)" in err
