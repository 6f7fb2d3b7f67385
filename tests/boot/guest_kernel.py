"""Debian's 6.1 kernel as a guest kernel tree: downloaded once with apt, cached between runs.

The host kernel has no nbd or aoe module, so everything kernel-side runs in QEMU with this
kernel. `python3 tests/boot/guest_kernel.py` prints the tree (and fetches it when missing).

QEMU boots the kernel the package ships, uncompressed (`GuestKernel.boot_file`): under TCG the
bzImage's own decompressor costs seconds of every boot (the first console line 7.7 s after QEMU
starts with Debian 12's xz kernel, 0.8 s without). QEMU enters an uncompressed kernel through its
PVH note (CONFIG_PVH, set in Debian's kernels); from the kernel's first instruction on, the boot
is the same. The KIWI image's tests boot KIWI's bzImage as PXE does.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.boot.cache import CACHE, cached

META_PACKAGE = "linux-image-amd64"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class GuestKernel:
    version: str  # e.g. 6.1.0-56-amd64
    root: Path  # the unpacked package: boot/, lib/modules/VERSION

    @property
    def vmlinuz(self) -> Path:
        return self.root / f"boot/vmlinuz-{self.version}"

    @property
    def boot_file(self) -> Path:
        """What QEMU's -kernel gets: the uncompressed kernel inside vmlinuz (cached)."""
        return uncompressed(self.vmlinuz)

    @property
    def moddir(self) -> Path:
        """What dracut's --kmoddir wants: it must end in lib/modules/VERSION."""
        return self.root / "lib/modules" / self.version


def _package_name() -> str:
    """The 6.1 image package that Debian's meta package points at today."""
    out = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Depends: (linux-image-6\.1\.\S+-amd64)\b", out)
    if not match:
        raise RuntimeError(f"apt-cache depends {META_PACKAGE}: no linux-image-6.1 dependency (run apt-get update)")
    return match[1]


def _cached() -> GuestKernel | None:
    for root in sorted(CACHE.glob("linux-image-6.1.*"), reverse=True):
        versions = sorted((root / "lib/modules").glob("*/modules.dep"))
        if versions:
            return GuestKernel(versions[-1].parent.name, root)
    return None


def guest_kernel(*, refresh: bool = False) -> GuestKernel:
    """The cached guest kernel, fetched with `apt-get download` when there is none (or REFRESH)."""
    found = _cached()
    if found and not refresh:
        return found
    package = _package_name()
    version = package.removeprefix("linux-image-")

    def unpack(scratch: Path) -> Path:
        subprocess.run(["apt-get", "download", "-q", package], cwd=scratch, check=True, stdout=subprocess.DEVNULL)
        (deb,) = scratch.glob("*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(scratch / "tree")], check=True)
        subprocess.run(["depmod", "-b", str(scratch / "tree"), version], check=True)
        return scratch / "tree"

    return GuestKernel(version, cached(CACHE / package, unpack))


@functools.cache
def uncompressed(vmlinuz: Path) -> Path:
    """The ELF kernel inside the bzImage VMLINUZ, cached by the bzImage's digest."""
    image = vmlinuz.read_bytes()

    def extract(scratch: Path) -> Path:
        payload = _payload(vmlinuz, image)
        if payload.startswith(XZ_MAGIC):
            kernel = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(ZSTD_MAGIC):  # the build appends the size (4 bytes), which zstd does not take
            kernel = subprocess.run(["zstd", "-dc"], input=payload[:-4], capture_output=True, check=True).stdout
        else:
            raise RuntimeError(f"{vmlinuz}: the kernel is compressed with neither xz nor zstd (payload starts {payload[:6].hex()})")
        (scratch / "vmlinux").write_bytes(kernel)
        return scratch / "vmlinux"

    return cached(CACHE / "pvh" / f"vmlinux-{hashlib.sha256(image).hexdigest()[:16]}", extract)


def _payload(vmlinuz: Path, image: bytes) -> bytes:
    """The compressed kernel: payload_offset and payload_length of the setup header (boot protocol 2.08 on)."""
    if image[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", image, 0x206)[0] < 0x208:
        raise RuntimeError(f"{vmlinuz}: not a bzImage of boot protocol 2.08 or later")
    setup_sectors = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    return image[start : start + length]


if __name__ == "__main__":
    kernel = guest_kernel(refresh="--refresh" in sys.argv)
    print(f"{kernel.version} {kernel.vmlinuz} {kernel.moddir}")
