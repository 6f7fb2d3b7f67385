"""Block devices: wait for one to appear, and tell which filesystem it holds.

Waiting listens to the kernel's own uevents (kiwi_overlay.uevents), so it works with or
without udevd. The /dev/disk/by-* links are udevd's work: where no udevd runs (a host,
a minimal initrd) the device behind such a link is found by probing with blkid instead.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from pathlib import Path

from kiwi_overlay import log
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.run import run
from kiwi_overlay.uevents import LOST, KernelUevents

# /dev/disk/by-* directory -> the blkid tag it names.
_BY_TAG = {"by-label": "LABEL", "by-uuid": "UUID", "by-partlabel": "PARTLABEL", "by-partuuid": "PARTUUID"}
# Links udevd makes after the kernel event (by-*, mapper) are looked for again this often.
_RECHECK_INTERVAL = 1.0

# Superblock magics: (offset, bytes). Reading them costs one small read and no process,
# and an unknown filesystem gets a clear error instead of mount's "wrong fs type".
_MAGICS: tuple[tuple[str, int, bytes], ...] = (
    ("squashfs", 0, b"hsqs"),
    ("erofs", 1024, (0xE0F5E1E2).to_bytes(4, "little")),
    ("ext4", 1080, (0xEF53).to_bytes(2, "little")),  # ext2 and ext3 too: the ext4 driver mounts them
    ("xfs", 0, b"XFSB"),
    ("btrfs", 0x10040, b"_BHRfS_M"),
)
KNOWN_FILESYSTEMS = tuple(name for name, _, _ in _MAGICS)


def filesystem_type(device: Path) -> str | None:
    """The filesystem on DEVICE (one of KNOWN_FILESYSTEMS), or None when none of them is there."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise KiwiOverlayError(f"cannot read {device}: {error.strerror}") from None
    try:
        for name, offset, magic in _MAGICS:
            if os.pread(fd, len(magic), offset) == magic:
                return name
    finally:
        os.close(fd)
    return None


def mount_points() -> set[str]:
    """Where something is mounted in this process's view, bind mounts too: the kernel's mountinfo, read directly.

    Not psutil's table, on the boot path: its import alone takes 8 ms natively (the initrd's Python).
    """
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040); no codec for it
    # (the unicode_escape codec is not in the initrd's Python).
    table = Path("/proc/self/mountinfo").read_text(errors="surrogateescape")
    return {re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), line.split()[4]) for line in table.splitlines()}


_BLKROSET, _BLKROGET = 0x125D, 0x125E


def device_size(device: Path) -> int:
    """The size of the block device (or file) DEVICE in bytes."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def set_read_only(device: Path, read_only: bool) -> bool:
    """Make the kernel's DEVICE read-only (or writable) with BLKROSET; returns what it was before."""
    import fcntl
    import struct

    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise KiwiOverlayError(f"cannot open {device}: {error.strerror}") from None
    try:
        before = bytearray(4)
        fcntl.ioctl(fd, _BLKROGET, before)
        fcntl.ioctl(fd, _BLKROSET, struct.pack("i", int(read_only)))
    except OSError as error:
        raise KiwiOverlayError(f"cannot make {device} {'read-only' if read_only else 'writable'}: {error.strerror}") from None
    finally:
        os.close(fd)
    return bool(int.from_bytes(before, sys.byteorder))


def _unescape_udev(name: str) -> str:
    """A /dev/disk/by-label name back to the label: udev writes '/' and ' ' as \\x2f, \\x20."""
    data = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), name.encode("utf-8", "surrogateescape"))
    return data.decode("utf-8", "surrogateescape")


def _probe_tag(path: Path) -> Path | None:
    """The device a /dev/disk/by-TAG/VALUE link would point to, found by blkid; None for other paths."""
    if path.parent.parent != Path("/dev/disk") or path.parent.name not in _BY_TAG:
        return None
    tag = f"{_BY_TAG[path.parent.name]}={_unescape_udev(path.name)}"
    # -c /dev/null: probe the devices themselves, no cache file (stale, or written into the initrd).
    try:
        result = run(["blkid", "-c", "/dev/null", "-o", "device", "-t", tag], check=False, capture=True)
    except KiwiOverlayError as error:  # no blkid: only udevd's link will do
        log.debug(str(error))
        return None
    found = result.stdout.split()
    return Path(found[0]) if result.returncode == 0 and found else None


def _find(path: Path, *, probe: bool) -> Path | None:
    if path.exists():
        return path.resolve()
    return _probe_tag(path) if probe else None


def _block_device(path: Path, found: Path) -> Path:
    """FOUND, when it is a block device: anything else (a regular file mount would loop-mount) is refused."""
    if not stat.S_ISBLK(found.stat().st_mode):
        shown = f"{path} ({found})" if found != path else str(path)
        raise KiwiOverlayError(f"{shown} is not a block device")
    return found


def wait_for_device(path: Path, *, timeout: float) -> Path:
    """The block device node for PATH once it exists (symlinks resolved); KiwiOverlayError after TIMEOUT seconds."""
    found = _find(path, probe=True)
    if found is not None:
        return _block_device(path, found)
    deadline = time.monotonic() + timeout
    with KernelUevents() as uevents:
        log.info(f"waiting up to {timeout:g} s for {path}")
        probe = True  # look again now that the socket listens: a device that came in between is not missed
        while (found := _find(path, probe=probe)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KiwiOverlayError(f"{path} did not appear within {timeout:g} s (rd.root.overlay.timeout={timeout:g})")
            # blkid runs only for block events; links from udevd are checked on the interval.
            probe = uevents.next(timeout=min(remaining, _RECHECK_INTERVAL)) in ("block", LOST)
    log.debug(f"{path} is {found}")
    return _block_device(path, found)
