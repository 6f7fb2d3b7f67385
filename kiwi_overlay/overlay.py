"""Assemble the root from an attached read device: the mounts of kiwi_overlay.layout, made.

Mounts go through util-linux mount(8), the program systemd's sysroot.mount runs too, so
rootflags mean the same on both paths. Every failure unmounts what was mounted, in reverse order.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from kiwi_overlay import log
from kiwi_overlay.config.plan import Plan
from kiwi_overlay.devices import KNOWN_FILESYSTEMS, device_size, filesystem_type, mount_points, set_read_only, wait_for_device
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.layout import Layout, Mount, mounts, read_options
from kiwi_overlay.run import run

_STALE_UPPER = "failed to verify upper root origin"


class MountError(KiwiOverlayError):
    def __init__(self, message: str, *, stale: bool) -> None:
        super().__init__(message)
        self.stale = stale  # overlayfs ESTALE: the upper layer was made over another lower layer


def is_mounted(path: Path) -> bool:
    """Whether something is mounted at PATH (a bind mount too)."""
    return str(path.resolve()) in mount_points()


def _kernel_log_mark() -> int | None:
    """A /dev/kmsg reader positioned at the end: what it reads next is what the kernel says from now on."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def _kernel_messages(fd: int | None, fstype: str | None) -> list[str]:
    """The kernel's messages about FSTYPE since the mark FD (closed here): why a mount failed."""
    if fd is None:
        return []
    found = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten while we read: skip to the next
                continue
            message = record.decode("utf-8", "replace").partition(";")[2].partition("\n")[0]
            if fstype and fstype.lower() in message.lower():
                found.append(message)
    finally:
        os.close(fd)
    return found


def _mount(step: Mount, fstype: str | None, source: str | None = None) -> None:
    """Mount STEP (SOURCE instead of step.source when given) with mount(8); MountError says why not."""
    # --rw: a write-protected device fails instead of being mounted read-only behind our back.
    argv = ["mount", "--rw"] if "rw" in step.options else ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if step.options:
        argv += ["-o", ",".join(step.options)]
    argv += [source or step.source, str(step.target)]
    mark = _kernel_log_mark()
    result = run(argv, check=False, capture=True)
    kernel = _kernel_messages(mark, fstype)
    if result.returncode == 0:
        log.debug(f"mounted {step.purpose}: {' '.join(argv[1:])}")
        return
    said = [line.strip() for line in result.stderr.splitlines() if line.strip() and not line.strip().startswith("dmesg(")]
    reason = " ".join(said) or f"exit status {result.returncode}"
    stale = "Stale file handle" in reason or any(_STALE_UPPER in message for message in kernel)
    detail = f" (kernel: {'; '.join(kernel)})" if kernel else ""
    raise MountError(f"cannot mount the {step.purpose} at {step.target}: {reason}{detail}", stale=stale)


def _mount_undoably(undo: ExitStack, step: Mount, fstype: str | None, source: str | None = None) -> None:
    _mount(step, fstype, source)
    undo.callback(_unmount, step.target)


def _unmount(target: Path) -> None:
    result = run(["umount", str(target)], check=False, capture=True)
    if result.returncode != 0:
        log.info(f"could not unmount {target}: {result.stderr.strip()}")


def _make_dir(undo: ExitStack, path: Path) -> None:
    """mkdir -p PATH; the undo removes the directories it created."""
    missing = [parent for parent in (path, *path.parents) if not parent.exists()]
    for directory in reversed(missing):
        directory.mkdir()
        undo.callback(directory.rmdir)


def _detected(device: str, *, what: str) -> str:
    fstype = filesystem_type(Path(device))
    if fstype is None:
        raise KiwiOverlayError(f"{device} holds no {', '.join(KNOWN_FILESYSTEMS)} filesystem ({what})")
    return fstype


def _check_write_layer(device: str, fstype: str) -> None:
    """The filesystem's own check before the mount (an unclean shutdown, errors the kernel recorded).

    ext4: e2fsck -p (journal replay and the repairs that are safe unattended). xfs replays its log
    when mounted and btrfs needs no check at boot: xfs_repair and btrfs check are for a person.
    """
    if fstype != "ext4":
        return
    try:
        result = run(["e2fsck", "-p", device], check=False, capture=True)
    except KiwiOverlayError as error:  # no e2fsck in the initrd
        log.info(f"the write layer {device} is mounted unchecked ({error})")
        return
    said = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode >= 8:  # e2fsck could not do its work (a write-protected device): the mount says why
        log.info(f"the write layer {device} could not be checked ({said[-1] if said else f'e2fsck exit status {result.returncode}'})")
        return
    if result.returncode & 4:  # errors left uncorrected (1: fixed, 2: fixed and a reboot advised)
        raise KiwiOverlayError(
            f"e2fsck -p cannot repair the write layer {device} (exit status {result.returncode}: {said[-1] if said else 'no output'});"
            f" repair it with e2fsck {device}, or boot once with rd.root.overlay.write.fsck=0"
        )
    if result.returncode:
        log.info(f"checked the write layer {device} (e2fsck -p: errors fixed)")
    else:
        log.debug(f"checked the write layer {device} (e2fsck -p: clean)")


