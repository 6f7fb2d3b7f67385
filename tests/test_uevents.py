"""The kernel's uevents from its netlink broadcast: parsed, and received from the real kernel."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from blockdev import blank_image, loop_device

from kiwi_overlay.uevents import KernelUevents, subsystem


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"add@/devices/virtual/block/nbd0\0ACTION=add\0DEVPATH=/devices/virtual/block/nbd0\0SUBSYSTEM=block\0DEVNAME=nbd0\0", "block"),
        (b"change@/devices/virtual/net/eth0\0ACTION=change\0SUBSYSTEM=net\0", "net"),
        # udevd's own messages (group 2) start with a "libudev" header, never ACTION@DEVPATH
        (b"libudev\0\xfe\xed\xca\xfe" + b"\0" * 32, None),
        (b"add@/devices/x\0ACTION=add\0", None),
        (b"", None),
    ],
)
def test_subsystem_of_a_message(message: bytes, expected: str | None) -> None:
    assert subsystem(message) == expected


def test_a_spent_timeout_returns_at_once() -> None:
    with KernelUevents() as uevents:
        assert uevents.next(timeout=0) is None


@pytest.mark.root
def test_a_loop_device_attached_is_a_block_event(tmp_path: Path) -> None:
    image = blank_image(tmp_path / "disk.img", "1M")
    seen: list[str | None] = []
    with KernelUevents() as uevents:

        def attach() -> None:
            with loop_device(image):
                pass

        attaching = threading.Thread(target=attach)
        attaching.start()
        while (event := uevents.next(timeout=10)) not in (None, "block"):
            seen.append(event)
        attaching.join()
    assert event == "block", f"no block uevent within 10 s of a loop attach (other events: {seen})"
