"""Initrds for the guest kernel, built with the host's dracut from a module list.

dracut looks for the kernel tree at /lib/modules/VERSION in places --kmoddir does not reach
(90overlay-root's check(), for one), and this host has no /lib/modules at all. So dracut runs in a
private mount namespace in which /usr/lib carries an overlay: the guest kernel tree bind-mounted at
modules/VERSION and MODULE_DIRS (dracut modules of this project, not installed) under
dracut/modules.d. Nothing on the host changes. Host dracut configuration is ignored (--conf
/dev/null; --confdir holds only the file the caller writes), so an initrd depends only on the arguments.

`python3 -m tests.boot.initrd OUTPUT [--systemd] MODULE...` builds one by hand.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kiwi_overlay.run import run
from tests.boot.guest_kernel import GuestKernel, guest_kernel

# What every test guest needs from the kernel: QEMU's virtio devices, the root filesystems of
# tests/boot/rootfs.py, the transports. Listed explicitly so no dracut module has to guess.
GUEST_DRIVERS = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "af_packet",
    "nbd",
    "aoe",
    "overlay",
    "squashfs",
    "erofs",
    "ext4",
)
# The stock dracut modules every flavour gets; the systemd flavour adds SYSTEMD_MODULES.
BASE_MODULES = ("base", "rootfs-block", "kernel-modules", "shutdown")
SYSTEMD_MODULES = ("systemd", "systemd-initrd", "dracut-systemd")
# The network-root baseline the benchmarks compare against: dracut's own NBD root + overlay.
STOCK_NBD_MODULES = ("nbd", "overlay-root", "network-legacy")
# This project's module (committed copy) and what a kiwi-overlay initrd carries besides it.
MODULE_DIR = Path(__file__).resolve().parents[2] / "dracut/modules.d/55kiwi-overlay"
KIWI_OVERLAY_MODULES = ("kiwi-overlay", "bash", "udev-rules")

# What a dracut.conf.d file sets for an initrd with rd.root.overlay.verity (veritysetup, dm_verity).
VERITY_CONF = 'kiwi_overlay_verity="yes"\n'

# Runs inside `unshare --mount`: the values arrive as positional parameters, never as code. The
# overlays come as DIRECTORY UPPER WORK triples (/usr/lib's first) before `--`, dracut after it.
_NAMESPACE_SCRIPT = """
moddir=$1 kver=$2; shift 2
while [ "$1" != -- ]; do mount -t overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" ko-bt-dracut "$1"; shift 3; done; shift
mount --bind "$moddir" "/usr/lib/modules/$kver"
exec "$@"
"""


def build_initrd(
    *,
    output: Path,
    systemd: bool,
    modules: Sequence[str],
    extra_args: Sequence[str] = (),
    module_dirs: Sequence[Path] = (),
    drivers: Sequence[str] = GUEST_DRIVERS,
    compress: str = "zstd",
    kernel: GuestKernel | None = None,
    kiwi_overlay: Path | None = None,
    environment: Mapping[str, str] | None = None,
    conf: str = "",
    hidden: Sequence[Path] = (),
) -> Path:
    """Build OUTPUT with dracut: BASE_MODULES (+ SYSTEMD_MODULES) + MODULES, nothing else.

    MODULE_DIRS are dracut module directories named like dracut's own (NNname, e.g.
    dracut/modules.d/90kiwi-overlay); name them in MODULES to include them. DRIVERS are kernel
    modules added on top of what the dracut modules install. COMPRESS is dracut's compressor
    name, or "cat" for none. KIWI_OVERLAY is the kiwi-overlay command whose Python the
    kiwi-overlay module installs. ENVIRONMENT is added to dracut's (what a dracut.conf.d file
    would set). CONF is the text of the one file of dracut's --confdir (a dracut.conf.d file).
    HIDDEN are host files dracut does not see (a build host without them). The dracut log is kept
    next to OUTPUT (OUTPUT.log).
    """
    kernel = kernel or guest_kernel()
    output.parent.mkdir(parents=True, exist_ok=True)
    dracut_modules = [*BASE_MODULES, *(SYSTEMD_MODULES if systemd else ()), *modules]
    with tempfile.TemporaryDirectory(prefix="ko-bt-dracut-") as scratch:
        upper, work, dracut_tmp = (Path(scratch) / name for name in ("upper", "work", "tmp"))
        confdir = Path(scratch) / "conf.d"
        for directory in (upper / "modules" / kernel.version, work, dracut_tmp, confdir):
            directory.mkdir(parents=True)
        if conf:
            (confdir / "kiwi-overlay-test.conf").write_text(conf)
        for module_dir in module_dirs:
            shutil.copytree(module_dir, upper / "dracut/modules.d" / module_dir.name, symlinks=True)
        overlays = {Path("/usr/lib"): (upper, work)}
        for number, path in enumerate(hidden):
            layer = overlays.setdefault(path.parent, (Path(scratch) / f"hide{number}/upper", Path(scratch) / f"hide{number}/work"))
            for directory in layer:
                directory.mkdir(parents=True, exist_ok=True)
            os.mknod(layer[0] / path.name, stat.S_IFCHR, os.makedev(0, 0))  # overlayfs's whiteout: the file is not there
        argv = [
            "env",
            *([f"KIWI_OVERLAY={kiwi_overlay}"] if kiwi_overlay else []),
            *(f"{name}={value}" for name, value in (environment or {}).items()),
            "dracut",
            "--conf=/dev/null",
            f"--confdir={confdir}",
            "--force",
            "--no-hostonly",
            "--no-hostonly-cmdline",
            "--no-early-microcode",
            f"--tmpdir={dracut_tmp}",
            f"--kmoddir=/usr/lib/modules/{kernel.version}",
            f"--modules={' '.join(dracut_modules)}",
            f"--drivers={' '.join(drivers)}",
            f"--compress={compress}",
            *extra_args,
            str(output),
            kernel.version,
        ]
        namespace: list[str | Path] = [
            "unshare",
            "--mount",
            "--",
            "sh",
            "-ec",
            _NAMESPACE_SCRIPT,
            "sh",
            kernel.moddir,
            kernel.version,
            *(item for directory, layer in overlays.items() for item in (directory, *layer)),
            "--",
        ]
        result = run([*namespace, *argv], check=False, capture=True)
    log = output.with_name(output.name + ".log")
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not output.exists():
        raise RuntimeError(f"dracut failed (exit {result.returncode}); log: {log}")
    return output


def stock_nbd_initrd(*, output: Path, systemd: bool = False) -> Path:
    """dracut's own NBD root with `rootovl` (90overlay-root): the baseline of the benchmarks."""
    return build_initrd(output=output, systemd=systemd, modules=STOCK_NBD_MODULES)


