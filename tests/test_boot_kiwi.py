"""Issue 8's scenarios: kiwi-overlay's dracut module booting the guest kernel into the test root.

The no-systemd initrd is built once per session (session_initrd), the systemd + systemd-networkd
one once for this file; every test boots one or two guests and checks what the root's init
reports (tests/boot/qemu.py's marker protocol) and what the console and the servers saw. Boots get generous
time limits (other guests may share the machine); no assertion is about speed.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.boot.guest_kernel import GuestKernel
from tests.boot.initrd import kiwi_overlay_initrd, session_initrd
from tests.boot.qemu import BootResult, Disk, Guest, Mark, RunningGuest, boot, initrd_disk, log_path
from tests.boot.rootfs import LABEL, blank_disk, ext4_disk, root_image
from tests.boot.servers import AoeTarget, NbdServer, QemuNbd

pytestmark = pytest.mark.boot

BOOT_TIMEOUT = 300.0
# test_7b: how long vblade stays stopped at most (the keeper looks every 5 s and speaks on its second look at a stall).
STALL_LIMIT = 120.0
NBD_DEFAULT_PORT = 10809  # root=overlay:nbd=HOST:EXPORT has no port
COW_LABEL = "kocow"


def initrd() -> Path:
    return session_initrd(systemd=False)


def mounted(result: BootResult, mountpoint: str) -> tuple[str, str] | None:
    """(source, fstype) of the mount on MOUNTPOINT as the root sees it."""
    for line in result.mounts:
        fields = line.split()
        if fields[1] == mountpoint:
            return fields[0], fields[2]
    return None


def busybox_sha256() -> str:
    return hashlib.sha256(Path("/bin/busybox").read_bytes()).hexdigest()


# ---- 1: the plain NBD root ----------------------------------------------------------------------------------------


def test_1_nbd_root_with_tmpfs_write_layer_and_nothing_else_on_the_command_line() -> None:
    scenario_1(initrd(), name="kiwi-1-nbd-tmpfs")


def scenario_1(initrd: Path, *, name: str, kernel: GuestKernel | None = None) -> None:
    """No rd.driver.pre=nbd, no ip=: the module loads nbd and brings the network up itself (also tests/test_boot_distro.py)."""
    with NbdServer(root_image("squashfs"), port=NBD_DEFAULT_PORT) as server:
        cmdline = f"root=overlay:nbd=10.0.2.2:{server.name} ko.test=write-16M,checksum"
        result = boot(Guest(initrd, cmdline, kernel=kernel), name=name, timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", write_16M="ok", checksum=busybox_sha256())
    assert mounted(result, "/run/overlay/rootfsbase") == ("/dev/nbd0", "squashfs"), result.describe()
    assert mounted(result, "/run/overlay") == ("tmpfs", "tmpfs"), result.describe()  # the write layer is in RAM
    assert "upperdir=/run/overlay/overlayfs/rw" in (result.value("root-options") or ""), result.describe()


# ---- 2: URI, port, connections ------------------------------------------------------------------------------------


def established_connections(port: int) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True)
    return len(out.stdout.splitlines())


def test_2_nbd_uri_with_a_port_and_two_connections() -> None:
    with QemuNbd(root_image("squashfs"), connections=4) as server:
        assert server.port != NBD_DEFAULT_PORT
        cmdline = f"root=overlay:{server.url()} rd.root.overlay.nbd.connections=2 ko.test=hold-15,checksum"
        with RunningGuest(Guest(initrd(), cmdline), log=log_path("kiwi-2-nbd-uri-2conn")) as guest:
            guest.wait_for_mark("hold", timeout=BOOT_TIMEOUT)
            connections = established_connections(server.port)
            result = guest.wait(timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
    assert connections == 2, result.describe()
    # One vCPU: one blk-mq queue, so the kernel sends every request over the first connection.
    standby = "/dev/nbd0: the kernel sends requests over 1 of the 2 connections (one per CPU); the rest stand by for failover"
    assert standby in result.console(), result.describe()
    assert mounted(result, "/run/overlay/rootfsbase") == ("/dev/nbd0", "squashfs"), result.describe()


# ---- 3, 4: a write device -----------------------------------------------------------------------------------------


def nbd_with_write_disk(server: NbdServer, cow: Path, extra: str, *, image: Path | None = None, kernel: GuestKernel | None = None) -> Guest:
    """The NBD root with COW as the guest's second disk (the first is a blank scratch disk)."""
    scratch = blank_disk(cow.with_name("scratch.img"), size_mb=8)
    disks = (Disk(scratch, serial="koscratch"), Disk(cow, serial=COW_LABEL))
    cmdline = f"root=overlay:{server.url()} rd.root.overlay.write=LABEL={COW_LABEL} {extra}"
    return Guest(image or initrd(), cmdline, disks=disks, kernel=kernel)


