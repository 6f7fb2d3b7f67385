"""`kiwi-overlay dracut-module`: write the dracut module directory (55kiwi-overlay).

The shell files ship in the package (kiwi_overlay/dracut/). The module records the command that
emitted it (COMMAND_FILE), so dracut finds a pip or venv install that is not on its PATH; the
Python closure is traced when an initrd is built, for the interpreter installed then.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

from kiwi_overlay.errors import KiwiOverlayError

COMMAND_FILE = "kiwi-overlay-command"


def running_command() -> Path | None:
    """The kiwi-overlay command running now (absolute, symlinks kept: a venv's bin/), if there is one."""
    candidates = (Path(sys.argv[0]), Path(sys.executable).parent / "kiwi-overlay")  # the command; `python -m` in its bin/
    for candidate in candidates:
        if candidate.name == "kiwi-overlay" and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.absolute()
    return None


def emit(output: Path, *, command: Path | None) -> tuple[Path, ...]:
    """Write the module into OUTPUT (created if needed), recording COMMAND if given; return the files written."""
    if command is not None and (not command.is_absolute() or "\n" in str(command)):
        raise KiwiOverlayError(f"--command {command}: needs an absolute path, e.g. /opt/kiwi-overlay/bin/kiwi-overlay")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(resources.files("kiwi_overlay").joinpath("dracut").iterdir(), key=lambda item: item.name):
        if source.name.endswith(".sh"):
            target = output / source.name
            target.write_bytes(source.read_bytes())
            target.chmod(0o755)
            written.append(target)
    recorded = output / COMMAND_FILE
    if command is None:
        recorded.unlink(missing_ok=True)
    else:
        recorded.write_text(f"{command}\n")
        recorded.chmod(0o644)
        written.append(recorded)
    return tuple(written)
