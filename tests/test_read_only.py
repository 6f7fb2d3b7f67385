"""Issue 14 item 5: the read layer is never written, even on a writable device whose journal needs replay.

ext4 replays its journal on a `ro` mount of a writable device (xfs and btrfs their logs): one client
would write to the image every client boots from. The read device is made read-only (BLKROSET) and
journalled filesystems are mounted without recovery.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from blockdev import loop_device, make_image, make_tree
from test_overlay import Machine, local, machine  # noqa: F401 -- the fixture

from kiwi_overlay.layout import read_options

pytestmark = pytest.mark.root


def ext4_needing_replay(tmp_path: Path) -> Path:
    """An ext4 image with a committed transaction in its journal (needs_recovery), written by debugfs."""
    image = make_image("ext4", tmp_path / "root.ext4", tree=make_tree(tmp_path / "tree"))
    block = tmp_path / "block"
    block.write_bytes(b"journalled block\n".ljust(1024, b"."))
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)], input=f"jo\njw -b 300 {block}\njc\n", text=True, check=True, capture_output=True
    )
    features = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout
    assert "needs_recovery" in features
    return image


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_journal_that_needs_replay_is_not_replayed_on_a_writable_device(machine: Machine, tmp_path: Path) -> None:  # noqa: F811
    image = ext4_needing_replay(tmp_path)
    before = sha256(image)
    with loop_device(image) as device:  # writable, as a writable export would be
        machine.boot(local(device))
        assert (machine.sysroot / "etc/marker").read_text() == "image A\n"
        assert Path(f"/sys/class/block/{device.name}/ro").read_text() == "1\n"
        (machine.sysroot / "etc/marker").write_text("changed\n")  # into the write layer
        machine.shut_down()
    assert sha256(image) == before


def test_a_failed_boot_leaves_the_device_writable_again(machine: Machine, tmp_path: Path) -> None:  # noqa: F811
    image = make_image("ext4", tmp_path / "root.ext4", tree=make_tree(tmp_path / "tree"))
    with loop_device(image) as device:
        with pytest.raises(Exception, match="cannot mount the read layer"):
            machine.boot(local(device) + " rootfstype=xfs")
        assert Path(f"/sys/class/block/{device.name}/ro").read_text() == "0\n"


def test_mount_options_without_recovery() -> None:
    assert read_options("ext4") == ("ro", "noload")
    assert read_options("xfs") == ("ro", "norecovery")
    assert read_options("btrfs") == ("ro", "rescue=nologreplay")
    assert read_options("squashfs") == ("ro",)
    assert read_options(None) == ("ro",)
