"""The console marker protocol of the boot harness (tests/boot/qemu.py), parsed without a guest."""

from __future__ import annotations

from tests.boot.qemu import Mark, parse_mark


def test_markers_carry_the_kernel_timestamp_and_their_value() -> None:
    assert parse_mark("[   27.799170] KO-MARK root-fstype=overlay") == Mark("root-fstype", "overlay", 27.79917)
    assert parse_mark("[    1.000000] KO-MARK mounts-begin") == Mark("mounts-begin", "", 1.0)
    assert parse_mark("[  108.1] KO-MARK read-all=ok device=/dev/nbd0 1+0 records out") == Mark(
        "read-all", "ok device=/dev/nbd0 1+0 records out", 108.1
    )


def test_mount_lines_are_named_mount_with_the_whole_line_as_value() -> None:
    line = "[   27.87] KO-MARK mount /dev/nbd0 /live/image squashfs ro,relatime 0 0"
    assert parse_mark(line) == Mark("mount", "/dev/nbd0 /live/image squashfs ro,relatime 0 0", 27.87)


def test_markers_without_timestamp_or_after_interleaved_output_are_found() -> None:
    assert parse_mark("KO-MARK write=ok") == Mark("write", "ok", None)
    assert parse_mark("dhcp: BOUND[   3.5] KO-MARK init uptime=3.49") == Mark("init", "uptime=3.49", 3.5)
    assert parse_mark("[   27.0] dracut: Switching root") is None
