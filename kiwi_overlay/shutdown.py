"""`kiwi-overlay shutdown`: the shutdown hook. A persistent write layer is left clean, network devices detached.

dracut's /shutdown runs it after unmounting what it could of the old root. Whatever carries the
write layer (a local disk, AoE, NBD), it is synced, remounted read-only and unmounted; if even
the read-only remount is refused (a file still open for writing), it is frozen. Both leave the
filesystem consistent on disk (no journal to replay, nothing lost that was written) for the
power-off that follows. Then the NBD devices are detached.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiwi_overlay import log
from kiwi_overlay.config.plan import RUN_DIR
from kiwi_overlay.devices import mount_points
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.layout import Layout
from kiwi_overlay.run import run

# Where the layers are at shutdown: in place, or under dracut's /shutdown's old root and old /run.
RUN_DIRS = (RUN_DIR, Path("/oldsys") / RUN_DIR.relative_to("/"), Path("/oldroot") / RUN_DIR.relative_to("/"))
_FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)


def _freeze(point: Path) -> str | None:
    """FIFREEZE: the filesystem writes out everything and is consistent on disk; None, or why not."""
    import fcntl

    try:
        fd = os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _FIFREEZE, 0)
        finally:
            os.close(fd)
    except OSError as error:
        return error.strerror
    return None


def leave_write_layer(point: Path) -> None:
    """Make the write layer at POINT read-only (or, still written to, frozen), then unmount it.

    Read-only first: an unmount alone may only detach the mount point while the overlay on top
    keeps the filesystem alive and dirty, and then nothing would be left to make it clean.
    """
    remounted = run(["mount", "-o", "remount,ro", str(point)], check=False, capture=True)
    if remounted.returncode != 0:
        why = _freeze(point)
        if why is not None:
            said = remounted.stderr.strip().splitlines()[-1:] or ["refused"]
            raise KiwiOverlayError(f"the write layer at {point} can be neither remounted read-only ({said[0]}) nor frozen ({why})")
        log.info(f"shutdown: the write layer at {point} is still written to; frozen (consistent on disk)")
        return
    if run(["umount", str(point)], check=False, capture=True).returncode == 0:
        log.debug(f"shutdown: the write layer at {point} is read-only and unmounted")
    else:
        log.info(f"shutdown: the write layer at {point} is still in use; remounted read-only")


def shutdown(*, run_dirs: tuple[Path, ...] = RUN_DIRS, nbd_state_dir: Path | None = None) -> None:
    """Sync, leave every write layer under RUN_DIRS clean, detach the NBD devices; reports every failure in one line."""
    os.sync()
    failures = []
    points = mount_points()
    for run_dir in run_dirs:
        point = Layout(run_dir, run_dir).overlayfs
        if str(point) in points:
            try:
                leave_write_layer(point)
            except KiwiOverlayError as error:
                failures.append(str(error))
    from kiwi_overlay import nbd

    try:
        nbd.detach_all(state_dir=nbd_state_dir)
    except nbd.NbdError as error:
        failures.append(str(error))
    if failures:
        raise KiwiOverlayError("; ".join(failures))
