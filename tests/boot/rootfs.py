"""The tiny test root: busybox, /etc/os-release and rootfs-init.sh as /sbin/init.

Built as squashfs, erofs or ext4 (ext4 carries a LABEL for the local-root scenarios; erofs-utils
1.5 cannot label).
Images are cached under the harness cache, keyed by everything that goes into them, so a
changed init script or busybox rebuilds and an unchanged one costs nothing. Boots must not
modify a cached image: export it read-only, or attach it with `Disk(..., readonly=True)`.
`python3 -m tests.boot.rootfs [FSTYPE]` prints the image path (building it when missing).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from kiwi_overlay.run import run
from tests.boot.cache import CACHE, cached

FSTYPES = ("squashfs", "erofs", "ext4")
LABEL = "koroot"  # of the ext4 image; at most 16 characters
BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = Path(__file__).with_name("rootfs-init.sh")
OS_RELEASE = 'NAME="kiwi-overlay test root"\nID=kiwi-overlay-test\nPRETTY_NAME="kiwi-overlay test root"\n'
EXT4_SIZE_MB = 16
IMAGES = CACHE / "boot/rootfs"


def _populate(tree: Path) -> None:
    for directory in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "mnt", "root"):
        (tree / directory).mkdir()
    shutil.copy2(BUSYBOX, tree / "bin/busybox")
    applets = run([BUSYBOX, "--list"], capture=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (tree / "bin" / applet).symlink_to("busybox")
    (tree / "sbin/init").unlink(missing_ok=True)  # busybox's own init applet: replaced by the test init
    shutil.copy(INIT_SCRIPT, tree / "sbin/init")
    (tree / "sbin/init").chmod(0o755)
    (tree / "etc/os-release").write_text(OS_RELEASE)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\n")
    (tree / "tmp").chmod(0o1777)


def _make_image(tree: Path, image: Path, fstype: str, label: str) -> None:
    if fstype == "squashfs":
        run(["mksquashfs", tree, image, "-comp", "zstd", "-all-root", "-noappend", "-quiet"], capture=True)
    elif fstype == "erofs":
        run(["mkfs.erofs", "--all-root", "--quiet", image, tree], capture=True)  # erofs-utils 1.5: no labels
    elif fstype == "ext4":
        with image.open("wb") as handle:
            handle.truncate(EXT4_SIZE_MB << 20)
        run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, "-E", "root_owner=0:0", image], capture=True)
    else:
        raise ValueError(f"fstype {fstype!r}: not one of {', '.join(FSTYPES)}")


def _key(fstype: str, label: str) -> str:
    digest = hashlib.sha256()
    for part in (
        Path(__file__).read_bytes(),
        INIT_SCRIPT.read_bytes(),
        BUSYBOX.read_bytes(),
        OS_RELEASE.encode(),
        f"{fstype}:{label}:{EXT4_SIZE_MB}".encode(),
    ):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def root_image(fstype: str = "squashfs", *, label: str = LABEL) -> Path:
    """The test root as a FSTYPE image (cached; read-only by convention)."""

    def make(scratch: Path) -> Path:
        tree = scratch / "tree"
        tree.mkdir()
        _populate(tree)
        _make_image(tree, scratch / "image", fstype, label)
        return scratch / "image"

    return cached(IMAGES / f"root-{_key(fstype, label)}.{fstype}", make)


GPT_PARTLABEL = "system"  # of the root's partition (2) on gpt_disk()


def gpt_disk(fstype: str = "squashfs") -> Path:
    """A whole-disk image (cached): GPT, partition 1 "esp" (1 MiB, empty), partition 2 GPT_PARTLABEL holding root_image(FSTYPE)."""
    root = root_image(fstype)
    digest = hashlib.sha256(f"{root.name}:{GPT_PARTLABEL}".encode()).hexdigest()[:16]
    sectors = -(-root.stat().st_size // 512)

    def make(scratch: Path) -> Path:
        disk = scratch / "disk"
        with disk.open("wb") as handle:
            handle.truncate((4096 + sectors + 2048) * 512)  # room for the backup GPT at the end
        table = f"label: gpt\nstart=2048, size=2048, name=esp\nstart=4096, size={sectors}, name={GPT_PARTLABEL}\n"
        run(["sfdisk", "--quiet", disk], input=table, capture=True)
        run(["dd", f"if={root}", f"of={disk}", "bs=512", "seek=4096", "conv=notrunc,sparse", "status=none"], capture=True)
        return disk

    return cached(IMAGES / f"gpt-{digest}.img", make)


def blank_disk(path: Path, *, size_mb: int) -> Path:
    """A sparse, unformatted disk image of SIZE_MB (a write device for the overlay)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size_mb << 20)
    return path


def ext4_disk(path: Path, *, size_mb: int, label: str) -> Path:
    """An empty ext4 disk image with LABEL (a formatted write device)."""
    blank_disk(path, size_mb=size_mb)
    run(["mkfs.ext4", "-q", "-F", "-L", label, path], capture=True)
    return path


if __name__ == "__main__":
    print(root_image(sys.argv[1] if len(sys.argv) > 1 else "squashfs"))
