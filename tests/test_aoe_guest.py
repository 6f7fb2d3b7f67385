"""attach_root through the real aoe driver, in a QEMU guest (the host has no aoe module).

The guest runs Debian's 6.1 kernel with a busybox initramfs that mounts the host's / read-only
over 9p and runs kiwi_overlay from this checkout in a chroot of it: the code under test is the
very code of the worktree, its Python and its libraries. vblade runs in a network namespace the
test creates, on the guest's tap device. At the end the guest renames its interface, as udev in a
real root does, and reads the attached device again.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot.qemu import RESULT_PORT, ResultChannel, cpio_archive
from tests.netns import network_namespace

sys.path.insert(0, str(Path(__file__).parent / "boot"))
from guest_kernel import GuestKernel, guest_kernel

pytestmark = [pytest.mark.boot, pytest.mark.root]

CHECKOUT = Path(__file__).resolve().parent.parent
RESPONDER = Path(__file__).with_name("aoe_responder.py")
MARKER = b"kiwi-overlay AoE guest test\n"
# Loaded by the initramfs before the host's / can be mounted; aoe itself is left to attach_root.
EARLY_MODULES = ("virtio_pci", "virtio_net", "9pnet_virtio", "9p")

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /modules/order); do insmod /modules/$module; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /host
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs run /host/run
echo GUEST-START
chroot /host /usr/bin/env -i PATH={bin}:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1 {python} {program}
echo GUEST-EXIT $?
echo o > /proc/sysrq-trigger
sleep 10
"""

# modprobe from the host's kmod, but with the guest kernel's module tree (the host has no /lib/modules).
MODPROBE = """#!/bin/sh
exec /usr/sbin/modprobe -d {root} "$@"
"""

# Results go to the harness's result channel (RESULT_PORT), never the console printk writes to.
PROGRAM = """
import functools
import subprocess
from pathlib import Path
from kiwi_overlay import log
from kiwi_overlay.aoe.attach import attach_root
from kiwi_overlay.config.plan import AoeRoot
from kiwi_overlay.errors import KiwiOverlayError

log.configure(debug=True, log_file=Path("/run/kiwi-overlay.log"))
print = functools.partial(print, file=open({result_port!r}, "w"), flush=True)
# e7.7 (the test responder) answers Query Config but never ATA: the driver makes no device.
try:
    attach_root(AoeRoot(target="e7.7", interface=None, interfaces=()), timeout=15)
except KiwiOverlayError as error:
    print("RESULT no-device", error)
print("RESULT unloaded", not Path("/sys/module/aoe").exists())
device = attach_root(AoeRoot(target="e0.1", interface=None, interfaces=()), timeout=90)
print("RESULT device", device, device.is_block_device(), device.open("rb").read({marker}) == {marker_bytes!r})
print("RESULT iflist", repr(Path("/sys/module/aoe/parameters/aoe_iflist").read_text().strip()))
# The module is loaded now: the interface list goes to /dev/etherd/interfaces.
print("RESULT loaded", attach_root(AoeRoot(target="e0.1", interface=None, interfaces=("eth0",)), timeout=60))
for root in (AoeRoot(target=None, interface="eth0", interfaces=("eth0",)), AoeRoot(target="e0.9", interface=None, interfaces=())):
    try:
        attach_root(root, timeout=3)
    except KiwiOverlayError as error:
        print("RESULT", root.target or root.interface, error)
# udev in a real root may rename the boot interface (6.1 renames only a link that is down): the
# attached root must still answer. Bounded here, as a stalled read never ends.
for command in (["ip", "link", "set", "eth0", "down"], ["ip", "link", "set", "eth0", "name", "ens2"], ["ip", "link", "set", "ens2", "up"]):
    subprocess.run(command, check=True)
Path("/proc/sys/vm/drop_caches").write_text("3")
read = subprocess.Popen(
    ["sh", "-c", "dd if=/dev/etherd/e0.1 bs=1M count={read_mib} iflag=direct status=none | sha256sum"], stdout=subprocess.PIPE, text=True
)
try:
    print("RESULT renamed", read.communicate(timeout=60)[0].split()[0])
except subprocess.TimeoutExpired:
    print("RESULT renamed stalled: no complete read of {read_mib} MiB within 60 s")
"""
READ_MIB = 4


