"""Issue 14 item 9: a persistent write layer is checked by its filesystem's own tool before it is mounted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from blockdev import loop_device, make_image
from test_overlay import Machine, local, machine, squashfs_root  # noqa: F401 -- fixtures

pytestmark = pytest.mark.root


def state(image: Path) -> str:
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Filesystem state:"))


def damaged_write_layer(tmp_path: Path) -> Path:
    """An ext4 write layer marked as having errors (what the kernel records after it met corruption)."""
    image = make_image("ext4", tmp_path / "cow.ext4")
    subprocess.run(["debugfs", "-w", "-R", "ssv state 2", str(image)], check=True, capture_output=True)
    assert state(image) == "not clean with errors"
    return image


def test_an_ext4_write_layer_is_checked_and_repaired_before_the_mount(
    machine: Machine,  # noqa: F811
    squashfs_root: Path,  # noqa: F811
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    image = damaged_write_layer(tmp_path)
    with loop_device(image) as device:
        machine.boot(f"{local(squashfs_root)} rd.root.overlay.write={device}")
        (machine.sysroot / "etc/marker").write_text("persisted\n")
        machine.shut_down()
    assert state(image) == "clean"
    assert f"kiwi-overlay: checked the write layer {device} (e2fsck -p: errors fixed)" in capfd.readouterr().err


def test_the_check_can_be_skipped(machine: Machine, squashfs_root: Path, tmp_path: Path) -> None:  # noqa: F811
    image = damaged_write_layer(tmp_path)
    with loop_device(image) as device:
        machine.boot(f"{local(squashfs_root)} rd.root.overlay.write={device} rd.root.overlay.write.fsck=0")
        machine.shut_down()
    assert state(image) == "not clean with errors"
