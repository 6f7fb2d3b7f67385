"""Debian's 6.1 kernel as a guest kernel tree: downloaded once with apt, cached between runs.

The host kernel has no nbd or aoe module, so everything kernel-side runs in QEMU with this
kernel. `python3 tests/boot/guest_kernel.py` prints the tree (and fetches it when missing).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.boot.cache import CACHE, cached

META_PACKAGE = "linux-image-amd64"


@dataclass(frozen=True)
class GuestKernel:
    version: str  # e.g. 6.1.0-56-amd64
    root: Path  # the unpacked package: boot/, lib/modules/VERSION

    @property
    def vmlinuz(self) -> Path:
        return self.root / f"boot/vmlinuz-{self.version}"

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


if __name__ == "__main__":
    kernel = guest_kernel(refresh="--refresh" in sys.argv)
    print(f"{kernel.version} {kernel.vmlinuz} {kernel.moddir}")
