"""The kernel side of NBD in a QEMU guest (Debian's 6.1 kernel): attach, reconnect after a server restart, detach;
failover between two servers and the policies for a lost server.

The host kernel has no nbd module. The guest boots a tiny busybox initramfs that mounts the host's
root read-only over 9p (with a tmpfs overlay on top), binds the guest kernel's modules over /lib/modules, and runs this
checkout's `kiwi-overlay nbd attach` against an nbd-server inside the guest (on its loopback).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from guest_kernel import GuestKernel, guest_kernel
from nbd_servers import make_ca, sign

from tests.boot.qemu import ResultChannel, cpio_archive

pytestmark = [pytest.mark.boot, pytest.mark.root]

CHECKOUT = Path(__file__).resolve().parents[2]
MODULES_9P = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for module in {modules}; do insmod /modules/$module; done
mkdir -p /lower /upper
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000 hostroot /lower || poweroff -f
# A writable view of the host's root: the host may lack /lib/modules, the guest needs it.
mount -t tmpfs upper /upper; mkdir /upper/rw /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/rw,workdir=/upper/work,redirect_dir=on root /newroot || poweroff -f
mkdir -p /newroot/lib/modules
for dir in proc sys dev; do mount --bind /$dir /newroot/$dir; done
mount -t tmpfs run /newroot/run
mount --bind /newroot{moddir} /newroot/lib/modules
echo KO-NBD-GUEST-START
chroot /newroot /bin/bash {checkout}/tests/boot/{script} {checkout} {pki} 2>&1
echo KO-NBD-GUEST-EXIT $?
poweroff -f
"""


def _module_files(kernel: GuestKernel) -> list[Path]:
    """MODULES_9P and what they depend on, in load order (dependencies first), from modules.dep."""
    depends = {}
    for line in (kernel.moddir / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        depends[module] = needs.split()
    by_name = {Path(module).name.removesuffix(".ko"): module for module in depends}
    order: list[str] = []

    def visit(module: str) -> None:
        for needed in reversed(depends[module]):
            visit(needed)
        if module not in order:
            order.append(module)

    for name in MODULES_9P:
        visit(by_name[name])
    return [kernel.moddir / module for module in order]


def _pki(directory: Path) -> Path:
    """ca-cert.pem, server-cert.pem, server-key.pem (for qemu-nbd) in DIRECTORY, seen by the guest through 9p."""
    ca = make_ca(directory, "ca")
    server = sign(directory, ca, "server", san="IP:127.0.0.1", usage="serverAuth")
    for source, name in ((ca[0], "ca-cert.pem"), (server[0], "server-cert.pem"), (server[1], "server-key.pem")):
        if source.name != name:
            (directory / name).write_bytes(source.read_bytes())
    return directory


def _initramfs(kernel: GuestKernel, directory: Path, script: str) -> Path:
    tree = directory / "initramfs"
    for sub in ("bin", "proc", "sys", "dev", "newroot", "modules"):
        (tree / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin/busybox")
    modules = _module_files(kernel)
    for module in modules:
        shutil.copy(module, tree / "modules" / module.name)
    modules_in_host_root = kernel.moddir.parent  # /lib/modules of the guest kernel tree, seen through 9p
    (tree / "init").write_text(
        INIT.format(
            pki=_pki(directory / "pki"),
            modules=" ".join(module.name for module in modules),
            moddir=modules_in_host_root,
            checkout=CHECKOUT,
            script=script,
        )
    )
    (tree / "init").chmod(0o755)
    return cpio_archive(tree, output=directory / "initramfs.cpio")


def _boot(directory: Path, script: str) -> tuple[str, list[str]]:
    """The console and the result lines of a guest that runs tests/boot/SCRIPT; the console is kept as DIRECTORY/console.log."""
    kernel = guest_kernel()
    initramfs = _initramfs(kernel, directory, script)
    channel = ResultChannel()
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "1", "-no-reboot",
            "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio", *channel.serial_argv(),
            "-kernel", str(kernel.boot_file), "-initrd", str(initramfs),
            "-append", "console=ttyS0 panic=-1 loglevel=6",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, pass_fds=channel.pass_fds,
    )  # fmt: skip
    channel.started()
    try:
        output, _ = qemu.communicate(timeout=900)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    (directory / "console.log").write_text(output)  # kept by pytest for a look after a failure
    return output, channel.read_all()


def test_attach_reconnect_detach_in_a_guest(tmp_path: Path) -> None:
    output, lines = _boot(tmp_path, "nbd_guest.sh")
    assert "KO-NBD-GUEST-START" in output, output[-3000:]
    assert "KO-NBD-GUEST-EXIT 0" in output, output[-6000:]
    steps = (
        "attached /dev/nbd0",
        "argv0 @kiwi-overlay-nbd",
        "read-only 1",
        "first sector ok",
        "python files gone",
        "read after restart ok",
        "reconnected",
        "first sector ok after reconnect",
        "detached",
        "ioctl attached /dev/nbd2",
        "ioctl read-only 1",
        "ioctl first sector ok",
        "ioctl detached",
        "ioctl detach sent NBD_CMD_DISC",
        "tls attached /dev/nbd3",
        "tls first sector ok",
        "tls detached",
    )
    assert all(line.startswith("KO-NBD: ") for line in lines), lines
    for step in steps:
        assert f"KO-NBD: {step}" in lines, f"{lines}\n{output[-6000:]}"


def test_failover_and_lost_server_policies_in_a_guest(tmp_path: Path) -> None:
    output, lines = _boot(tmp_path, "nbd_failover_guest.sh")
    assert "KO-NBD-GUEST-START" in output, output[-3000:]
    steps = (
        "failover attached /dev/nbd0 through one of the two",
        "the server attached through stopped after 16 MiB",
        "failover read complete, checksum ok",
        "failover the other server took over",
        "failover record says connected to the other",
        "fail attached /dev/nbd1",
        "fail read gave an I/O error",
        "fail console line",
        "fail next read fails at once",
        "fail record says failing",
        "reboot attached /dev/nbd2",
    )
    assert all(line.startswith("KO-NBD: ") for line in lines), lines
    for step in steps:
        assert f"KO-NBD: {step}" in lines, f"{lines}\n{output[-6000:]}"
    # QEMU runs with -no-reboot: the reboot ends it before the script does. The line is the supervisor's, on the console.
    assert "no NBD server for 3 s: rebooting (rd.root.overlay.nbd.lost=reboot:3)" in output, output[-6000:]
    assert "KO-NBD: reboot did not happen" not in lines
    assert "KO-NBD-GUEST-EXIT" not in output
