"""`kiwi-overlay generate`: the systemd generator that mounts an overlay root the systemd way.

For root=overlay:... it writes, into the generator's early directory (ahead of the sysroot.mount
that systemd-fstab-generator makes of root=overlay:... in the normal one):
  kiwi-overlay.service   oneshot `kiwi-overlay prepare`: read device, tmpfs, read and write layers
  sysroot.mount          the overlay (or the read-only bind) that layout.py describes
  initrd-root-fs.target.requires/sysroot.mount
Any other root: nothing. Command line values reach the units only through `_setting`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from kiwi_overlay.cmdline import KernelCmdline, whole_number
from kiwi_overlay.config.claim import is_overlay_root
from kiwi_overlay.config.parse import DEFAULT_TIMEOUT, parse_plan
from kiwi_overlay.config.plan import RUN_DIR, SYSROOT, Plan
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.files import write_whole
from kiwi_overlay.layout import mounts

EXECUTABLE = Path("/usr/bin/kiwi-overlay")  # where the dracut module installs the command
SERVICE = "kiwi-overlay.service"
# Beyond rd.root.overlay.timeout: the interpreter start and the mounts, in a slow emulated guest.
PREPARE_MARGIN = 60
# sysroot.mount is queued at boot and first waits for dracut's initqueue, which gives up after rd.retry.
DRACUT_RETRY_DEFAULT = 180.0
DRACUT_RETRY_MAX = 1_000_000_000  # getargnum's bound elsewhere in dracut; beyond it shell arithmetic overflows

_VALID_UNIT_CHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:_.")
_PATH_MAX, _NAME_MAX = 4096, 255
_EXEC_SAFE = re.compile(r"[A-Za-z0-9/._+-]+")


def escape_path(path: str) -> str:
    """The unit name stem for absolute PATH, exactly as `systemd-escape --path` prints it; ValueError where it refuses."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    simplified = ("/" + "/".join(parts)).encode("utf-8", "surrogateescape")
    if (
        not path.startswith("/")
        or ".." in parts
        or len(simplified) >= _PATH_MAX
        or any(len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX for part in parts)
    ):
        raise ValueError(f"{path!r} is not a normalized absolute path")
    if not parts:
        return "-"
    escaped = []
    for index, byte in enumerate(simplified[1:]):
        if byte == ord("/"):
            escaped.append("-")
        elif byte in _VALID_UNIT_CHARS and not (index == 0 and byte == ord(".")):
            escaped.append(chr(byte))
        else:
            escaped.append(f"\\x{byte:02x}")
    return "".join(escaped)


def mount_unit_name(where: Path) -> str:
    try:
        return escape_path(str(where)) + ".mount"
    except ValueError as error:
        raise KiwiOverlayError(f"no mount unit can be named for {where}: {error}") from None


def _setting(value: str, *, what: str) -> str:
    """VALUE for a unit file setting that expands specifiers (What=, Where=, Options=): '%' doubled.

    Refused: control characters (a newline would end the setting), a trailing backslash (it would
    continue the line) and surrounding white space (the parser strips it).
    """
    if (
        any(ord(char) < 0x20 or ord(char) == 0x7F or 0xDC80 <= ord(char) <= 0xDCFF for char in value)
        or value.endswith("\\")
        or value != value.strip()
    ):
        raise KiwiOverlayError(
            f"{what} {value!r} cannot be written into a systemd unit (control character, byte that is not UTF-8, white space"
            " or trailing backslash)"
        )
    return value.replace("%", "%%")


def _exec_argument(value: str) -> str:
    """A path for ExecStart=: plain characters only, so no quoting, $ or % expansion can change it."""
    if not _EXEC_SAFE.fullmatch(value):
        raise KiwiOverlayError(f"{value!r}: kiwi-overlay generate takes paths of letters, digits and / . _ + - only")
    return value


def prepare_timeout(timeout: float) -> float:
    """How long `kiwi-overlay prepare` may take: it waits up to TIMEOUT for the read device, then for the write device."""
    return 2 * timeout + PREPARE_MARGIN


def _seconds(value: float) -> str:
    return f"{math.ceil(value)}s"


def _retry_limit(cmdline: KernelCmdline) -> float:
    """rd.retry as dracut reads it (getargnum: ASCII digits only, bounded, else the default)."""
    retry = whole_number(cmdline.getarg("rd.retry") or "", low=0, high=DRACUT_RETRY_MAX)
    return DRACUT_RETRY_DEFAULT if retry is None else float(retry)


