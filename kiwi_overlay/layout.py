"""The mounts that make the root, in order, derived from a plan (no I/O).

The layout is KIWI's, so tools that look there keep working:
  /run/overlay                  tmpfs (rd.root.overlay.size)
  /run/overlay/ram              tmpfs holding `image`, the read layer's copy (rd.root.overlay.ram)
  /run/overlay/rootfsbase       the read layer, read-only (with rd.root.overlay.ram: ram/image, through a loop device)
  /run/overlay/overlayfs        the write layer: a directory of that tmpfs, or the write device
  /run/overlay/overlayfs/rw     overlayfs upperdir
  /run/overlay/overlayfs/work   overlayfs workdir
  /sysroot                      overlayfs (or, readonly, a read-only bind of rootfsbase)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiwi_overlay.config.plan import RUN_DIR, SYSROOT, Plan


@dataclass(frozen=True)
class Mount:
    source: str
    target: Path
    fstype: str | None  # None: detect from the device
    options: tuple[str, ...]
    purpose: str


@dataclass(frozen=True)
class Layout:
    run_dir: Path
    sysroot: Path

    @property
    def rootfsbase(self) -> Path:
        return self.run_dir / "rootfsbase"

    @property
    def ram(self) -> Path:
        return self.run_dir / "ram"

    @property
    def ram_image(self) -> Path:
        return self.ram / "image"

    @property
    def overlayfs(self) -> Path:
        return self.run_dir / "overlayfs"

    @property
    def upper(self) -> Path:
        return self.overlayfs / "rw"

    @property
    def work(self) -> Path:
        return self.overlayfs / "work"


# A `ro` mount still replays a journal (ext4) or log (xfs, btrfs) onto a writable device: one client
# would write to the image every client boots from. These options mount without replaying.
_NO_RECOVERY = {"ext4": "noload", "xfs": "norecovery", "btrfs": "rescue=nologreplay"}


def read_options(fstype: str | None) -> tuple[str, ...]:
    """The read layer's mount options for FSTYPE: read-only, and no journal replay where the filesystem has one."""
    extra = _NO_RECOVERY.get(fstype or "")
    return ("ro", extra) if extra else ("ro",)


def mounts(plan: Plan, read_device: str, *, run_dir: Path = RUN_DIR, sysroot: Path = SYSROOT) -> tuple[Mount, ...]:
    """The mounts for PLAN with the read layer on READ_DEVICE, in the order they are made."""
    where = Layout(run_dir, sysroot)
    steps = [Mount("tmpfs", where.run_dir, "tmpfs", (f"size={plan.write.size}", "mode=0755"), "overlay tmpfs")]
    if plan.ram:
        # Its size= is the read layer's, known once the device is attached.
        steps.append(Mount("tmpfs", where.ram, "tmpfs", ("mode=0700",), f"copy of {read_device} in RAM"))
        steps.append(Mount(str(where.ram_image), where.rootfsbase, plan.rootfstype, (*read_options(plan.rootfstype), "loop"), "read layer"))
    else:
        steps.append(Mount(read_device, where.rootfsbase, plan.rootfstype, read_options(plan.rootfstype), "read layer"))
    if plan.write.kind == "device" and plan.write.device is not None:
        steps.append(Mount(str(plan.write.device), where.overlayfs, None, ("rw",), "write layer"))
    if plan.write.kind == "none":
        steps.append(Mount(str(where.rootfsbase), where.sysroot, None, ("bind", "ro"), "root (read-only)"))
    else:
        options = [f"lowerdir={where.rootfsbase}", f"upperdir={where.upper}", f"workdir={where.work}"]
        if plan.rootflags:
            options.extend(flag for flag in plan.rootflags.split(",") if flag)
        steps.append(Mount("overlay", where.sysroot, "overlay", tuple(options), "root"))
    return tuple(steps)