def test_3_nbd_root_with_a_persistent_write_layer_on_the_second_disk(tmp_path: Path) -> None:
    scenario_3(initrd(), tmp_path=tmp_path, name="kiwi-3-persistent")


def scenario_3(initrd: Path, *, tmp_path: Path, name: str, kernel: GuestKernel | None = None) -> None:
    """Two boots with one write device: what the first wrote, the second finds (also tests/test_boot_distro.py)."""
    cow = ext4_disk(tmp_path / "cow.img", size_mb=64, label=COW_LABEL)
    with NbdServer(root_image("squashfs")) as server:
        guest = nbd_with_write_disk(server, cow, "ko.test=marker-file", image=initrd, kernel=kernel)
        first = boot(guest, name=f"{name}-1", timeout=BOOT_TIMEOUT)
        first.expect(root_fstype="overlay", write="ok", marker_file="created")
        second = boot(guest, name=f"{name}-2", timeout=BOOT_TIMEOUT)
    second.expect(root_fstype="overlay")
    assert (second.value("marker-file") or "").startswith("found boot-id="), second.describe()
    assert mounted(second, "/run/overlay/overlayfs") == ("/dev/vdb", "ext4"), second.describe()


def test_4_temporary_keeps_every_write_off_the_write_device(tmp_path: Path) -> None:
    cow = ext4_disk(tmp_path / "cow.img", size_mb=64, label=COW_LABEL)
    before = hashlib.sha256(cow.read_bytes()).hexdigest()
    with NbdServer(root_image("squashfs")) as server:
        guest = nbd_with_write_disk(server, cow, "rd.root.overlay.temporary ko.test=marker-file,write-16M")
        result = boot(guest, name="kiwi-4-temporary", timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", marker_file="created", write_16M="ok")
    assert mounted(result, "/run/overlay") == ("tmpfs", "tmpfs"), result.describe()
    assert not any(line.startswith("/dev/vd") for line in result.mounts), result.describe()
    assert hashlib.sha256(cow.read_bytes()).hexdigest() == before, "the write device changed"


# ---- 5, 6: readonly, size ------------------------------------------------------------------------------------------


def test_5_readonly_root_has_no_overlay() -> None:
    with NbdServer(root_image("squashfs")) as server:
        guest = Guest(initrd(), f"root=overlay:{server.url()} rd.root.overlay.readonly")
        result = boot(guest, name="kiwi-5-readonly", timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="squashfs", write="failed")
    assert (result.value("root-options") or "").split(",")[0] == "ro", result.describe()
    assert not any(" overlay " in line for line in result.mounts), result.describe()


def test_6_a_small_write_layer_fills_up_with_enospc_and_the_system_stays_up() -> None:
    with NbdServer(root_image("squashfs")) as server:
        cmdline = f"root=overlay:{server.url()} rd.root.overlay.size=8M ko.test=write-16M,checksum"
        result = boot(Guest(initrd(), cmdline), name="kiwi-6-size", timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", write_16M="enospc", checksum=busybox_sha256())
    assert "size=8192k" in " ".join(line for line in result.mounts if " /run/overlay tmpfs " in line), result.describe()
    assert result.mark("poweroff") is not None, result.describe()


# ---- 7, 8: AoE and local roots ------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["target", "interface"])
def test_7_aoe_root_by_target_and_by_interface(by: str) -> None:
    scenario_7(initrd(), by=by, name=f"kiwi-7-aoe-{by}")


def scenario_7(initrd: Path, *, by: str, name: str, kernel: GuestKernel | None = None) -> None:
    """The root from vblade, found by target (e0.1) or by interface (also tests/test_boot_distro.py)."""
    with AoeTarget(root_image("squashfs"), shelf=0, slot=1) as target:
        source = target.target if by == "target" else "eth0"
        guest = Guest(initrd, f"root=overlay:aoe={source} ko.test=checksum", user_net=False, taps=(target.tap,), kernel=kernel)
        result = boot(guest, name=name, timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
    assert mounted(result, "/run/overlay/rootfsbase") == ("/dev/etherd/e0.1", "squashfs"), result.describe()


class _ConsoleWatch(io.TextIOBase):
    """A console echo for boot(): ACTION() once, on the first line that holds TEXT."""

    def __init__(self, text: str, action: Callable[[], None]) -> None:
        self.text = text
        self.action = action
        self.line: str | None = None

    def write(self, data: str) -> int:
        if self.line is None and self.text in data:
            self.line = data
            self.action()
        return len(data)


def test_7b_the_aoe_keeper_sees_the_root_stall_in_the_real_root_and_sends_its_read() -> None:
    """vblade stopped (SIGSTOP) while the root reads its device: the keeper, alive after switch_root, says so on the
    console and sends its wake-up read; vblade goes on when that line appears, and the root reads on.

    The aoe driver's own stranding (kiwi_overlay/aoe/keeper.py) cannot be provoked from outside the guest; this is the
    keeper's detection and its read, end to end. A keeper that never speaks fails the test; vblade goes on after
    STALL_LIMIT anyway, so the boot still ends.
    """
    with AoeTarget(root_image("squashfs"), shelf=0, slot=1) as target:
        going_on = threading.Event()

        def go_on() -> None:
            if not going_on.is_set():
                going_on.set()
                target.pause(paused=False)

        def on_mark(mark: Mark) -> None:
            if mark.name == "hold":
                target.pause()  # the root holds 2 s, then reads its whole device from the server

        console = _ConsoleWatch("kiwi-overlay-aoe[", go_on)
        guest = Guest(initrd(), "root=overlay:aoe=e0.1 ko.test=hold-2,read-all", user_net=False, taps=(target.tap,))
        limit = threading.Timer(STALL_LIMIT, go_on)
        limit.start()
        try:
            result = boot(guest, name="kiwi-7b-aoe-keeper", timeout=BOOT_TIMEOUT, echo=console, on_mark=on_mark)
        finally:
            limit.cancel()
            go_on()
    result.expect(root_fstype="overlay", write="ok")
    assert (result.value("read-all") or "").startswith("ok "), result.describe()
    assert console.line is not None and "none completed in 5 s: reading a block to wake the aoe driver" in console.line, (
        f"the keeper did not report the stall within {STALL_LIMIT:g} s\n{result.describe()}"
    )


def test_8_local_root_by_label_on_a_virtio_disk() -> None:
    disk = Disk(root_image("ext4"), serial="koroot", readonly=True)
    guest = Guest(initrd(), f"root=overlay:LABEL={LABEL} ko.test=write-16M", disks=(disk,), user_net=False)
    result = boot(guest, name="kiwi-8-local-label", timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", write_16M="ok")
    assert mounted(result, "/run/overlay/rootfsbase") == ("/dev/vda", "ext4"), result.describe()


# ---- 9, 10, 11: the NBD server down, restarted; shutdown -----------------------------------------------------------


def test_9_nbd_server_down_at_boot_stops_with_a_clear_line_within_the_timeout() -> None:
    server = NbdServer(root_image("squashfs"))  # never started: nothing listens on its port
    cmdline = f"root=overlay:{server.url()} rd.root.overlay.timeout=20 rd.retry=10"
    result = boot(Guest(initrd(), cmdline), name="kiwi-9-server-down", timeout=BOOT_TIMEOUT)
    console = result.console()
    assert not result.reached_root, result.describe()
    assert not result.timed_out, result.describe()  # the boot stopped by itself
    # The step's share of the timeout (the network came first), and the reason, in one line.
    gave_up = re.search(rf"kiwi-overlay: NBD server 10\.0\.2\.2:{server.port}: connection refused \(gave up after (\d+) s", console)
    assert gave_up and int(gave_up[1]) <= 20, result.describe()
    assert "FATAL: kiwi-overlay" in console, result.describe()


def test_9_with_systemd_the_failed_unit_ends_in_poweroff(systemd_networkd_initrd: Path) -> None:
    """The same under systemd: kiwi-overlay.service fails with the line, sysroot.mount's dependency fails, rd.emergency=poweroff."""
    server = NbdServer(root_image("squashfs"))
    cmdline = f"root=overlay:{server.url()} rd.root.overlay.timeout=20"
    result = boot(Guest(systemd_networkd_initrd, cmdline), name="kiwi-9-server-down-systemd", timeout=BOOT_TIMEOUT)
    console = result.console()
    assert not result.reached_root and not result.timed_out, result.describe()
    gave_up = re.search(rf"kiwi-overlay: NBD server 10\.0\.2\.2:{server.port}: connection refused \(gave up after (\d+) s", console)
    assert gave_up and int(gave_up[1]) <= 20, result.describe()
    assert "Powering off." in console, result.describe()


def test_10_nbd_server_restarted_while_the_guest_runs() -> None:
    """The server goes away while the root is in use and comes back: reads stall, then return the right data."""
    with NbdServer(root_image("squashfs")) as server:
        cmdline = f"root=overlay:{server.url()} ko.test=hold-5,checksum"
        with RunningGuest(Guest(initrd(), cmdline), log=log_path("kiwi-10-server-restart")) as guest:
            guest.wait_for_mark("hold", timeout=BOOT_TIMEOUT)
            server.stop()
            time.sleep(20)  # the guest's reads after its hold find no server
            server.start()
            result = guest.wait(timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
    assert result.mark("poweroff") is not None, result.describe()
    # The outage was seen, the reads waited for the reconnect (not failed), then went on.
    console = result.console()
    lost, back, read = (console.find(text) for text in ("/dev/nbd0: connection to", "/dev/nbd0: reconnected to", "KO-MARK checksum="))
    assert -1 < lost < back < read, result.describe()
    assert "I/O error" not in console, result.describe()


@pytest.fixture(scope="module")
def shutdown_disk(tmp_path_factory: pytest.TempPathFactory) -> Disk:
    return initrd_disk(initrd(), output=tmp_path_factory.mktemp("shutdown") / "initrd.squashfs")


def test_11_poweroff_with_the_nbd_root_disconnects_cleanly(shutdown_disk: Disk) -> None:
    """dracut's shutdown initramfs runs the module's hook: the NBD device is disconnected (NBD_CMD_DISC), no hang."""
    with QemuNbd(root_image("squashfs"), trace=True) as server:
        cmdline = f"root=overlay:{server.url()} ko.test=write-16M,shutdown-initramfs"
        result = boot(Guest(initrd(), cmdline, disks=(shutdown_disk,)), name="kiwi-11-shutdown", timeout=BOOT_TIMEOUT)
        trace = server.log.read_text(errors="replace")
    result.expect(root_fstype="overlay", write="ok", shutdown_initramfs="pivot")
    assert result.returncode == 0 and not result.timed_out, result.describe()
    assert "Unmounted /oldroot." in result.console(), result.describe()
    assert re.search(r"type = 2 \(disconnect\)", trace), f"qemu-nbd saw no NBD_CMD_DISC\n{result.describe()}"


# ---- 12: systemd with systemd-networkd ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_networkd_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dracut's default network flavour on a systemd host: 40network picks systemd-networkd when it is installed."""
    output = tmp_path_factory.mktemp("initrd") / "kiwi-overlay-systemd-networkd.img"
    return kiwi_overlay_initrd(output=output, systemd=True, extra_modules=("network", "systemd-networkd"))


def test_12_systemd_initrd_with_systemd_networkd_boots_scenario_1(systemd_networkd_initrd: Path) -> None:
    """Where KIWI's original module never boots (facts.md): systemd-networkd runs, no dracut netroot handler does."""
    with NbdServer(root_image("squashfs"), port=NBD_DEFAULT_PORT) as server:
        cmdline = f"root=overlay:nbd=10.0.2.2:{server.name} ko.test=write-16M,checksum"
        result = boot(Guest(systemd_networkd_initrd, cmdline), name="kiwi-12-systemd-networkd", timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", write_16M="ok", checksum=busybox_sha256())  # NBD reads after networkd stopped
    assert mounted(result, "/run/overlay/rootfsbase") == ("/dev/nbd0", "squashfs"), result.describe()
    assert mounted(result, "/run/overlay") == ("tmpfs", "tmpfs"), result.describe()
    assert "Started systemd-networkd.service" in re.sub(r"\x1b\[[0-9;]*m", "", result.console()), result.describe()


# ---- issue 17.4: a warning before the write layer is full ---------------------------------------------------------


@pytest.mark.parametrize("systemd", [False, True], ids=["no-systemd", "systemd"])
def test_the_watch_warns_at_80_90_95_percent_of_the_tmpfs_write_layer(systemd: bool) -> None:
    """kiwi-overlay-watch, started in the initrd, warns from the booted root; one warning per level, no repeats.

    With systemd it outlives the SIGTERM that systemd sends every process before it switches root.
    """
    with NbdServer(root_image("squashfs"), port=NBD_DEFAULT_PORT) as server:
        cmdline = f"root=overlay:nbd=10.0.2.2:{server.name} rd.root.overlay.size=16m ko.test=fill-overlay"
        flavour = "systemd" if systemd else "no-systemd"
        result = boot(Guest(session_initrd(systemd=systemd), cmdline), name=f"kiwi-watch-fill-{flavour}", timeout=BOOT_TIMEOUT)
    assert result.reached_root, result.describe()
    for step, warnings in (("82", 1), ("91", 2), ("96", 3)):
        assert (result.value(f"fill-overlay-{step}") or "").endswith(f" warnings={warnings}"), result.describe()
    found = re.findall(
        r"kiwi-overlay-watch\[\d+\]: the overlay write layer \(/run/overlay/overlayfs, 16 MiB\) is (\d+) % full", result.console()
    )
    percents = [int(percent) for percent in found]
    assert len(percents) == 3, result.describe()
    assert 80 <= percents[0] < 90 <= percents[1] < 95 <= percents[2], result.describe()


# ---- issue 17.2: several servers -----------------------------------------------------------------------------------


def test_the_other_server_takes_over_after_switch_root() -> None:
    """root=overlay:URI1,URI2: the server the device is attached through stops while the booted root holds;
    the device is read whole through the other.

    Either may be the one: the first that answers is used, and under TCG the first server's greeting
    can miss the first attempt's 0.5 s.
    """
    image = root_image("squashfs")
    with NbdServer(image) as first, NbdServer(image) as second:
        cmdline = f"root=overlay:{first.url()},{second.url()} ko.test=nbd-server,hold-15,read-all,checksum"
        with RunningGuest(Guest(initrd(), cmdline), log=log_path("kiwi-failover")) as guest:
            attached_url = guest.wait_for_mark("nbd-server", timeout=BOOT_TIMEOUT).value
            assert attached_url in (first.url(), second.url()), f"attached through {attached_url}; console log {guest.log}"
            attached, other = (first, second) if attached_url == first.url() else (second, first)
            guest.wait_for_mark("hold", timeout=BOOT_TIMEOUT)
            attached.stop()
            result = guest.wait(timeout=BOOT_TIMEOUT)
    assert (result.value("read-all") or "").startswith("ok device=/dev/nbd0"), result.describe()
    result.expect(checksum=busybox_sha256())
    assert "kiwi-overlay-nbd[" in result.console() and f"{other.url()} took over from {attached.url()} (same image)" in result.console(), (
        result.describe()
    )
