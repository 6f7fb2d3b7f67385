"""The root assembled on real loop devices: read layers, write layers, every option, every failure undone."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from blockdev import blank_image, loop_device, make_image, make_tree, mounts_under, unique_label, unmount_under

from kiwi_overlay.boot import prepare_root
from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.config.parse import parse_plan
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.overlay import is_mounted

pytestmark = pytest.mark.root


@dataclass(frozen=True)
class Machine:
    """A pretend boot: the run dir and sysroot of one test, and the command line it boots with."""

    tmp: Path

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def sysroot(self) -> Path:
        return self.tmp / "sysroot"

    def boot(self, cmdline: str, *, mount_root: bool = True) -> None:
        plan = parse_plan(KernelCmdline(cmdline))
        prepare_root(plan, run_dir=self.run_dir, sysroot=self.sysroot, mount_root=mount_root)

    def shut_down(self) -> None:
        """Unmount like a shutdown: root first, then the layers; nothing lazy."""
        unmount_under(self.run_dir, self.sysroot, lazy=False)

    def mounted(self) -> list[str]:
        return mounts_under(self.run_dir, self.sysroot)

    def fstype(self, path: Path) -> str:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if fields[1] == str(path):
                return fields[2]
        raise AssertionError(f"{path} is not mounted")


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    machine = Machine(tmp_path)
    yield machine
    unmount_under(machine.run_dir, machine.sysroot)


@pytest.fixture
def squashfs_root(tmp_path: Path) -> Iterator[Path]:
    image = make_image("squashfs", tmp_path / "root.squashfs", tree=make_tree(tmp_path / "tree"))
    with loop_device(image, read_only=True) as device:
        yield device


@pytest.fixture
def write_label() -> str:
    return unique_label()


@pytest.fixture
def write_device(tmp_path: Path, write_label: str) -> Iterator[Path]:
    with loop_device(make_image("ext4", tmp_path / "cow.ext4", label=write_label)) as device:
        yield device


def local(device: Path) -> str:
    return f"root=overlay:UNIXNODE={device.name}"


@pytest.mark.parametrize("fstype", ["squashfs", "erofs", "ext4"])
def test_read_layer_of_each_filesystem(machine: Machine, tmp_path: Path, fstype: str) -> None:
    image = make_image(fstype, tmp_path / f"root.{fstype}", tree=make_tree(tmp_path / "tree"))
    with loop_device(image, read_only=True) as device:
        machine.boot(local(device))
        assert machine.fstype(machine.run_dir / "rootfsbase") == fstype
        assert machine.fstype(machine.run_dir) == "tmpfs"
        assert machine.fstype(machine.sysroot) == "overlay"
        assert (machine.sysroot / "etc/marker").read_text() == "image A\n"
        # / looks like the read layer's /, although it is the write layer's directory
        base = (machine.run_dir / "rootfsbase").stat()
        assert (machine.sysroot.stat().st_mode, machine.sysroot.stat().st_uid) == (base.st_mode, base.st_uid)
        assert base.st_mode == (0o40755 if fstype == "ext4" else 0o40555)  # mkfs.ext4 -d keeps its own / mode
        (machine.sysroot / "etc/marker").write_text("changed\n")
        (machine.sysroot / "usr/lib/data").unlink()
        # the change lives in the write layer; the read layer is untouched and read-only
        assert (machine.run_dir / "overlayfs/rw/etc/marker").read_text() == "changed\n"
        assert (machine.run_dir / "rootfsbase/etc/marker").read_text() == "image A\n"
        with pytest.raises(OSError) as error:
            (machine.run_dir / "rootfsbase/etc/new").write_text("x")
        assert error.value.errno == errno.EROFS
        machine.shut_down()
    assert machine.mounted() == []


def test_rootfstype_overrides_detection(machine: Machine, squashfs_root: Path) -> None:
    machine.boot(f"{local(squashfs_root)} rootfstype=squashfs")
    assert machine.fstype(machine.run_dir / "rootfsbase") == "squashfs"


def test_wrong_rootfstype_fails_and_undoes(machine: Machine, squashfs_root: Path) -> None:
    with pytest.raises(KiwiOverlayError, match=r"cannot mount the read layer at .*rootfsbase: .*") as error:
        machine.boot(f"{local(squashfs_root)} rootfstype=ext4")
    assert "\n" not in str(error.value)
    assert machine.mounted() == []
    assert not machine.run_dir.exists()


def test_read_device_without_filesystem(machine: Machine, tmp_path: Path) -> None:
    pattern = r"holds no squashfs, erofs, ext4, xfs, btrfs filesystem .*rootfstype="
    with loop_device(blank_image(tmp_path / "zeros")) as device, pytest.raises(KiwiOverlayError, match=pattern):
        machine.boot(local(device))
    assert machine.mounted() == []


def test_tmpfs_size_is_enforced(machine: Machine, squashfs_root: Path) -> None:
    machine.boot(f"{local(squashfs_root)} rd.root.overlay.size=4m")
    with pytest.raises(OSError) as error, (machine.sysroot / "big").open("wb") as big:
        for _ in range(8):
            big.write(b"\0" * (1 << 20))
            big.flush()
            os.fsync(big.fileno())
    assert error.value.errno == errno.ENOSPC


def test_default_tmpfs_size_is_half_of_ram(machine: Machine, squashfs_root: Path) -> None:
    machine.boot(local(squashfs_root))
    stat = os.statvfs(machine.run_dir)
    memtotal_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    # the kernel takes the percentage of MemTotal and rounds up to a page
    assert abs(stat.f_blocks * stat.f_frsize - memtotal_kib * 1024 // 2) < stat.f_frsize


@pytest.mark.parametrize("by", ["path", "label"])
def test_write_device_persists(machine: Machine, squashfs_root: Path, write_device: Path, write_label: str, by: str) -> None:
    spec = str(write_device) if by == "path" else f"LABEL={write_label}"
    cmdline = f"{local(squashfs_root)} rd.root.overlay.write={spec}"
    machine.boot(cmdline)
    assert machine.fstype(machine.run_dir / "overlayfs") == "ext4"
    (machine.sysroot / "etc/marker").write_text("persistent\n")
    (machine.sysroot / "home").mkdir()
    machine.shut_down()
    assert machine.mounted() == []
    machine.boot(cmdline)
    assert (machine.sysroot / "etc/marker").read_text() == "persistent\n"
    assert (machine.sysroot / "home").is_dir()


def test_reset_empties_the_write_layer(machine: Machine, squashfs_root: Path, write_device: Path) -> None:
    cmdline = f"{local(squashfs_root)} rd.root.overlay.write={write_device}"
    machine.boot(cmdline)
    (machine.sysroot / "etc/marker").write_text("persistent\n")
    machine.shut_down()
    machine.boot(cmdline + " rd.root.overlay.reset")
    assert (machine.sysroot / "etc/marker").read_text() == "image A\n"
    assert os.listdir(machine.run_dir / "overlayfs/rw") == []


def test_temporary_keeps_the_write_device_untouched(machine: Machine, squashfs_root: Path, write_device: Path) -> None:
    machine.boot(f"{local(squashfs_root)} rd.root.overlay.write={write_device} rd.root.overlay.temporary")
    assert not is_mounted(machine.run_dir / "overlayfs")
    (machine.sysroot / "etc/marker").write_text("in RAM\n")
    assert (machine.run_dir / "overlayfs/rw/etc/marker").exists()
    machine.shut_down()
    (machine.tmp / "check").mkdir()
    subprocess.run(["mount", "-o", "ro", str(write_device), str(machine.tmp / "check")], check=True)
    try:
        assert sorted(os.listdir(machine.tmp / "check")) == ["lost+found"]
    finally:
        subprocess.run(["umount", str(machine.tmp / "check")], check=True)


def test_readonly_is_a_read_only_bind(machine: Machine, squashfs_root: Path, write_device: Path) -> None:
    machine.boot(f"{local(squashfs_root)} rd.root.overlay.write={write_device} rd.root.overlay.readonly")
    assert machine.fstype(machine.sysroot) == "squashfs"
    assert (machine.sysroot / "etc/marker").read_text() == "image A\n"
    with pytest.raises(OSError) as error:
        (machine.sysroot / "etc/new").write_text("x")
    assert error.value.errno == errno.EROFS
    assert not (machine.run_dir / "overlayfs/rw").exists()
    assert not is_mounted(machine.run_dir / "overlayfs")


@pytest.mark.parametrize("fstype", ["erofs", "ext4"])
def test_write_layer_of_another_image(machine: Machine, tmp_path: Path, write_device: Path, fstype: str) -> None:
    # index=on makes overlayfs record the read layer's UUID and root in the write layer and verify them;
    # squashfs has no UUID, so overlayfs cannot tell two squashfs images apart.
    image_a = make_image(fstype, tmp_path / "a.img", tree=make_tree(tmp_path / "a"))
    image_b = make_image(fstype, tmp_path / "b.img", tree=make_tree(tmp_path / "b", marker="image B"))
    cmdline = f"rd.root.overlay.write={write_device} rootflags=index=on"
    with loop_device(image_a, read_only=True) as device_a:
        machine.boot(f"{local(device_a)} {cmdline}")
        (machine.sysroot / "etc/marker").write_text("made on A\n")
        machine.shut_down()
    with loop_device(image_b, read_only=True) as device_b:
        with pytest.raises(KiwiOverlayError) as error:
            machine.boot(f"{local(device_b)} {cmdline}")
        assert str(error.value) == (
            f"the write layer on {write_device} was made for a different read image "
            "(overlayfs: failed to verify upper root origin); boot once with rd.root.overlay.reset to empty it"
        )
        assert machine.mounted() == []
        machine.boot(f"{local(device_b)} {cmdline} rd.root.overlay.reset")
        assert (machine.sysroot / "etc/marker").read_text() == "image B\n"
        machine.shut_down()


@pytest.mark.parametrize("problem", ["missing", "unformatted"])
def test_unusable_write_device_stops_the_boot(machine: Machine, tmp_path: Path, squashfs_root: Path, problem: str) -> None:
    with loop_device(blank_image(tmp_path / "zeros")) as blank:
        spec = f"LABEL={unique_label()}" if problem == "missing" else str(blank)
        with pytest.raises(KiwiOverlayError) as error:
            machine.boot(f"{local(squashfs_root)} rd.root.overlay.write={spec} rd.root.overlay.timeout=0.5")
    message = str(error.value)
    assert message.startswith("rd.root.overlay.write=")
    assert "rd.root.overlay.write.fallback=tmpfs" in message
    assert ("did not appear within 0.5 s" if problem == "missing" else "holds no") in message
    assert machine.mounted() == []
    assert not machine.run_dir.exists()
    assert not machine.sysroot.exists()


@pytest.mark.parametrize("problem", ["missing", "unformatted"])
def test_unusable_write_device_with_fallback(machine: Machine, tmp_path: Path, squashfs_root: Path, problem: str) -> None:
    with loop_device(blank_image(tmp_path / "zeros")) as blank:
        spec = f"LABEL={unique_label()}" if problem == "missing" else str(blank)
        extra = "rd.root.overlay.timeout=0.5 rd.root.overlay.write.fallback=tmpfs"
        machine.boot(f"{local(squashfs_root)} rd.root.overlay.write={spec} {extra}")
        assert not is_mounted(machine.run_dir / "overlayfs")
        (machine.sysroot / "etc/marker").write_text("in RAM\n")
        assert (machine.run_dir / "overlayfs/rw/etc/marker").exists()
        machine.shut_down()


def test_prepare_leaves_the_root_to_systemd(machine: Machine, squashfs_root: Path) -> None:
    machine.boot(local(squashfs_root), mount_root=False)
    assert [Path(point).relative_to(machine.tmp) for point in machine.mounted()] == [Path("run"), Path("run/rootfsbase")]
    assert (machine.run_dir / "overlayfs/rw").is_dir()
    assert (machine.run_dir / "overlayfs/work").is_dir()


def test_second_assembly_is_refused(machine: Machine, squashfs_root: Path) -> None:
    machine.boot(local(squashfs_root))
    before = machine.mounted()
    with pytest.raises(KiwiOverlayError, match="already a mount point"):
        machine.boot(local(squashfs_root))
    assert machine.mounted() == before


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiwi_overlay", *args], capture_output=True, text=True)


def test_cli_mount_gives_a_writable_overlay(machine: Machine, squashfs_root: Path) -> None:
    """The issue's acceptance check: kiwi-overlay mount --cmdline 'root=overlay:UNIXNODE=loopN' --sysroot DIR."""
    result = run_cli("mount", "--cmdline", local(squashfs_root), "--sysroot", str(machine.sysroot), "--run-dir", str(machine.run_dir))
    assert result.returncode == 0, result.stderr
    assert machine.fstype(machine.sysroot) == "overlay"
    (machine.sysroot / "etc/new").write_text("written\n")
    assert (machine.sysroot / "etc/new").read_text() == "written\n"


