"""Real filesystem images and loop devices for the overlay tests (root only)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

# mkfs commands per filesystem; {label} and {size} are filled in. None: the tool fills the tree itself.
_SIZES = {"ext4": "32M", "xfs": "300M", "btrfs": "128M"}


def unique_label() -> str:
    """A label no other device on the shared machine has (ext4 allows 16 bytes)."""
    return "ko-ovl-" + secrets.token_hex(4)


def make_tree(root: Path, *, marker: str = "image A") -> Path:
    """A tiny root filesystem tree."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=kiwi-overlay-test\n")
    (root / "etc/marker").write_text(marker + "\n")
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/data").write_bytes(bytes(range(256)) * 64)
    root.chmod(0o555)  # as on Fedora and SUSE: / is not writable by its mode
    return root


def make_image(fstype: str, out: Path, *, tree: Path | None = None, label: str | None = None) -> Path:
    """A FSTYPE image file at OUT holding TREE (or empty), with LABEL."""
    if fstype == "squashfs":
        assert tree is not None
        argv = ["mksquashfs", str(tree), str(out), "-quiet", "-noappend", "-no-progress"]
    elif fstype == "erofs":
        assert tree is not None
        argv = ["mkfs.erofs", "--quiet", *(["-L", label] if label else []), str(out), str(tree)]
    else:
        subprocess.run(["truncate", "-s", _SIZES[fstype], str(out)], check=True)
        argv = {
            "ext4": ["mkfs.ext4", "-q", "-F", *(["-d", str(tree)] if tree else [])],
            "xfs": ["mkfs.xfs", "-q", "-f"],
            "btrfs": ["mkfs.btrfs", "-q", "-f"],
        }[fstype]
        argv += [*(["-L", label] if label else []), str(out)]
    subprocess.run(argv, check=True, capture_output=True)
    return out


def blank_image(out: Path, size: str = "16M") -> Path:
    subprocess.run(["truncate", "-s", size, str(out)], check=True)
    return out


@contextmanager
def loop_device(image: Path, *, read_only: bool = False) -> Iterator[Path]:
    """IMAGE on a free loop device, detached afterwards."""
    argv = ["losetup", "-f", "--show", *(["-r"] if read_only else []), str(image)]
    device = Path(subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip())
    try:
        yield device
    finally:
        # kiwi-overlay makes a read device read-only (BLKROSET) and the kernel keeps that after the
        # detach: the next user of this loop device (another test) must get it writable.
        subprocess.run(["blockdev", "--setrw", str(device)], check=False)
        subprocess.run(["losetup", "-d", str(device)], check=False)


def mounts_under(*paths: Path) -> list[str]:
    """Mount points at or below any of PATHS, in the order they were mounted."""
    prefixes = [str(path.resolve()) for path in paths]
    points = [line.split()[1].replace("\\040", " ") for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [point for point in points if any(point == prefix or point.startswith(prefix + "/") for prefix in prefixes)]


def end_watches(*paths: Path) -> None:
    """End the kiwi-overlay-watch processes of write layers below PATHS, as a shutdown's killing spree does first.

    A watch opens its layer for a moment every few seconds (every 0.1 s until it has seen it
    mounted): an unmount at that moment fails with EBUSY.
    """
    import psutil

    for process in psutil.process_iter(["name", "cmdline"]):
        arguments = process.info["cmdline"] or []
        if arguments[:1] == ["kiwi-overlay-watch"] and any(Path(arg).is_relative_to(path) for arg in arguments for path in paths):
            with suppress(psutil.NoSuchProcess):
                process.kill()
                process.wait(timeout=10)


def unmount_under(*paths: Path, lazy: bool = True) -> None:
    """Unmount everything below PATHS, last mounted first (lazily: the teardown safety net), their watches ended first."""
    end_watches(*paths)
    for point in reversed(mounts_under(*paths)):
        subprocess.run(["umount", *(["-l"] if lazy else []), point], check=not lazy)
