"""The boot harness proven on dracut's stock NBD root + overlay (the benchmarks' baseline).

Host-side tests check the servers the harness starts; the boot test builds one initrd and boots it once.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.boot.initrd import build_initrd, stock_nbd_initrd
from tests.boot.qemu import Disk, Guest, boot, initrd_disk
from tests.boot.rootfs import FSTYPES, LABEL, root_image
from tests.boot.servers import AoeTarget, NbdServer, QemuNbd

AOE_ETHERTYPE = 0x88A2


def list_exports(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nbd-client", "-l", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=10, check=False)


@pytest.mark.root
@pytest.mark.parametrize("fstype", FSTYPES)
def test_root_images_carry_the_test_init(fstype: str, tmp_path: Path) -> None:
    image = root_image(fstype)
    subprocess.run(["mount", "-o", "loop,ro", "-t", fstype, image, tmp_path], check=True)
    try:
        assert "KO-MARK" in (tmp_path / "sbin/init").read_text()
        assert (tmp_path / "etc/os-release").read_text().startswith("NAME=")
        assert (tmp_path / "bin/poweroff").resolve().name == "busybox"
    finally:
        subprocess.run(["umount", tmp_path], check=True)
    if fstype == "ext4":
        label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", image], capture_output=True, text=True, check=True)
        assert label.stdout.strip() == LABEL


PROBE_MODULE = """#!/bin/bash
check() { return 0; }
depends() { return 0; }
install() { echo "probe for $kernel" > "$initdir/etc/kobt-probe"; }
"""


@pytest.mark.root
def test_initrd_takes_modules_from_a_directory_and_sees_the_guest_kernel_tree(tmp_path: Path) -> None:
    """An uninstalled dracut module is included, and 90overlay-root's check() (host /lib/modules) passes."""
    module_dir = tmp_path / "99kobt-probe"
    module_dir.mkdir()
    (module_dir / "module-setup.sh").write_text(PROBE_MODULE)
    initrd = build_initrd(
        output=tmp_path / "probe.img",
        systemd=False,
        modules=("kobt-probe", "overlay-root"),
        module_dirs=(module_dir,),
        extra_args=("--no-kernel",),
    )
    probe = subprocess.run(["lsinitrd", "-f", "etc/kobt-probe", initrd], capture_output=True, text=True, check=True).stdout
    assert probe.startswith("probe for 6.1."), probe
    listing = subprocess.run(["lsinitrd", initrd], capture_output=True, text=True, check=True).stdout
    assert "hooks/pre-pivot/10-overlay-mount.sh" in listing
    assert not Path("/usr/lib/dracut/modules.d/99kobt-probe").exists()


@pytest.mark.root
@pytest.mark.parametrize("server_class", [NbdServer, QemuNbd])
def test_nbd_server_serves_its_export_and_restarts_on_the_same_port(server_class: type[NbdServer | QemuNbd]) -> None:
    with server_class(root_image("squashfs"), name="rootfs") as server:
        assert "rootfs" in list_exports(server.port).stdout.split()
        server.stop()
        assert list_exports(server.port).returncode != 0
        server.start()
        assert "rootfs" in list_exports(server.port).stdout.split()
        assert server.nbd_root("squashfs") == f"nbd:10.0.2.2:{server.port}:squashfs:ro:-name,rootfs"
    assert list_exports(server.port).returncode != 0


def aoe_query(interface: str, *, timeout: float) -> tuple[int, int]:
    """Broadcast an AoE Query Config on INTERFACE; the (shelf, slot) of the first target that answers."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(AOE_ETHERTYPE)) as sock:
        sock.bind((interface, AOE_ETHERTYPE))
        own_mac = sock.getsockname()[4]
        tag = 0x4B4F0001
        header = struct.pack("!BBHBBI", 0x10, 0, 0xFFFF, 0xFF, 1, tag)  # v1, shelf/slot "any", config command
        config = struct.pack("!HHBBH", 0, 0, 0, 0x10, 0)  # read the config string
        frame = b"\xff" * 6 + own_mac + struct.pack("!H", AOE_ETHERTYPE) + header + config
        sock.send(frame.ljust(60, b"\0"))
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            reply = sock.recv(2048)
            flags, _error, shelf, slot, _command, reply_tag = struct.unpack("!BBHBBI", reply[14:24])
            if flags & 0x08 and reply_tag == tag:
                return shelf, slot
    raise AssertionError(f"no AoE target answered on {interface} within {timeout:g} s")


@pytest.mark.root
def test_aoe_target_answers_through_the_bridge_and_is_removed() -> None:
    with AoeTarget(root_image("squashfs"), shelf=3, slot=7) as target:
        assert target.target == "e3.7"
        assert aoe_query(target.bridge, timeout=5) == (3, 7)
        names = target.names
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in links for name in (names.bridge, names.tap, names.veth_host))
    assert names.namespace not in namespaces


@pytest.fixture(scope="session")
def stock_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stock_nbd_initrd(output=tmp_path_factory.mktemp("initrd") / "stock-nbd.img")


@pytest.mark.boot
def test_stock_dracut_nbd_root_with_rootovl_and_dracut_shutdown(stock_initrd: Path, tmp_path: Path) -> None:
    """dracut's NBD root + rootovl; at the end the initrd is put back and dracut's /shutdown unmounts the root."""
    initrd_contents = initrd_disk(stock_initrd, output=tmp_path / "initrd.squashfs")
    with NbdServer(root_image("squashfs")) as server:
        cmdline = f"root={server.nbd_root('squashfs')} rootovl ip=dhcp ko.test=write-16M,read-all,shutdown-initramfs"
        result = boot(Guest(initrd=stock_initrd, cmdline=cmdline, disks=(initrd_contents,)), name="stock-nbd-rootovl")
    result.expect(root_fstype="overlay", write="ok", write_16M="ok", shutdown_initramfs="pivot")
    assert (result.value("read-all") or "").startswith("ok device=/dev/nbd0"), result.describe()
    assert any(" /live/image squashfs " in line and line.startswith("/dev/nbd0 ") for line in result.mounts), result.describe()
    assert "Unmounted /oldroot." in result.console() and result.returncode == 0, result.describe()


@pytest.mark.boot
def test_stock_local_label_root_and_aoe_seen_by_the_guest(stock_initrd: Path) -> None:
    """A read-only virtio disk found by LABEL=, and the guest's aoe driver finding vblade through the tap."""
    root_disk = Disk(root_image("ext4"), serial="koroot", readonly=True)
    with AoeTarget(root_image("squashfs"), shelf=3, slot=7) as target:
        cmdline = f"root=LABEL={LABEL} rd.skipfsck rootovl rd.driver.pre=aoe ko.test=aoe-discover"
        result = boot(
            Guest(initrd=stock_initrd, cmdline=cmdline, disks=(root_disk,), user_net=False, taps=(target.tap,)), name="stock-label-aoe"
        )
    result.expect(root_fstype="overlay", write="ok", aoe_discover="e3.7")
    assert any(line.startswith("/dev/vda ") and " ext4 ro" in line for line in result.mounts), result.describe()