def test_cli_failure_is_one_line(machine: Machine) -> None:
    label = unique_label()
    result = run_cli(
        "mount",
        "--cmdline",
        f"root=overlay:LABEL={label} rd.root.overlay.timeout=0.5",
        "--sysroot",
        str(machine.sysroot),
        "--run-dir",
        str(machine.run_dir),
    )
    assert result.returncode == 2
    # progress lines, then the error as the last line
    lines = result.stderr.splitlines()
    assert lines[-1] == f"kiwi-overlay: /dev/disk/by-label/{label} did not appear within 0.5 s (rd.root.overlay.timeout=0.5)"
    assert lines[:-1] == [f"kiwi-overlay: waiting up to 0.5 s for /dev/disk/by-label/{label}"]
    assert machine.mounted() == []


def test_cli_refuses_a_root_that_is_not_overlay(machine: Machine) -> None:
    result = run_cli("mount", "--cmdline", "root=/dev/sda1 ro", "--sysroot", str(machine.sysroot), "--run-dir", str(machine.run_dir))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "kiwi-overlay: root= does not start with overlay: (not an overlay root); e.g. root=overlay:LABEL=root"
    ]
    assert not machine.run_dir.exists()


def test_write_protected_write_device_is_not_used_read_only(machine: Machine, tmp_path: Path, squashfs_root: Path) -> None:
    image = make_image("ext4", tmp_path / "cow.ext4")
    with loop_device(image, read_only=True) as device, pytest.raises(KiwiOverlayError) as error:
        machine.boot(f"{local(squashfs_root)} rd.root.overlay.write={device}")
    message = str(error.value)
    assert message.startswith(f"rd.root.overlay.write={device}: cannot mount the write layer at ")
    assert "write-protected" in message
    assert message.endswith("; add rd.root.overlay.write.fallback=tmpfs to boot with writes in RAM")
    assert machine.mounted() == []