def kiwi_overlay_initrd(
    *,
    output: Path,
    systemd: bool,
    extra_modules: Sequence[str] = (),
    module_dirs: Sequence[Path] = (),
    compress: str = "zstd",
    environment: Mapping[str, str] | None = None,
    conf: str = "",
    hidden: Sequence[Path] = (),
) -> Path:
    """An initrd with this project's module, run by this virtual environment's kiwi-overlay.

    EXTRA_MODULES may name dracut modules of MODULE_DIRS; ENVIRONMENT, CONF, HIDDEN: see build_initrd.
    """
    return build_initrd(
        output=output,
        systemd=systemd,
        modules=(*KIWI_OVERLAY_MODULES, *extra_modules),
        module_dirs=(MODULE_DIR, *module_dirs),
        compress=compress,
        kiwi_overlay=Path(sys.executable).parent / "kiwi-overlay",
        environment=environment,
        conf=conf,
        hidden=hidden,
    )


_session_dir: tempfile.TemporaryDirectory[str] | None = None


@functools.cache
def session_initrd(*, systemd: bool, verity: bool = False) -> Path:
    """The kiwi-overlay initrd of one flavour, built once per test session and shared by every suite.

    VERITY: built with VERITY_CONF (the module's default leaves veritysetup and dm_verity out).
    """
    global _session_dir
    if _session_dir is None:
        _session_dir = tempfile.TemporaryDirectory(prefix="ko-bt-session-")
    name = f"kiwi-overlay-{'systemd' if systemd else 'no-systemd'}{'-verity' if verity else ''}.img"
    return kiwi_overlay_initrd(output=Path(_session_dir.name) / name, systemd=systemd, conf=VERITY_CONF if verity else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("modules", nargs="*", default=list(STOCK_NBD_MODULES))
    parser.add_argument("--systemd", action="store_true")
    parser.add_argument("--module-dir", type=Path, action="append", default=[], dest="module_dirs")
    parser.add_argument("--compress", default="zstd")
    args = parser.parse_args()
    started = time.monotonic()
    build_initrd(output=args.output, systemd=args.systemd, modules=args.modules, module_dirs=args.module_dirs, compress=args.compress)
    size = args.output.stat().st_size / 1e6
    print(f"{args.output}: {size:.1f} MB in {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
