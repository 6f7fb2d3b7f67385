"""rd.root.overlay.partition: the read layer on a partition of the attached device.

Partitions are read from sysfs (/sys/dev/block/MAJ:MIN/<disk>/<part>/partition), so they are
those of this disk only, never a local disk's that happens to carry the same label. The kernel
reads the partition table of an NBD device at its first open after the attach (the nbd module's
max_part must be above 0: Linux's default is 16) and of an AoE device when the driver adds it;
the nodes (/dev/nbd0p2, /dev/etherd/e0.1p2) come from devtmpfs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from kiwi_overlay import log
from kiwi_overlay.config.plan import Partition
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.run import run

SYS_DEV_BLOCK = Path("/sys/dev/block")
# The kernel reads a partition table as it adds the disk (or at the first open): its partitions
# follow the disk within milliseconds. This long for them, whatever is left of the timeout.
SETTLE = 5.0
_POLL_INTERVAL = 0.1


def _sys_dir(device: Path) -> Path:
    rdev = os.stat(device).st_rdev
    return (SYS_DEV_BLOCK / f"{os.major(rdev)}:{os.minor(rdev)}").resolve()


def _node(sys_dir: Path) -> Path:
    """/dev/NAME for a sysfs block directory ('!' in a kernel name is a '/' in /dev: etherd!e0.1p2)."""
    return Path("/dev") / sys_dir.name.replace("!", "/")


def partitions(disk: Path) -> dict[int, Path]:
    """Partition number -> device node, for the partitions the kernel knows on DISK."""
    found = {}
    for entry in _sys_dir(disk).iterdir():
        number_file = entry / "partition"
        if number_file.is_file():
            found[int(number_file.read_text())] = _node(entry)
    return dict(sorted(found.items()))


def _probe(device: Path) -> dict[str, str]:
    """blkid's tags of DEVICE (LABEL, UUID, PARTLABEL, PARTUUID, TYPE); empty when it finds none."""
    # -c /dev/null: probe the device itself, no cache file (stale, or written into the initrd).
    result = run(["blkid", "-c", "/dev/null", "-o", "export", str(device)], check=False, capture=True)
    tags = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            tags[key] = value
    return tags


def _describe(found: dict[int, Path], probed: dict[int, dict[str, str]]) -> str:
    parts = []
    for number, node in found.items():
        tags = probed.get(number, {})
        shown = " ".join(f"{tag}={tags[tag]}" for tag in ("PARTLABEL", "LABEL", "TYPE") if tags.get(tag))
        parts.append(f"{node.name}" + (f" ({shown})" if shown else ""))
    return ", ".join(parts)


def _probe_all(found: dict[int, Path], probed: dict[int, dict[str, str]]) -> None:
    """Add the tags of every partition in FOUND whose node exists to PROBED (once each)."""
    for number, node in found.items():
        if number not in probed and node.exists():
            probed[number] = _probe(node)


def _match(found: dict[int, Path], wanted: Partition, probed: dict[int, dict[str, str]]) -> Path | None:
    if wanted.by == "number":
        return found.get(int(wanted.value))
    _probe_all(found, probed)
    return next((found[number] for number, tags in probed.items() if number in found and tags.get(wanted.by) == wanted.value), None)


def _max_part_note() -> str:
    max_part = Path("/sys/module/nbd/parameters/max_part")
    if max_part.exists() and max_part.read_text().strip() == "0":
        return "; the nbd module was loaded with max_part=0, which hides partitions: load it with nbd.max_part=16"
    return ""


def find_partition(disk: Path, wanted: Partition) -> Path:
    """The node of WANTED on DISK, once the kernel has read the partition table; KiwiOverlayError after SETTLE seconds."""
    option = f"rd.root.overlay.partition={wanted.text}"
    deadline = time.monotonic() + SETTLE
    # Opening the whole disk makes the kernel read a partition table it has not read yet (NBD).
    os.close(os.open(disk, os.O_RDONLY | os.O_CLOEXEC))
    probed: dict[int, dict[str, str]] = {}
    while True:
        found = partitions(disk)
        node = _match(found, wanted, probed)
        if node is not None and node.exists():
            log.info(f"read layer on partition {node} of {disk} ({option})")
            return node
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    if not found:
        raise KiwiOverlayError(f"{option}: {disk} has no partitions (no partition table the kernel reads){_max_part_note()}")
    _probe_all(found, probed)
    raise KiwiOverlayError(f"{option}: {disk} has no such partition within {SETTLE:g} s; it has {_describe(found, probed)}")
