"""The `@kiwi-overlay-nbd` supervisor on the host: its start, its name, its errors, and its reconnect negotiation.

The host kernel has no nbd module, so every attach here ends at the kernel step; the kernel
attach, LINK_DEAD and RECONFIGURE are proven in the QEMU boot suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_servers import FIRST_SECTOR, IMAGE_SIZE, free_port, make_image, nbd_server, qemu_nbd, qemu_nbd_tls
from test_nbd_protocol import read_first_sector

from kiwi_overlay.nbd import NbdError, attach_root, detach_all, root_from_uri
from kiwi_overlay.nbd.supervisor import PROCESS_NAME, Request, Supervisor

HOST_HAS_NBD = Path("/sys/module/nbd").exists()
pytestmark = pytest.mark.skipif(HOST_HAS_NBD, reason="these tests expect a host without the nbd module (the attach is the boot suite's)")


def children() -> list[int]:
    me = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.append(int(stat.parent.name))
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_cli_attach_without_the_nbd_module_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "nbd", "attach", "nbd://127.0.0.1:1/rootfs", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("kiwi-overlay: cannot load the nbd kernel module (")
    assert result.stderr.count("\n") == 1


@pytest.fixture
def slow_modprobe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Stands in for the module load the host kernel cannot do, so the supervisor lives long enough to be looked at."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    release = tmp_path / "release"
    script = bin_dir / "modprobe"
    script.write_text(
        f"#!/bin/sh\nwhile [ ! -e {release} ]; do sleep 0.05; done\necho 'modprobe: FATAL: Module nbd not found.' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    yield release
    release.touch()


def test_supervisor_runs_as_a_root_storage_daemon_and_reports_back(slow_modprobe: Path, tmp_path: Path) -> None:
    root = root_from_uri("nbd://127.0.0.1:1/rootfs")
    errors: list[Exception] = []

    def attach() -> None:
        try:
            attach_root(root, timeout=5, state_dir=tmp_path / "state", kmsg=False)
        except NbdError as error:
            errors.append(error)

    # A pipe this process holds when the supervisor is forked, as the boot step holds the watch's stdin.
    watch_end, held_end = os.pipe()
    before = set(children())
    thread = threading.Thread(target=attach)
    thread.start()
    try:
        supervisor = None
        for _ in range(1000):
            started = [pid for pid in set(children()) - before if cmdline(pid)[:1] == [PROCESS_NAME]]
            if started:
                supervisor = started[0]
                break
            time.sleep(0.01)
        assert supervisor is not None, "no @kiwi-overlay-nbd child"
        # systemd spares processes whose argv[0] starts with '@' at switch-root and shutdown.
        assert Path(f"/proc/{supervisor}/cmdline").read_bytes().rstrip(b"\0") == PROCESS_NAME.encode()
        assert os.getsid(supervisor) == supervisor  # its own session: not in the boot step's signals
        # The fork kept no copy of the pipe: closing ours is its end for the other side.
        os.close(held_end)
        assert os.read(watch_end, 1) == b""
    finally:
        slow_modprobe.touch()
        thread.join()
        os.close(watch_end)
    assert [str(error) for error in errors] == ["cannot load the nbd kernel module (modprobe: FATAL: Module nbd not found.)"]
    assert not [pid for pid in children() if Path(f"/proc/{pid}").exists() and cmdline(pid)[:1] == [PROCESS_NAME]]
    assert not list((tmp_path / "state").glob("*"))


def test_detach_all_with_nothing_attached(tmp_path: Path) -> None:
    detach_all(state_dir=tmp_path)


def request_for(uri: str, **options: object) -> Request:
    return Request(root=root_from_uri(uri, **options), timeout=20, device=None, state_dir=Path("/nonexistent"), log_to_kmsg=False)  # type: ignore[arg-type]


def test_reconnect_survives_a_server_restart(tmp_path: Path) -> None:
    port = free_port()
    supervisor = Supervisor(request_for(f"nbd://127.0.0.1:{port}/rootfs", connections=2))
    with nbd_server(tmp_path, port=port):
        first = supervisor.servers.first_connections()
    assert supervisor.servers.info is not None and supervisor.servers.info.size == IMAGE_SIZE
    assert len(first) == 2  # nbd-server advertises multi-conn
    for sock in first:
        sock.close()
    # The server is down now: reconnect() keeps trying, with backoff, until it is back.
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(supervisor.reconnect()))
    thread.start()
    time.sleep(1)
    assert thread.is_alive()
    with nbd_server(tmp_path, port=port):
        thread.join()
        (sock,) = result
        with sock:  # type: ignore[attr-defined]
            assert read_first_sector(sock) == FIRST_SECTOR  # type: ignore[arg-type]


def test_single_connection_when_the_server_lacks_multi_conn(tmp_path: Path) -> None:
    image = make_image(tmp_path / "rootfs.img")
    with qemu_nbd(image, extra=("--shared=1",)) as port:
        supervisor = Supervisor(request_for(f"nbd://127.0.0.1:{port}/rootfs", connections=4))
        socks = supervisor.servers.first_connections()
        try:
            assert supervisor.servers.info is not None and not supervisor.servers.info.multi_conn  # qemu-nbd --shared=1
            assert len(socks) == 1
        finally:
            for sock in socks:
                sock.close()


def test_tls_connections_are_proxied_for_the_kernel(tmp_path: Path) -> None:
    ca, extra = qemu_nbd_tls(tmp_path)
    image = make_image(tmp_path / "rootfs.img")
    with qemu_nbd(image, extra=extra) as port:
        supervisor = Supervisor(request_for(f"nbds://127.0.0.1:{port}/rootfs", tls_ca=ca))
        (kernel_end,) = supervisor.servers.first_connections()
        with kernel_end:
            # What the kernel would send on its plain socket reaches the server through TLS.
            assert read_first_sector(kernel_end) == FIRST_SECTOR


RESOLVE_ONCE = """
import signal, subprocess, sys
from pathlib import Path
from kiwi_overlay.nbd import root_from_uri
from kiwi_overlay.nbd.supervisor import Request, Supervisor
from test_nbd_protocol import read_first_sector

work, port = Path(sys.argv[1]), int(sys.argv[2])
(work / "nsswitch.conf").write_text("hosts: files\\n")  # names from the hosts file only: no DNS traffic
(work / "hosts").write_text("127.0.0.1 kiwi-overlay-test-server\\n")
(work / "no-hosts").write_text("")
bind = lambda source, target: subprocess.run(["mount", "--bind", str(source), target], check=True)
bind(work / "nsswitch.conf", "/etc/nsswitch.conf")
bind(work / "hosts", "/etc/hosts")
root = root_from_uri(f"nbd://kiwi-overlay-test-server:{port}/rootfs")
supervisor = Supervisor(Request(root=root, timeout=20, device=None, state_dir=work / "state", log_to_kmsg=False))
for sock in supervisor.servers.first_connections():
    sock.close()
bind(work / "no-hosts", "/etc/hosts")  # what switch_root does to the initrd's /etc
signal.alarm(20)  # reconnect() tries forever
with supervisor.reconnect() as sock:
    print("first sector", read_first_sector(sock)[:12].decode())
"""


@pytest.mark.root
def test_reconnect_needs_no_resolver(tmp_path: Path) -> None:
    """A server given by name is resolved once, at attach time: after switch_root the name may resolve no more."""
    with nbd_server(tmp_path) as port:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", RESOLVE_ONCE, str(tmp_path), str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == f"first sector {FIRST_SECTOR[:12].decode()}\n"
