"""Issue 17, item 1: the read layer through dm-verity (rd.root.overlay.verity) in QEMU.

The test root as squashfs with 64 KiB of free space after the filesystem (covered by the hash tree,
read by no one but `ko.test=read-all`), formatted by `kiwi-overlay verity format`, served by
nbd-server, booted with the initrds built with kiwi_overlay_verity="yes" (session_initrd(verity=True)).
Four guests: the good image boots from the verity device (without and with systemd in
the initrd); a byte changed in the free space boots but reading it gives an I/O error and the
kernel's dm-verity line; a byte changed in the filesystem superblock stops the boot with
kiwi-overlay's one line.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from kiwi_overlay.verity import BLOCK, MAPPER, data_blocks_of, format_image
from tests.boot.initrd import session_initrd
from tests.boot.qemu import BootResult, Guest, boot
from tests.boot.rootfs import root_image
from tests.boot.servers import NbdServer
from tests.test_boot_kiwi import busybox_sha256, mounted

pytestmark = pytest.mark.boot

BOOT_TIMEOUT = 300.0
FREE_SPACE = 64 << 10


def verity_image(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the squashfs test root, FREE_SPACE longer, with its hash tree appended; (image, root hash)."""
    image = tmp_path / "root.verity"
    shutil.copyfile(root_image("squashfs"), image)
    with image.open("r+b") as handle:
        handle.truncate(-(-image.stat().st_size // BLOCK) * BLOCK + FREE_SPACE)
    return image, format_image(image)


def flip_byte(image: Path, offset: int) -> None:
    with image.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0xFF]))


def boot_verity(image: Path, root_hash: str, *, name: str, actions: str, systemd: bool = False) -> BootResult:
    with NbdServer(image) as server:
        cmdline = f"root=overlay:{server.url()} rd.root.overlay.verity={root_hash} ko.test={actions} ko.dev=/dev/dm-0"
        return boot(Guest(session_initrd(systemd=systemd, verity=True), cmdline), name=name, timeout=BOOT_TIMEOUT)


def test_verity_root_boots_from_the_verity_device(tmp_path: Path) -> None:
    image, root_hash = verity_image(tmp_path)
    result = boot_verity(image, root_hash, name="verity-good", actions="checksum,write-16M,read-all")
    result.expect(root_fstype="overlay", write="ok", write_16M="ok", checksum=busybox_sha256())
    assert mounted(result, "/run/overlay/rootfsbase") == (str(MAPPER), "squashfs"), result.describe()
    assert (result.value("read-all") or "").startswith("ok device=/dev/dm-0"), result.describe()
    assert "every read is verified by dm-verity" in result.console(), result.describe()


def test_verity_root_boots_with_systemd_in_the_initrd(tmp_path: Path) -> None:
    """kiwi-overlay.service opens the verity device while systemd-udevd runs (libdevmapper does not wait for it)."""
    image, root_hash = verity_image(tmp_path)
    result = boot_verity(image, root_hash, name="verity-good-systemd", actions="checksum", systemd=True)
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
    assert mounted(result, "/run/overlay/rootfsbase") == (str(MAPPER), "squashfs"), result.describe()


def test_a_changed_data_byte_reads_as_an_io_error_with_the_kernels_line(tmp_path: Path) -> None:
    image, root_hash = verity_image(tmp_path)
    data_blocks = data_blocks_of(image.stat().st_size)
    assert data_blocks is not None
    flip_byte(image, data_blocks * BLOCK - FREE_SPACE // 2)  # in the free space after the filesystem
    result = boot_verity(image, root_hash, name="verity-data-changed", actions="checksum,read-all")
    result.expect(root_fstype="overlay", checksum=busybox_sha256())  # the untouched blocks read as before
    assert (result.value("read-all") or "").startswith("failed device=/dev/dm-0"), result.describe()
    assert "Input/output error" in (result.value("read-all") or ""), result.describe()
    corrupted_block = (data_blocks * BLOCK - FREE_SPACE // 2) // BLOCK
    assert re.search(rf"device-mapper: verity: \S+: data block {corrupted_block} is corrupted", result.console()), result.describe()


def test_a_changed_filesystem_superblock_stops_the_boot_with_one_line(tmp_path: Path) -> None:
    image, root_hash = verity_image(tmp_path)
    flip_byte(image, 0)  # squashfs's magic
    result = boot_verity(image, root_hash, name="verity-superblock-changed", actions="checksum")
    assert not result.reached_root and not result.timed_out, result.describe()
    lines = [line for line in result.console().splitlines() if "kiwi-overlay: rd.root.overlay.verity=" in line]
    assert len(lines) == 1 and "fails verification at block 0" in lines[0], result.describe()
