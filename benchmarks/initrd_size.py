"""4. What the kiwi-overlay dracut module adds to an initrd: size with and without it, zstd and uncompressed.

    python3 -m benchmarks.initrd_size [--json]

The guest-kernel initrd of tests/boot/initrd.py with the module, and the same module list without
it, per flavour (with and without systemd); dracut's stock nbd initrd for scale. The added files are
grouped and compressed per group (zstd -15, what dracut --zstd uses) to show where the bytes go.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.boot_time import DRACUT, FLAVOURS, KIWI, WITHOUT, Initrds
from benchmarks.goals import ADDED_ZSTD
from benchmarks.stats import ratio


def unpack(image: Path, target: Path) -> Path:
    """IMAGE's main archive unpacked into TARGET (dracut puts no early cpio in these images)."""
    target.mkdir(parents=True)
    data = subprocess.run(["zstd", "-dc", str(image)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data, cwd=target, check=True)
    return target


def _group(path: str) -> str:
    if path.startswith("usr/lib/modules/"):
        return "kernel modules"
    if "/python3." in path and (path.endswith(".pyc") or "/lib-dynload/" in path or path.endswith(".so")):
        return "python modules (stdlib + packages, bytecode)"
    if path.startswith("usr/bin/python3"):
        return "python interpreter"
    if ".so" in Path(path).name:
        return "shared libraries"
    return "other"


def _compressed(data: bytes) -> int:
    return len(subprocess.run(["zstd", "-15", "-q", "-c", "-T0"], input=data, capture_output=True, check=True).stdout)


def added(with_module: Path, without: Path) -> dict[str, dict[str, int]]:
    """Files only in WITH_MODULE's tree, grouped: count, bytes, zstd bytes."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(with_module.rglob("*")):
        relative = path.relative_to(with_module)
        if path.is_file() and not path.is_symlink() and not (without / relative).exists():
            groups[_group(str(relative))].append(path)
    return {
        name: {
            "files": len(paths),
            "bytes": sum(path.stat().st_size for path in paths),
            "zstd": _compressed(b"".join(path.read_bytes() for path in paths)),
        }
        for name, paths in sorted(groups.items())
    }


def uncompressed(image: Path) -> int:
    """The size of IMAGE's archive after zstd -d."""
    return len(subprocess.run(["zstd", "-dc", str(image)], capture_output=True, check=True).stdout)


def measure(*, systemd: bool, initrds: Initrds, scratch: Path) -> dict[str, object]:
    """Sizes (zstd and uncompressed) of the kiwi-overlay initrd, the same without the module, and dracut's nbd one."""
    flavour = "systemd" if systemd else "no-systemd"
    images = {kind: initrds.get(kind, systemd=systemd) for kind in (KIWI, WITHOUT, DRACUT)}
    trees = {kind: unpack(images[kind], scratch / f"{flavour}-{kind}") for kind in (KIWI, WITHOUT)}
    return {
        "flavour": flavour,
        "zstd": {kind: image.stat().st_size for kind, image in images.items()},
        "uncompressed": {kind: uncompressed(image) for kind, image in images.items()},
        "groups": added(trees[KIWI], trees[WITHOUT]),
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        f"| initrd | without kiwi-overlay | with kiwi-overlay | added (goal ≤ {_mb(ADDED_ZSTD)} zstd) | with / without "
        "| dracut nbd + rootovl (for scale) |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for form in ("zstd", "uncompressed"):
            size = result[form]
            rows.append(
                f"| {FLAVOURS[result['flavour'] == 'systemd']}, {form} | {_mb(size[WITHOUT])} | **{_mb(size[KIWI])}** "
                f"| {_mb(size[KIWI] - size[WITHOUT])} | {ratio(size[KIWI], size[WITHOUT])} | {_mb(size[DRACUT])} |"
            )
    rows += ["", "What the module adds (no systemd; files only in the kiwi-overlay initrd, each group compressed alone with zstd -15):", ""]
    rows += ["| group | files | bytes | zstd |", "|---|---|---|---|"]
    for name, group in results[0]["groups"].items():
        rows.append(f"| {name} | {group['files']} | {_mb(group['bytes'])} | {_mb(group['zstd'])} |")
    return "\n".join(rows)


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ko-bn-initrd-size-") as scratch:
        initrds = Initrds(Path(scratch))
        results = [measure(systemd=systemd, initrds=initrds, scratch=Path(scratch)) for systemd in FLAVOURS]
    print(json.dumps(results, indent=2) if "--json" in sys.argv else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
