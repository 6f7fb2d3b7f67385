"""The overlay watch (warnings at 80, 90, 95 % of the write layer) and `kiwi-overlay status`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiwi_overlay.watch import next_warning


@pytest.mark.parametrize(
    ("steps", "warnings"),
    [
        ([10, 50, 79.9], [None, None, None]),
        ([81, 85, 91, 96, 99], [80, None, 90, 95, None]),
        ([97], [95]),  # only the highest level crossed is named
        ([91, 86, 91], [90, None, None]),  # 86 is within 5 points of 90: not re-armed
        ([91, 84, 91], [90, None, 90]),  # re-armed below 85
        ([96, 10, 82], [95, None, 80]),  # everything re-armed after the layer was emptied
    ],
)
def test_warning_levels(steps: list[float], warnings: list[int | None]) -> None:
    warned = 0
    said = []
    for percent in steps:
        level, warned = next_warning(percent, warned)
        said.append(level)
    assert said == warnings


def _fill_to(layer: Path, percent: int) -> None:
    stat = os.statvfs(layer)
    wanted = stat.f_blocks * percent // 100 - (stat.f_blocks - stat.f_bfree)
    if wanted > 0:
        (layer / f"fill-{percent}").write_bytes(b"x" * wanted * stat.f_frsize)


def _wait_for_lines(log: Path, count: int) -> list[str]:
    for _ in range(200):
        lines = log.read_text().splitlines()
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    return log.read_text().splitlines()


@pytest.mark.root
def test_watch_warns_on_the_kernel_log_and_ends_with_the_layer(tmp_path: Path) -> None:
    layer, kmsg = tmp_path / "layer", tmp_path / "kmsg"
    layer.mkdir()
    kmsg.touch()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ko-watch-test", str(layer)], check=True)
    try:
        # /dev/kmsg, in a mount namespace of its own, is a file the test reads: the host's kernel log stays clean.
        watch = subprocess.Popen(
            [
                "unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$1" /dev/kmsg && exec "$2" -m kiwi_overlay watch "$3" --interval 0.1',
                "sh", str(kmsg), sys.executable, str(layer),
            ]
        )  # fmt: skip
        try:
            for count, percent in enumerate((82, 91, 96), start=1):
                _fill_to(layer, percent)
                lines = _wait_for_lines(kmsg, count)
                assert len(lines) == count, lines
        finally:
            # Unmounted where the watch looks (its namespace copied the mount); it opens the layer for a moment every 0.1 s.
            for _ in range(100):
                umount = ["nsenter", f"--mount=/proc/{watch.pid}/ns/mnt", "umount", str(layer)]
                if subprocess.run(umount, capture_output=True).returncode == 0:
                    break
                time.sleep(0.05)
        assert watch.wait(timeout=10) == 0  # the layer is gone: so is the watch
    finally:
        subprocess.run(["umount", str(layer)], capture_output=True)
        if watch.poll() is None:
            watch.kill()
    pattern = re.compile(r"<(\d)>kiwi-overlay-watch\[\d+\]: the overlay write layer \((.+), 1 MiB\) is (\d+) % full; writes fail .*")
    found = [pattern.fullmatch(line) for line in lines]
    assert all(found), lines
    assert [(m[1], m[2]) for m in found if m] == [("4", str(layer)), ("4", str(layer)), ("3", str(layer))]
    percents = [int(m[3]) for m in found if m]
    assert 80 <= percents[0] < 90 <= percents[1] < 95 <= percents[2]


def test_watch_without_the_directory_above_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "watch", str(missing / "overlay/overlayfs")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr == f"kiwi-overlay: cannot watch {missing}/overlay/overlayfs: {missing}: No such file or directory\n"


def test_a_watch_whose_layer_was_never_mounted_ends_once_its_starter_is_done(tmp_path: Path) -> None:
    """A layer unmounted before the watch saw it (or never mounted) must not leave the watch waiting for ever."""
    from kiwi_overlay.watch import Started

    layer = tmp_path / "run" / "overlay" / "overlayfs"
    layer.mkdir(parents=True)
    started = Started(layer, interval=0.2)
    started.confirm()
    assert started.process.wait(timeout=30) == 0


def test_the_test_harness_ends_the_watch_of_a_layer_before_it_unmounts(tmp_path: Path) -> None:
    """tests/blockdev.unmount_under ends the watches first, as a shutdown's killing spree does: an unmount during a look fails."""
    from blockdev import end_watches

    from kiwi_overlay.watch import Started

    layer, other_layer = tmp_path / "run" / "overlayfs", tmp_path / "elsewhere" / "overlayfs"
    layer.mkdir(parents=True)
    other_layer.mkdir(parents=True)
    started, other = Started(layer), Started(other_layer)
    try:
        for watch in (started, other):  # running as kiwi-overlay-watch, not yet told the layer is mounted
            assert watch.process.stdout is not None and watch.process.stdout.readline() == b"ready\n"
        end_watches(tmp_path / "run")
        assert started.process.poll() is not None
        assert other.process.poll() is None  # another layer's watch is left alone
    finally:
        for watch in (started, other):
            if watch.process.poll() is None:
                watch.stop()


def test_a_watch_looks_at_nothing_until_its_starter_is_done(tmp_path: Path) -> None:
    """A failed boot unmounts what it mounted before it ends the watch: a look at that moment would make the unmount fail."""
    from kiwi_overlay.watch import Started

    layer = tmp_path / "run" / "overlayfs"
    layer.mkdir(parents=True)
    started = Started(layer, interval=0.1)
    try:
        assert started.process.stdout is not None and started.process.stdout.readline() == b"ready\n"
        waits = []
        for _ in range(5):
            time.sleep(0.1)
            waits.append(Path(f"/proc/{started.process.pid}/wchan").read_text())
        assert all(wait.endswith("pipe_read") for wait in waits), waits  # blocked reading its starter's pipe, nothing else
    finally:
        started.stop()


# In the initrd: systemd sends every process SIGTERM just before it switches root.
_SWITCH_ROOT_CHILD = """
import sys, time
from kiwi_overlay import watch
watch.SWITCH_GRACE = float(sys.argv[1])
switch = watch.SwitchRoot()
print("ready", switch.switched(), flush=True)
while not switch.terminated():
    time.sleep(0.05)
print("terminated", flush=True)
"""


def test_a_sigterm_while_pid_1_stays_in_this_root_ends_the_watch_only_after_the_grace() -> None:
    # Here PID 1 shares this process's root, as in an initrd that shuts down instead of switching.
    child = subprocess.Popen(
        [sys.executable, "-c", _SWITCH_ROOT_CHILD, "1.5"], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1]
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready False\n"
        child.terminate()
        signalled = time.monotonic()
        time.sleep(0.5)
        assert child.poll() is None, "a SIGTERM before the grace ended the watch"
        assert child.stdout.readline() == "terminated\n"
        assert time.monotonic() - signalled >= 1.5
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()
