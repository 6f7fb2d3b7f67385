"""The boot harness (tests/boot/qemu.py): its result channel, parsed without a guest and under printk load in one; QEMU's monitor."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.boot.initrd import session_initrd
from tests.boot.qemu import Disk, Guest, Mark, boot, monitor_command, parse_mark
from tests.boot.rootfs import LABEL, root_image


def test_markers_carry_the_guest_uptime_and_their_value() -> None:
    assert parse_mark("[27.79] KO-MARK root-fstype=overlay") == Mark("root-fstype", "overlay", 27.79)
    assert parse_mark("[1.00] KO-MARK mounts-begin") == Mark("mounts-begin", "", 1.0)
    assert parse_mark("[108.10] KO-MARK read-all=ok device=/dev/nbd0 1+0 records out") == Mark(
        "read-all", "ok device=/dev/nbd0 1+0 records out", 108.1
    )


def test_mount_lines_are_named_mount_with_the_whole_line_as_value() -> None:
    line = "[27.87] KO-MARK mount /dev/nbd0 /live/image squashfs ro,relatime 0 0"
    assert parse_mark(line) == Mark("mount", "/dev/nbd0 /live/image squashfs ro,relatime 0 0", 27.87)


def test_only_a_whole_line_is_a_marker() -> None:
    """Line-exact: text before a marker (a console write it was glued to) makes the line no marker."""
    assert parse_mark("dhcp: BOUND[3.50] KO-MARK init uptime=3.49") is None
    assert parse_mark("KO-MARK write=ok") is None
    assert parse_mark("[   27.0] dracut: Switching root") is None


@pytest.mark.boot
def test_markers_arrive_intact_while_the_kernel_floods_the_console() -> None:
    """Issue 14 item 12: 200 markers written while 2000 printk lines go to the console; none garbled, none lost."""
    disk = Disk(root_image("ext4"), serial="koroot", readonly=True)
    guest = Guest(session_initrd(systemd=False), f"root=overlay:LABEL={LABEL} ko.test=noise", disks=(disk,), user_net=False)
    result = boot(guest, name="harness-noise", timeout=300)
    result.expect(root_fstype="overlay", write="ok")
    values = {mark.name: mark.value for mark in result.marks if mark.name.startswith("noise-")}
    expected = {f"noise-{i}": f"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789-{i}" for i in range(200)}
    assert values == expected, result.describe()
    assert result.mark("poweroff") is not None, result.describe()
    assert "ko-noise 1999:" in result.console(), result.describe()  # the flood did reach the console


@pytest.mark.boot
def test_the_monitor_answers_on_the_guests_socket(tmp_path: Path) -> None:
    """Guest(monitor=PATH) puts QEMU's human monitor there; monitor_command returns one answer (the bench asks `info jit`)."""
    socket_path, initrd = tmp_path / "monitor.sock", tmp_path / "initrd"
    initrd.write_bytes(bytes(512))
    argv = [*Guest(initrd, "", user_net=False, monitor=socket_path).argv(), "-S"]  # -S: the guest never starts
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as qemu:
        try:
            deadline = time.monotonic() + 60
            while not socket_path.exists() and qemu.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert socket_path.exists(), f"QEMU made no monitor socket (exit status {qemu.poll()})"
            assert "VM status: paused" in monitor_command(socket_path, "info status")
            assert re.search(r"TB invalidate count\s+\d+", monitor_command(socket_path, "info jit"))
        finally:
            qemu.kill()
