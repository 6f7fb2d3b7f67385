"""What the kiwi-overlay dracut module adds to an initrd: zstd size with and without it, per flavour.

    python3 benchmarks/initrd_size.py [--json]

Builds the guest-kernel initrd of tests/boot/initrd.py with and without the module (with and
without systemd) and prints the difference, with the added files grouped and compressed per group
(zstd -15, what dracut --zstd uses) to show where the bytes go.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.boot.initrd import build_initrd

BUDGET = 6 * 1024 * 1024


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


def measure(*, systemd: bool, scratch: Path) -> dict[str, object]:
    flavour = "systemd" if systemd else "no-systemd"
    images = {
        kind: build_initrd(systemd=systemd, kiwi_overlay=kind == "with", output=scratch / f"{flavour}-{kind}.img")
        for kind in ("with", "without")
    }
    trees = {kind: unpack(image, scratch / f"{flavour}-{kind}") for kind, image in images.items()}
    sizes = {kind: image.stat().st_size for kind, image in images.items()}
    return {
        "flavour": flavour,
        "with": sizes["with"],
        "without": sizes["without"],
        "added": sizes["with"] - sizes["without"],
        "budget": BUDGET,
        "groups": added(trees["with"], trees["without"]),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ko-initrd-size-") as scratch:
        results = [measure(systemd=systemd, scratch=Path(scratch)) for systemd in (False, True)]
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        sizes = f"{result['without']:,} -> {result['with']:,} bytes"
        print(f"{result['flavour']}: {sizes}: kiwi-overlay adds {result['added']:,} (budget {BUDGET:,})")
        for name, group in result["groups"].items():  # type: ignore[attr-defined]
            print(f"    {name:48} {group['files']:4} files {group['bytes']:>11,} bytes {group['zstd']:>10,} zstd")
    return 0


if __name__ == "__main__":
    sys.exit(main())
