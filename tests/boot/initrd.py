"""Initrds for the guest kernel, built with dracut from explicit module lists: small and quick to build.

`build_initrd(systemd=..., output=...)` builds with or without systemd, with the repository's
kiwi-overlay module (and the kiwi-overlay of this virtual environment, whose Python goes in)
or without it. `python3 tests/boot/initrd.py [--systemd] [--without-kiwi-overlay] OUTPUT` builds one.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).parent))
    from guest_kernel import GuestKernel, guest_kernel  # type: ignore[import-not-found,no-redef]
else:
    from tests.boot.guest_kernel import GuestKernel, guest_kernel

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "dracut/modules.d/55kiwi-overlay"
DRACUT_BASE = Path("/usr/lib/dracut")
# dracut modules per flavour; dependencies come along. The shell is bash, as dracut's default.
NO_SYSTEMD = ("base", "bash", "udev-rules", "shutdown")
SYSTEMD = ("systemd", "systemd-initrd", "dracut-systemd", "systemd-udevd", "base", "bash", "udev-rules", "shutdown")
# Drivers a QEMU guest needs besides kiwi-overlay's own (virtio disks for local roots and write layers).
GUEST_DRIVERS = ("virtio_pci", "virtio_blk", "virtio_net")


def _dracut_base(module_dir: Path, scratch: Path) -> Path:
    """A dracut base directory: the system's, with MODULE_DIR added to its modules.d."""
    base = scratch / "dracut"
    (base / "modules.d").mkdir(parents=True)
    for entry in DRACUT_BASE.iterdir():
        if entry.name != "modules.d":
            (base / entry.name).symlink_to(entry)
    for module in (DRACUT_BASE / "modules.d").iterdir():
        if module.name.removeprefix(module.name[:2]) != "kiwi-overlay":
            (base / "modules.d" / module.name).symlink_to(module)
    (base / "modules.d/55kiwi-overlay").symlink_to(module_dir)
    return base


def build_initrd(
    *,
    systemd: bool,
    output: Path,
    kiwi_overlay: bool = True,
    extra_modules: Sequence[str] = (),
    extra_drivers: Sequence[str] = GUEST_DRIVERS,
    kernel: GuestKernel | None = None,
    module_dir: Path = MODULE_DIR,
    command: Path = Path(sys.executable).parent / "kiwi-overlay",
) -> Path:
    """Build OUTPUT (zstd) for the guest kernel; KIWI_OVERLAY adds the module, run by COMMAND's Python."""
    kernel = kernel or guest_kernel()
    modules = [*(SYSTEMD if systemd else NO_SYSTEMD), *extra_modules, *(["kiwi-overlay"] if kiwi_overlay else [])]
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ko-initrd-") as scratch:
        (Path(scratch) / "no-conf.d").mkdir()  # the host's dracut.conf.d stays out
        env = {**os.environ, "dracutbasedir": str(_dracut_base(module_dir, Path(scratch))), "KIWI_OVERLAY": str(command)}
        argv = [
            "dracut",
            "--force",
            "--quiet",
            "--no-hostonly",
            "--no-hostonly-cmdline",
            "--no-early-microcode",
            "--reproducible",
            "--zstd",
            "--conf=/dev/null",
            f"--confdir={scratch}/no-conf.d",
            f"--tmpdir={scratch}",
            f"--kver={kernel.version}",
            f"--kmoddir={kernel.moddir}",
            f"--modules={' '.join(modules)}",
            f"--add-drivers={' '.join(extra_drivers)}",
            str(output),
        ]
        subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
    return output


_session_dir: tempfile.TemporaryDirectory[str] | None = None


@functools.cache
def session_initrd(*, systemd: bool) -> Path:
    """The kiwi-overlay initrd of one flavour, built once per process (the test session) and shared by every suite."""
    global _session_dir
    if _session_dir is None:
        _session_dir = tempfile.TemporaryDirectory(prefix="ko-initrd-session-")
    return build_initrd(systemd=systemd, output=Path(_session_dir.name) / f"kiwi-overlay-{'systemd' if systemd else 'no-systemd'}.img")


if __name__ == "__main__":
    built = build_initrd(systemd="--systemd" in sys.argv, kiwi_overlay="--without-kiwi-overlay" not in sys.argv, output=Path(sys.argv[-1]))
    print(built)
