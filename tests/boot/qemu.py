"""Boot the guest kernel with an initrd in QEMU (TCG) and read its serial console.

`boot_until(initrd, append, until=...)` returns the console text up to the first line that
matches UNTIL (a regular expression), then stops the guest. No disk and no network unless
EXTRA_ARGS adds them.
"""

from __future__ import annotations

import re
import selectors
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.boot.guest_kernel import GuestKernel, guest_kernel


class ConsoleTimeout(AssertionError):
    """The guest did not print what was awaited in time; the message carries the console's tail."""


def boot_until(
    initrd: Path,
    append: str,
    *,
    until: str,
    timeout: float = 240.0,
    extra_args: Sequence[str] = (),
    kernel: GuestKernel | None = None,
) -> str:
    """Boot, and return the console up to and including the first line matching UNTIL."""
    kernel = kernel or guest_kernel()
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-kernel",
        str(kernel.vmlinuz),
        "-initrd",
        str(initrd),
        "-append",
        f"console=ttyS0 panic=-1 {append}",
        *extra_args,
    ]
    pattern = re.compile(until)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) as guest:
        assert guest.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(guest.stdout, selectors.EVENT_READ)
        try:
            pending = b""
            while time.monotonic() < deadline:
                if not selector.select(timeout=1.0):
                    continue
                chunk = guest.stdout.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    break
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    lines.append(line)
                    if pattern.search(line):
                        return "\n".join(lines)
        finally:
            guest.kill()
    tail = "\n".join(lines[-40:])
    raise ConsoleTimeout(f"no console line matching {until!r} within {timeout:g} s; last lines:\n{tail}")
