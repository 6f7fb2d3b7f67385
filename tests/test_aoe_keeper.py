"""The AoE keeper (`@kiwi-overlay-aoe`) on the host: its reading of the block layer's counters, its start.

A stall and the keeper's wake-up read on a real aoe device: tests/test_boot_kiwi.py (test_7b).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from blockdev import loop_device

from kiwi_overlay.aoe.keeper import PROCESS_NAME, Started, counters, stalled, sysfs_stat

# A /sys/block/DEV/stat line (Documentation/block/stat.rst): 17 fields since Linux 5.5, 11 before 4.18.
STAT_OLD = b"    9542        0   190840     3120      10        0      80       4        2     3152     3124\n"
STAT_NOW = STAT_OLD.rstrip() + b"       1        0        8        0        5        0\n"


def test_counters_sum_every_kind_of_completed_request_and_take_those_in_flight() -> None:
    assert counters(STAT_NOW) == (9542 + 10 + 1 + 5, 2)
    assert counters(STAT_OLD) == (9542 + 10, 2)


@pytest.mark.parametrize(
    ("before", "now", "expected"),
    [
        ((100, 0), (100, 0), False),  # idle
        ((100, 3), (140, 3), False),  # busy, and requests complete
        ((100, 3), (100, 3), True),  # requests in flight, none completed since the last look
        ((100, 0), (100, 1), True),  # one request went out after the last look and has not come back
    ],
)
def test_a_stall_is_requests_in_flight_with_none_completed_since_the_last_look(
    before: tuple[int, int], now: tuple[int, int], expected: bool
) -> None:
    assert stalled(before, now) is expected


def test_the_stat_file_of_an_aoe_device_is_named_as_sysfs_names_it() -> None:
    assert sysfs_stat("/dev/etherd/e0.1") == "/sys/block/etherd!e0.1/stat"
    assert sysfs_stat("/dev/loop3") == "/sys/block/loop3/stat"


@pytest.mark.root
def test_the_keeper_holds_a_real_device_under_its_name_and_reads_nothing_while_nothing_stalls(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * (1 << 20))
    with loop_device(image, read_only=True) as device:
        stat = Path(sysfs_stat(str(device)))
        keeper = Started(device, interval=0.1)
        try:
            assert keeper.confirm(timeout=30), f"the keeper did not start (status {keeper.process.returncode})"
            # systemd's mark of a process to spare (switch_root, the shutdown's killing spree): argv[0] begins with '@'.
            assert Path(f"/proc/{keeper.process.pid}/cmdline").read_bytes().split(b"\0")[0] == PROCESS_NAME.encode()
            completed = counters(stat.read_bytes())[0]
            time.sleep(1.0)  # ten looks at an idle device
            assert keeper.process.poll() is None
            assert counters(stat.read_bytes())[0] == completed, "the keeper read an idle device"
        finally:
            keeper.process.kill()
            keeper.process.wait()