def _mount_write_device(undo: ExitStack, plan: Plan, step: Mount) -> bool:
    """Check and mount the write device; False when it failed and rd.root.overlay.write.fallback=tmpfs allows RAM instead."""
    spec = f"rd.root.overlay.write={plan.write.device}"
    try:
        device = str(wait_for_device(Path(step.source), timeout=plan.timeout))
        fstype = _detected(device, what="the write layer needs one to persist")
        if plan.write.fsck:
            _check_write_layer(device, fstype)
        _mount_undoably(undo, step, fstype, device)
    except KiwiOverlayError as error:
        if not plan.write.fallback_tmpfs:
            raise KiwiOverlayError(f"{spec}: {error}; add rd.root.overlay.write.fallback=tmpfs to boot with writes in RAM") from None
        log.info(f"{spec}: {error}; using tmpfs instead (rd.root.overlay.write.fallback=tmpfs): writes are lost at reboot")
        return False
    return True


def _copy_to_ram(undo: ExitStack, step: Mount, device: Path, image: Path) -> None:
    """rd.root.overlay.ram: DEVICE copied to IMAGE, in the tmpfs of STEP sized to it (after checking the memory)."""
    from kiwi_overlay import ram

    size, available = device_size(device), ram.available_memory()
    ram.check_fits(size, available=available, device=device)
    log.info(f"copying the read layer {device} ({ram.mib(size)}) into RAM, {ram.mib(available)} available ({ram.OPTION})")
    step.target.mkdir()
    _mount_undoably(undo, replace(step, options=(*step.options, f"size={-(-size // 4096) * 4096}")), "tmpfs")
    ram.copy_image(device, image, size=size)
    if not Path("/dev/loop-control").exists():  # loop, for the read layer's mount, is a module nothing loaded yet
        run(["modprobe", "loop"])


def _mount_layers(undo: ExitStack, plan: Plan, read_device: Path, where: Layout, *, mount_root: bool) -> tuple[str, bool]:
    """The mounts of `assemble`, each registered with UNDO; (read layer type, whether the write layer is on its device)."""
    steps = mounts(plan, str(read_device), run_dir=where.run_dir, sysroot=where.sysroot)
    tmpfs, root = steps[0], steps[-1]
    ram = [step for step in steps if step.target == where.ram]
    read = next(step for step in steps if step.target == where.rootfsbase)
    write = [step for step in steps if step.target == where.overlayfs]
    _make_dir(undo, where.run_dir)
    _mount_undoably(undo, tmpfs, "tmpfs")
    if ram:
        _copy_to_ram(undo, ram[0], read_device, where.ram_image)
    where.rootfsbase.mkdir()
    read_type = plan.rootfstype or _detected(read.source, what="name another with rootfstype=")
    # The image every client boots from: the kernel refuses writes to it, whatever the export allows.
    if not set_read_only(read_device, True):
        undo.callback(set_read_only, read_device, False)
    _mount_undoably(undo, replace(read, options=read_options(read_type)), read_type)
    where.overlayfs.mkdir()
    on_device = bool(write) and _mount_write_device(undo, plan, write[0])
    if on_device and plan.write.reset:
        log.info(f"rd.root.overlay.reset: emptying the write layer on {write[0].source}")
        for directory in (where.upper, where.work):
            if directory.exists():
                shutil.rmtree(directory)
    if plan.write.kind != "none":
        if not where.upper.exists():
            # overlayfs shows the upper directory as /: give a new one the read layer's owner and mode
            base = where.rootfsbase.stat()
            where.upper.mkdir()
            os.chown(where.upper, base.st_uid, base.st_gid)
            where.upper.chmod(base.st_mode & 0o7777)
        where.work.mkdir(exist_ok=True)
    if mount_root:
        _make_dir(undo, where.sysroot)
        try:
            _mount_undoably(undo, root, root.fstype)
        except MountError as error:
            if not error.stale:
                raise
            raise KiwiOverlayError(
                f"the write layer on {plan.write.device} was made for a different read image "
                f"(overlayfs: {_STALE_UPPER}); boot once with rd.root.overlay.reset to empty it"
            ) from None
    return read_type, on_device


def assemble(plan: Plan, read_device: Path, *, run_dir: Path, sysroot: Path, mount_root: bool) -> None:
    """Mount the tmpfs, the read layer on READ_DEVICE, the write layer and (MOUNT_ROOT) the root at SYSROOT.

    Raises KiwiOverlayError (one line) after unmounting whatever it had mounted.
    """
    busy = [path for path in ((run_dir, sysroot) if mount_root else (run_dir,)) if path.exists() and is_mounted(path)]
    if busy:
        raise KiwiOverlayError(f"{busy[0]} is already a mount point: the root was assembled before (or unmount it first)")
    try:
        with ExitStack() as undo:
            read_type, on_device = _mount_layers(undo, plan, read_device, Layout(run_dir, sysroot), mount_root=mount_root)
            undo.pop_all()
    except OSError as error:  # a directory of the layout that cannot be made or emptied
        raise KiwiOverlayError(f"{error.filename}: {error.strerror}") from None
    if plan.write.kind == "none":
        layers = "no write layer (rd.root.overlay.readonly)"
    else:
        layers = f"write layer on {plan.write.device}" if on_device else f"write layer in a tmpfs of {plan.write.size}"
    log.info(f"read layer {read_device} ({read_type}), {layers}" + (f", root at {sysroot}" if mount_root else ""))
