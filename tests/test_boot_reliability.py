"""Issue 14 items 5 and 9 in QEMU: the read image is never written, a power cut loses nothing that
was synced.

Boots the session's no-systemd kiwi-overlay initrd (tests/boot/initrd.py) into the test root;
the guest reports through the harness's result channel (tests/boot/qemu.py).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.boot.initrd import session_initrd
from tests.boot.qemu import Disk, Guest, RunningGuest, boot, log_path
from tests.boot.rootfs import LABEL, ext4_disk, root_image
from tests.boot.servers import QemuNbd

pytestmark = pytest.mark.boot

BOOT_TIMEOUT = 300.0
COW_LABEL = "kocow"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dumpe2fs(image: Path) -> str:
    return subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout


def ext4_root_needing_replay(tmp_path: Path) -> Path:
    """A copy of the ext4 test root with a committed transaction in its journal (for a free block)."""
    image = tmp_path / "root.ext4"
    shutil.copyfile(root_image("ext4"), image)
    free = subprocess.run(["debugfs", "-R", "ffb 1 3000", str(image)], capture_output=True, text=True, check=True).stdout.split()[-1]
    block = tmp_path / "block"
    block.write_bytes(b"journalled block\n".ljust(1024, b"."))  # one block of the 1 KiB-block test root
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)], input=f"jo\njw -b {free} {block}\njc\n", text=True, check=True, capture_output=True
    )
    assert "needs_recovery" in dumpe2fs(image)
    return image


def test_a_writable_export_whose_journal_needs_replay_is_byte_identical_after_the_boot(tmp_path: Path) -> None:
    """Item 5: the kernel device is read-only (NBD flag, BLKROSET) and ext4 is mounted with noload."""
    image = ext4_root_needing_replay(tmp_path)
    before = sha256(image)
    with QemuNbd(image, readonly=False) as server:
        result = boot(Guest(session_initrd(systemd=False), f"root=overlay:{server.url()} ko.test=checksum"), name="rel-5-replay")
    result.expect(root_fstype="overlay", write="ok")
    read_layer = next(line for line in result.mounts if " /run/overlay/rootfsbase " in line)
    assert read_layer.startswith("/dev/nbd0 /run/overlay/rootfsbase ext4 ro,") and "norecovery" in read_layer, read_layer
    assert sha256(image) == before, "the boot wrote to the image"


def local_with_cow(cow: Path, actions: str, *extra: Disk) -> Guest:
    disks = (Disk(root_image("ext4"), serial="koroot", readonly=True), Disk(cow, serial=COW_LABEL), *extra)
    cmdline = f"root=overlay:LABEL={LABEL} rd.root.overlay.write=LABEL={COW_LABEL} rd.driver.pre=squashfs ko.test={actions}"
    return Guest(session_initrd(systemd=False), cmdline, disks=disks, user_net=False)


def test_killed_during_writes_the_next_boot_finds_what_was_synced(tmp_path: Path) -> None:
    """Item 9: QEMU killed hard while the guest writes; the next boot checks and mounts the layer."""
    cow = ext4_disk(tmp_path / "cow.img", size_mb=64, label=COW_LABEL)
    with RunningGuest(local_with_cow(cow, "sync-then-write"), log=log_path("rel-9-power-cut-1")) as guest:
        synced = guest.wait_for_mark("synced", timeout=BOOT_TIMEOUT)
        time.sleep(3)  # writes go on
        guest.kill()
        first = guest.wait(timeout=BOOT_TIMEOUT)
    assert synced.value.startswith("boot-id="), first.describe()
    assert "needs_recovery" in dumpe2fs(cow)  # a real power cut: the journal was live
    second = boot(local_with_cow(cow, "synced-check"), name="rel-9-power-cut-2", timeout=BOOT_TIMEOUT)
    second.expect(root_fstype="overlay", write="ok", synced_found=synced.value)
