"""The one way kiwi-overlay runs another program: argv lists only, never a shell."""

from __future__ import annotations

import os

from kiwi_overlay import log
from kiwi_overlay.errors import KiwiOverlayError

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Sequence
    from pathlib import Path


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = False,
    input: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ARGV; with CHECK, a non-zero exit raises a one-line KiwiOverlayError."""
    import subprocess

    args = [str(arg) for arg in argv]
    log.debug("run: " + " ".join(args))
    try:
        result = subprocess.run(args, input=input, capture_output=capture, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise KiwiOverlayError(f"{args[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise KiwiOverlayError(f"{args[0]}: no answer within {timeout:g} s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()
        reason = detail[-1] if detail else f"exit status {result.returncode}"
        raise KiwiOverlayError(f"{' '.join(args)}: {reason}")
    return result


def start(argv: Sequence[str | Path]) -> None:
    """Start ARGV in the background and do not wait for it (its output goes nowhere); a missing program is ignored.

    posix_spawn, not subprocess: the cmdline hook starts modprobe, and importing subprocess
    (threading, selectors, signal) would cost it more than the start itself.
    """
    args = [str(arg) for arg in argv]
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    try:
        os.posix_spawnp(args[0], args, os.environ, file_actions=quiet, setsid=True)
    except OSError as error:
        log.debug(f"{args[0]}: {error.strerror}")


def child_environment() -> dict[str, str]:
    """The environment for a kiwi-overlay interpreter started under another argv[0] (the watch)."""
    import sys
    from pathlib import Path

    # argv[0] is not a path, so the child cannot find a virtualenv from it: hand over our sys.path,
    # and this package's own directory first (an editable install is found by an import hook, not a path).
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[1])
    paths = [package_parent, *(entry for entry in sys.path if entry and entry != package_parent and Path(entry).is_dir())]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("PYTHONHOME", None)
    return env