def test_sigterm_undoes_the_mounts(machine: Machine, squashfs_root: Path) -> None:
    """systemd's start timeout sends SIGTERM: whatever was mounted is unmounted."""
    label = unique_label()
    cmdline = f"{local(squashfs_root)} rd.root.overlay.write=LABEL={label} rd.root.overlay.timeout=600"
    process = subprocess.Popen(
        [sys.executable, "-m", "kiwi_overlay", "prepare", "--run-dir", str(machine.run_dir), "--cmdline", cmdline],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        line = process.stderr.readline()
        assert line == f"kiwi-overlay: waiting up to 600 s for /dev/disk/by-label/{label}\n"
        assert len(machine.mounted()) == 2  # tmpfs and read layer, while waiting for the write device
        process.terminate()
        assert process.wait(timeout=30) == 143
    finally:
        process.kill()
        process.wait()
    assert machine.mounted() == []
    assert not machine.run_dir.exists()


def test_status_of_the_running_root(machine: Machine, squashfs_root: Path, tmp_path: Path) -> None:
    from kiwi_overlay.status import collect, describe

    machine.boot(f"{local(squashfs_root)} rd.root.overlay.size=4m")
    (machine.sysroot / "two-megabytes").write_bytes(b"x" * (2 << 20))
    state = tmp_path / "state"
    state.mkdir()
    record = {
        "device": "/dev/nbd0",
        "index": 0,
        "uri": "nbd://10.0.0.1:10809/rootfs",
        "servers": ["nbd://10.0.0.1:10809/rootfs", "nbd://10.0.0.2:10809/rootfs"],
        "server": "nbd://10.0.0.2:10809/rootfs",
        "connection": "reconnecting",
        "since": 0,
        "pid": os.getpid(),
        "mode": "netlink",
    }
    (state / "nbd0.json").write_text(json.dumps(record))
    status = collect(run_dir=machine.run_dir, state_dir=state)
    assert status["read_device"] == str(squashfs_root)
    assert set(status["layers"]) == {"tmpfs", "read"}
    assert status["layers"]["tmpfs"]["path"] == str(machine.run_dir)
    fill = status["write_layer"]["fill"]
    assert fill["size"] == 4 << 20
    assert 50 <= fill["percent"] <= 60
    text = describe(status)
    assert f"read layer:  {machine.run_dir}/rootfsbase <- {squashfs_root} [squashfs;" in text
    assert f"write fill:  {fill['percent']:g} % (" in text
    assert "server:      nbd://10.0.0.2:10809/rootfs, of nbd://10.0.0.1:10809/rootfs, nbd://10.0.0.2:10809/rootfs" in text
    assert "connection:  reconnecting since " in text
    result = run_cli("status", "--run-dir", str(machine.run_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["read_device"] == str(squashfs_root)


def test_status_without_an_overlay_root(tmp_path: Path) -> None:
    result = run_cli("status", "--run-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == f"no overlay root: nothing is mounted at {tmp_path}/rootfsbase\n"


def test_is_mounted_reads_the_kernels_table(tmp_path: Path) -> None:
    """A mount point whose name the kernel escapes (a space, a backslash), a bind mount on the same file system, a plain directory."""
    odd, bound, plain = tmp_path / "a b\\c", tmp_path / "bound", tmp_path / "plain"
    for directory in (odd, bound, plain):
        directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(odd)], check=True)
    try:
        subprocess.run(["mount", "--bind", str(plain), str(bound)], check=True)
        try:
            assert is_mounted(odd)
            assert is_mounted(bound)
            assert not is_mounted(plain)
            assert not is_mounted(odd / ".." / "plain")
        finally:
            subprocess.run(["umount", str(bound)], check=True)
    finally:
        subprocess.run(["umount", str(odd)], check=True)
    assert not is_mounted(odd)