def _module_closure(kernel: GuestKernel, names: tuple[str, ...]) -> list[str]:
    """Module paths (relative to the module dir) for NAMES and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (kernel.moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(path).name.removesuffix(".ko"): path for path in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for dependency in reversed(deps[path]):
            visit(dependency)
        if path not in order:
            order.append(path)

    for name in names:
        visit(by_name[name])
    return order


def _initramfs(kernel: GuestKernel, work: Path) -> Path:
    root = work / "initramfs"
    for directory in ("bin", "proc", "sys", "dev", "modules"):
        (root / directory).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "modprobe").write_text(MODPROBE.format(root=kernel.root))
    (bin_dir / "modprobe").chmod(0o755)
    program = work / "guest.py"
    program.write_text(PROGRAM.format(marker=len(MARKER), marker_bytes=MARKER, result_port=RESULT_PORT, read_mib=READ_MIB))
    python = CHECKOUT / ".venv/bin/python"
    (root / "init").write_text(INIT.format(bin=bin_dir, python=python if python.exists() else sys.executable, program=program))
    (root / "init").chmod(0o755)
    order = []
    for path in _module_closure(kernel, EARLY_MODULES):
        shutil.copy(kernel.moddir / path, root / "modules" / Path(path).name)
        order.append(Path(path).name)
    (root / "modules/order").write_text("\n".join(order) + "\n")
    return cpio_archive(root, output=work / "initramfs.cpio")


@pytest.fixture
def namespace() -> Iterator[str]:
    with network_namespace("ko-aoe-g") as name:
        yield name


def test_attach_root_through_the_kernel_driver(namespace: str, tmp_path: Path) -> None:
    kernel = guest_kernel()
    initramfs = _initramfs(kernel, tmp_path)
    disk = tmp_path / "root.img"
    content = MARKER + random.randbytes(READ_MIB * 2**20 - len(MARKER))
    with disk.open("wb") as handle:
        handle.write(content)
        handle.truncate(16 * 2**20)
    tap = "ko-aoe-tap0"
    channel = ResultChannel()
    qemu = subprocess.Popen(
        ["ip", "netns", "exec", namespace, "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-no-reboot",
         "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio", *channel.serial_argv(),
         "-kernel", str(kernel.boot_file), "-initrd", str(initramfs), "-append", "console=ttyS0 panic=-1 quiet",
         "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0",
         "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, pass_fds=channel.pass_fds,
    )  # fmt: skip
    channel.started()
    helpers: list[subprocess.Popen[str]] = []
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ip", "-n", namespace, "link", "show", tap], capture_output=True).returncode != 0:
            assert qemu.poll() is None and time.monotonic() < deadline, "QEMU did not create its tap device"
            time.sleep(0.1)
        subprocess.run(["ip", "-n", namespace, "link", "set", tap, "up"], check=True)
        helpers.append(
            subprocess.Popen(
                ["ip", "netns", "exec", namespace, "vblade", "0", "1", tap, str(disk)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        responder = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, str(RESPONDER), tap], stdout=subprocess.PIPE, text=True
        )
        helpers.append(responder)
        assert responder.stdout is not None and responder.stdout.readline() == "ready\n"
        console, _ = qemu.communicate(timeout=600)
        lines = channel.read_all()
    finally:
        for process in (qemu, *helpers):
            if process.poll() is None:
                process.kill()
                process.wait()
    (tmp_path / "console.log").write_text(console)
    results = dict(line.removeprefix("RESULT ").split(" ", 1) for line in lines)
    assert all(line.startswith("RESULT ") for line in lines) and len(results) == len(lines) == 8, lines
    assert "GUEST-EXIT 0" in console, console[-4000:]
    assert results["no-device"].startswith(
        "/dev/etherd/e7.7 did not appear within 15 s (aoe driver on eth0); targets that answered the wire probe: "
    ), results["no-device"]
    assert "e7.7 on eth0 (02:00:00:00:00:bb)" in results["no-device"]
    assert results["unloaded"] == "True"  # the failed attach unloaded the aoe module it had loaded
    assert results["device"] == "/dev/etherd/e0.1 True True"
    assert results["iflist"] == "''"  # lifted once attached: it goes by interface name
    assert results["renamed"] == hashlib.sha256(content).hexdigest()
    assert results["loaded"] == "/dev/etherd/e0.1"
    mac = "([0-9a-f]{2}:){5}[0-9a-f]{2}"
    answered = rf"e0\.1 on eth0 \({mac}\), e7\.7 on eth0 \(02:00:00:00:00:bb\)"
    assert re.fullmatch(
        rf"root=overlay:aoe=eth0: 2 AoE targets answer on eth0: {answered}; name one; e.g. root=overlay:aoe=e0.1", results["eth0"]
    )
    assert re.fullmatch(rf"AoE target e0\.9 did not answer within 3 s on eth0; targets that answered: {answered}", results["e0.9"])
