"""Issue 14 item 9 in QEMU: a poweroff through dracut's shutdown initramfs leaves the write layer clean."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_boot_reliability import COW_LABEL, dumpe2fs, local_with_cow

from tests.boot.initrd import session_initrd
from tests.boot.qemu import boot, initrd_disk
from tests.boot.rootfs import ext4_disk

pytestmark = pytest.mark.boot


def test_poweroff_leaves_the_write_layer_clean(tmp_path: Path) -> None:
    """Item 9: dracut's shutdown initramfs runs the hook; the write device is clean afterwards (no journal to replay)."""
    cow = ext4_disk(tmp_path / "cow.img", size_mb=64, label=COW_LABEL)
    shutdown_disk = initrd_disk(session_initrd(systemd=False), output=tmp_path / "initrd.squashfs")
    result = boot(local_with_cow(cow, "marker-file,write-16M,shutdown-initramfs", shutdown_disk), name="rel-9-poweroff")
    result.expect(root_fstype="overlay", write="ok", marker_file="created", shutdown_initramfs="pivot")
    assert result.returncode == 0 and not result.timed_out, result.describe()
    header = dumpe2fs(cow)
    assert "needs_recovery" not in header and "Filesystem state:         clean" in header, header
