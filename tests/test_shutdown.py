"""Issue 14 item 9: `kiwi-overlay shutdown` (the shutdown hook) leaves a persistent write layer clean.

It syncs, unmounts the write layer (or, when something still holds it, remounts it read-only),
then detaches the NBD devices. Here on a loop device on the host.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from blockdev import end_watches, loop_device, make_image
from test_overlay import Machine, local, machine, squashfs_root  # noqa: F401 -- fixtures

pytestmark = pytest.mark.root


def needs_recovery(image: Path) -> bool:
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout
    return "needs_recovery" in next(line for line in out.splitlines() if line.startswith("Filesystem features:"))


def shutdown(run_dir: Path) -> subprocess.CompletedProcess[str]:
    """The shutdown hook, after what runs before it at a real shutdown: the killing spree that ends the watch."""
    end_watches(run_dir)
    argv = [sys.executable, "-m", "kiwi_overlay", "shutdown", "--run-dir", str(run_dir), "--nbd-state-dir", str(run_dir / "no-nbd")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_a_write_layer_still_written_to_is_frozen_clean(machine: Machine, squashfs_root: Path, tmp_path: Path) -> None:  # noqa: F811
    image = make_image("ext4", tmp_path / "cow.ext4")
    with loop_device(image) as device:
        machine.boot(f"{local(squashfs_root)} rd.root.overlay.write={device}")
        with (machine.sysroot / "etc/written").open("w") as held:  # the root is still mounted, a file is open
            held.write("data\n")
            held.flush()
            assert needs_recovery(image)  # mounted: the journal is live
            result = shutdown(machine.run_dir)
            assert (result.returncode, result.stdout) == (0, ""), result.stderr
            assert "still written to; frozen (consistent on disk)" in result.stderr
            assert not needs_recovery(image)  # what a power cut now finds: clean
        subprocess.run(["fsfreeze", "--unfreeze", str(machine.run_dir / "overlayfs")], check=True)
        machine.shut_down()
    assert machine.mounted() == []


def test_an_unused_write_layer_is_unmounted(machine: Machine, squashfs_root: Path, tmp_path: Path) -> None:  # noqa: F811
    image = make_image("ext4", tmp_path / "cow.ext4")
    with loop_device(image) as device:
        machine.boot(f"{local(squashfs_root)} rd.root.overlay.write={device}", mount_root=False)
        result = shutdown(machine.run_dir)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        assert str(machine.run_dir / "overlayfs") not in machine.mounted()
        machine.shut_down()
    assert not needs_recovery(image)