def service_unit(*, command: str, timeout: float, sysroot: Path, run_dir: Path, executable: Path = EXECUTABLE) -> str:
    """kiwi-overlay.service running `kiwi-overlay COMMAND` (prepare, or mount when no sysroot.mount is written)."""
    arguments = [str(executable), command]
    if run_dir != RUN_DIR:
        arguments += ["--run-dir", str(run_dir)]
    if sysroot != SYSROOT:
        arguments += ["--sysroot", str(sysroot)]
    return f"""\
# Generated by kiwi-overlay generate (root=overlay:...).
[Unit]
Description=kiwi-overlay: read device and layers of the overlay root
DefaultDependencies=no
After=systemd-udevd.service dracut-initqueue.service dracut-pre-mount.service
Before={mount_unit_name(sysroot)} initrd-root-fs.target
Conflicts=shutdown.target
OnFailure=emergency.target
OnFailureJobMode=replace-irreversibly

[Service]
Type=oneshot
RemainAfterExit=yes
# The NBD supervisor started by prepare must outlive this unit (switch-root stops it).
KillMode=process
ExecStart={" ".join(_exec_argument(argument) for argument in arguments)}
TimeoutStartSec={_seconds(prepare_timeout(timeout))}
StandardOutput=journal+console
StandardError=journal+console
"""


def mount_unit(plan: Plan, cmdline: KernelCmdline, *, run_dir: Path, sysroot: Path) -> str:
    """sysroot.mount: the root mount of layout.py, after kiwi-overlay.service."""
    root = mounts(plan, "", run_dir=run_dir, sysroot=sysroot)[-1]
    lines = [
        "# Generated by kiwi-overlay generate (root=overlay:...).",
        "[Unit]",
        "Description=kiwi-overlay root",
        f"Requires={SERVICE}",
        f"After={SERVICE}",
        "Before=initrd-root-fs.target",
        f"JobTimeoutSec={_seconds(_retry_limit(cmdline) + prepare_timeout(plan.timeout))}",
        "",
        "[Mount]",
        f"What={_setting(root.source, what='the root source')}",
        f"Where={_setting(str(sysroot), what='the root')}",
    ]
    if root.fstype:
        lines.append(f"Type={_setting(root.fstype, what='the root filesystem type')}")
    lines.append(f"Options={_setting(','.join(root.options), what='rootflags')}")
    return "\n".join(lines) + "\n"


def generate(
    cmdline: KernelCmdline, normal_dir: Path, *, run_dir: Path = RUN_DIR, sysroot: Path = SYSROOT, executable: Path = EXECUTABLE
) -> tuple[Path, ...]:
    """Write the units for CMDLINE into NORMAL_DIR; the files written (none for a root that is not overlay:).

    When the plan is invalid, the root mount cannot be written as a unit, or anything unforeseen
    fails on the way, kiwi-overlay.service runs `kiwi-overlay mount` instead: it mounts the root
    itself, or fails with its one-line error on the console and starts emergency.target. Each file
    is written under a temporary name and renamed: an empty or half-written unit never masks one.
    """
    if not is_overlay_root(cmdline):
        return ()
    units: dict[str, str] = {}
    timeout = DEFAULT_TIMEOUT
    try:
        plan = parse_plan(cmdline)
        timeout = plan.timeout
        units[mount_unit_name(sysroot)] = mount_unit(plan, cmdline, run_dir=run_dir, sysroot=sysroot)
    except Exception as error:
        if not isinstance(error, KiwiOverlayError):
            from kiwi_overlay import log

            log.info(f"generate: unexpected {type(error).__name__}: {error}; kiwi-overlay.service mounts the root instead")
        units.clear()
    command = "prepare" if units else "mount"
    units[SERVICE] = service_unit(command=command, timeout=timeout, sysroot=sysroot, run_dir=run_dir, executable=executable)
    wanted = mount_unit_name(sysroot) if command == "prepare" else SERVICE
    requires = normal_dir / "initrd-root-fs.target.requires"
    written = [normal_dir / name for name in units]
    try:
        requires.mkdir(parents=True, exist_ok=True)
        for path in written:
            write_whole(path, units[path.name])
        link = requires / wanted
        partial = link.with_name(f".{link.name}.tmp")
        partial.unlink(missing_ok=True)
        partial.symlink_to(f"../{wanted}")
        partial.replace(link)  # generators may run again (daemon-reload)
    except OSError as error:
        raise KiwiOverlayError(f"{error.filename}: {error.strerror}") from None
    return (*written, requires / wanted)
