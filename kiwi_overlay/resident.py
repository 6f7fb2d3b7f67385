"""Small processes that the boot starts and that live on in the real root: the write layer's watch, the AoE keeper.

Each is a new interpreter like the starting one, under an argv[0] of its own, in a session of its
own, running one module's main(). It says `ready` on its stdout once it has imported and opened
everything it needs: after that the initrd's files may go. Both sides import only os and sys at
module level (the resident's start in a TCG guest is paid by the boot).
"""

from __future__ import annotations

import os
import sys

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Sequence

READY = b"ready\n"


def start(name: str, entry: str, arguments: Sequence[str], *, stdin: int | None = None) -> subprocess.Popen[bytes]:
    """Run ENTRY (Python code) under argv[0] NAME with ARGUMENTS (sys.argv[1:]); STDIN as subprocess takes it."""
    import subprocess

    from kiwi_overlay.run import child_environment

    # As this interpreter runs (in the initrd: -I -S -X utf8, no site), and -c, not -m (runpy).
    flags = [flag for flag, on in (("-I", sys.flags.isolated), ("-S", sys.flags.no_site), ("-Xutf8", sys.flags.utf8_mode)) if on]
    return subprocess.Popen(
        [name, *flags, "-B", "-c", entry, *arguments],
        executable=sys.executable,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # it speaks through /dev/kmsg
        env=child_environment(),
        start_new_session=True,  # not in the boot step's signals
        cwd="/",
    )


def is_ready(process: subprocess.Popen[bytes], *, timeout: float) -> bool:
    """Whether PROCESS said it is ready within TIMEOUT seconds; its stdout is closed either way."""
    import select

    assert process.stdout is not None
    with process.stdout:
        answered, _, _ = select.select([process.stdout], [], [], timeout)
        return (process.stdout.readline() if answered else b"") == READY


def announce_ready() -> None:
    """In the resident: tell the starting process, then let go of the pipe (stdout to /dev/null)."""
    os.write(1, READY)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.close(null)


def open_kmsg() -> int | None:
    """/dev/kmsg for say(), opened before the switch to the real root; None when not root."""
    try:
        return os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return None


def say(kmsg: int | None, priority: int, line: str) -> None:
    """LINE on the kernel log at PRIORITY (it reaches the console and the journal), else on stderr."""
    if kmsg is not None:
        try:
            os.write(kmsg, f"<{priority}>{line}\n".encode()[:1000])
            return
        except OSError:
            pass
    try:  # noqa: SIM105 (contextlib: one more import in a resident's start)
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr gone: nowhere left to say it
