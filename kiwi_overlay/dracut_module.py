"""`kiwi-overlay dracut-module`: write the dracut module directory (55kiwi-overlay).

The shell files ship in the package (kiwi_overlay/dracut/); the Python closure is traced now,
for the interpreter kiwi-overlay is installed in, and written as a list of module names.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kiwi_overlay.pyclosure import trace

CLOSURE_FILE = "python-closure.txt"


def emit(output: Path, *, python: Path) -> tuple[Path, ...]:
    """Write the module into OUTPUT (created if needed); return the files written."""
    closure = trace(python=python)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(resources.files("kiwi_overlay").joinpath("dracut").iterdir(), key=lambda item: item.name):
        if source.name.endswith(".sh"):
            target = output / source.name
            target.write_bytes(source.read_bytes())
            target.chmod(0o755)
            written.append(target)
    target = output / CLOSURE_FILE
    target.write_text(closure.text())
    target.chmod(0o644)
    written.append(target)
    return tuple(written)
