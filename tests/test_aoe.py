"""AoE discovery against real vblade targets in network namespaces the tests create, plus the pure parts.

The kernel attach (aoe module, /dev/etherd/e0.1) cannot run here: the host has no aoe module and the
driver ignores frames from non-initial namespaces. The QEMU boot suite covers it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiwi_overlay.aoe.messages import human_size, no_device_message, not_found_message, several_targets_error
from kiwi_overlay.aoe.protocol import (
    AoeTarget,
    identify_frame,
    parse_config_response,
    parse_identify_response,
    parse_target,
    query_config_frame,
)
from tests.aoe_lab import IMAGE_SIZE, Lab, ip

VBLADE_FIRMWARE = 0x4000 + 25  # vblade 25 (Debian 12)
VBLADE_BUFFERS = 16
IMAGE_SECTORS = IMAGE_SIZE // 512


def vblade_target(shelf: int, slot: int, interface: str, link: int = 0) -> AoeTarget:
    return AoeTarget(shelf, slot, interface, Lab.mac(link), VBLADE_FIRMWARE, VBLADE_BUFFERS, IMAGE_SECTORS)


# On the wire ----------------------------------------------------------------------------------


@pytest.mark.root
def test_finds_the_vblade_target_with_mac_and_size(lab: Lab) -> None:
    lab.link()
    lab.vblade(0, 1)
    assert lab.call("discover(['ko-aoe-c0'], timeout=1.5)") == [vblade_target(0, 1, "ko-aoe-c0")]


@pytest.mark.root
def test_want_returns_the_wanted_target(lab: Lab) -> None:
    lab.link()
    lab.vblade(0, 1)
    lab.vblade(0, 2)
    found = lab.call("discover(['ko-aoe-c0'], timeout=30, want=(0, 2))")
    assert vblade_target(0, 2, "ko-aoe-c0") in found


@pytest.mark.root
def test_cli_lists_the_target_one_line_each(lab: Lab) -> None:
    lab.link()
    lab.vblade(0, 1)
    expected = f"e0.1 ko-aoe-c0 {Lab.mac(0)} 48M\n"
    named = lab.cli("--interface", "ko-aoe-c0", "--timeout", "1")
    assert (named.returncode, named.stdout) == (0, expected), named.stderr
    every_link = lab.cli("--timeout", "1")  # no --interface: every Ethernet link that is up
    assert (every_link.returncode, every_link.stdout) == (0, expected), every_link.stderr
    as_json = lab.cli("--interface", "ko-aoe-c0", "--timeout", "1", "--json")
    assert json.loads(as_json.stdout) == [
        {
            "name": "e0.1",
            "shelf": 0,
            "slot": 1,
            "interface": "ko-aoe-c0",
            "mac": Lab.mac(0),
            "firmware": VBLADE_FIRMWARE,
            "buffers": VBLADE_BUFFERS,
            "sectors": IMAGE_SECTORS,
            "size_bytes": IMAGE_SIZE,
        }
    ]


@pytest.mark.root
def test_two_targets(lab: Lab) -> None:
    lab.link()
    lab.vblade(0, 1)
    lab.vblade(0, 2)
    assert lab.call("discover(['ko-aoe-c0'], timeout=1.5)") == [vblade_target(0, 1, "ko-aoe-c0"), vblade_target(0, 2, "ko-aoe-c0")]


@pytest.mark.root
def test_none_answers_empty_result_and_exit_1(lab: Lab) -> None:
    lab.link()
    assert lab.call("discover(['ko-aoe-c0'], timeout=0.5)") == []
    result = lab.cli("--interface", "ko-aoe-c0", "--timeout", "0.5")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "kiwi-overlay: no AoE target answered on ko-aoe-c0 within 0.5 s\n"
    assert json.loads(lab.cli("--interface", "ko-aoe-c0", "--timeout", "0.5", "--json").stdout) == []


@pytest.mark.root
def test_answers_on_another_interface_are_not_reported(lab: Lab) -> None:
    lab.link()
    lab.link()
    lab.vblade(0, 1, link=0)
    lab.vblade(0, 2, link=1)
    assert lab.call("discover(['ko-aoe-c0'], timeout=1)") == [vblade_target(0, 1, "ko-aoe-c0")]
    both = lab.call("discover(['ko-aoe-c0', 'ko-aoe-c1'], timeout=1)")
    assert both == [vblade_target(0, 1, "ko-aoe-c0"), vblade_target(0, 2, "ko-aoe-c1", link=1)]


@pytest.mark.root
def test_malformed_answers_are_ignored(lab: Lab) -> None:
    lab.link()
    lab.vblade(0, 1)
    responder = lab.responder()
    found = lab.call("discover(['ko-aoe-c0'], timeout=1.5)")
    responder.kill()
    assert "answered" in responder.communicate()[0]
    # e7.7 is the responder's one well-formed answer: its malformed ones reached the client too.
    fake = AoeTarget(7, 7, "ko-aoe-c0", "02:00:00:00:00:bb", 0x4019, 8, None)
    assert found == [vblade_target(0, 1, "ko-aoe-c0"), fake]


@pytest.mark.root
def test_unknown_and_down_interfaces_are_named(lab: Lab) -> None:
    lab.link(up=False)
    assert str(lab.call("discover(['ko-aoe-zz'], timeout=0.5)")) == "network interface ko-aoe-zz not found"
    assert str(lab.call("discover(['ko-aoe-c0'], timeout=0.5)")) == "network interface ko-aoe-c0 is down"


# Finding the boot target (the wire half of attach_root) ----------------------------------------


@pytest.mark.root
def test_locate_the_one_target_on_the_interface(lab: Lab) -> None:
    lab.link(up=False)  # locate brings it up
    lab.vblade(0, 1)
    located = lab.call("locate(AoeRoot(target=None, interface='ko-aoe-c0', interfaces=('ko-aoe-c0',)), deadline=time.monotonic() + 30)")
    assert (located.target, located.interfaces) == ("e0.1", ("ko-aoe-c0",))


@pytest.mark.root
def test_locate_refuses_several_targets_on_the_interface(lab: Lab) -> None:
    lab.link()
    lab.vblade(0, 1)
    lab.vblade(0, 2)
    error = lab.call("locate(AoeRoot(target=None, interface='ko-aoe-c0', interfaces=('ko-aoe-c0',)), deadline=time.monotonic() + 30)")
    assert str(error) == (
        f"root=overlay:aoe=ko-aoe-c0: 2 AoE targets answer on ko-aoe-c0: e0.1 on ko-aoe-c0 ({Lab.mac(0)}), "
        f"e0.2 on ko-aoe-c0 ({Lab.mac(0)}); name one; e.g. root=overlay:aoe=e0.1"
    )


@pytest.mark.root
def test_locate_a_named_target_finds_the_interface_that_carries_it(lab: Lab) -> None:
    lab.link()
    lab.link()
    lab.vblade(0, 1, link=0)
    lab.vblade(0, 2, link=1)
    located = lab.call("locate(AoeRoot(target='e0.2', interface=None, interfaces=()), deadline=time.monotonic() + 30)")
    assert (located.target, located.interfaces) == ("e0.2", ("ko-aoe-c1",))


@pytest.mark.root
def test_locate_timeout_names_target_interfaces_and_answers(lab: Lab) -> None:
    lab.link()
    lab.link(up=False)
    ip("-n", lab.target, "link", "set", "ko-aoe-t1", "down")  # ko-aoe-c1 gets no carrier
    lab.vblade(0, 1)
    error = lab.call(
        "locate(AoeRoot(target='e0.9', interface=None, interfaces=('ko-aoe-c0', 'ko-aoe-c1', 'eth9')), deadline=time.monotonic() + 2)"
    )
    assert str(error) == (
        "AoE target e0.9 did not answer within 2 s on ko-aoe-c0, ko-aoe-c1 (no carrier), eth9 (missing); "
        f"targets that answered: e0.1 on ko-aoe-c0 ({Lab.mac(0)})"
    )


# Pure parts -----------------------------------------------------------------------------------

CLIENT = bytes.fromhex("525400123456")
TARGET = bytes.fromhex("0200000000a1")


def config_answer(ver_flags: int = 0x18, shelf: int = 3, slot: int = 4, command: int = 1, tag: int = 77, source: bytes = TARGET) -> bytes:
    return (
        CLIENT
        + source
        + struct.pack("!HBBHBBI", 0x88A2, ver_flags, 0, shelf, slot, command, tag)
        + struct.pack("!HHBBH", 16, 0x4019, 2, 0x11, 0)
    ).ljust(60, b"\0")


def identify_answer(words: dict[int, int], *, status: int = 0x40, tag: int = 78) -> bytes:
    data = [0] * 256
    for index, value in words.items():
        data[index] = value
    header = CLIENT + TARGET + struct.pack("!HBBHBBI", 0x88A2, 0x18, 0, 3, 4, 0, tag) + struct.pack("!BBBB6s2x", 0, 0, 0, status, bytes(6))
    return header + struct.pack("<256H", *data)


def test_query_config_is_a_padded_broadcast() -> None:
    frame = query_config_frame(CLIENT, tag=0x01020304)
    assert frame == b"\xff" * 6 + CLIENT + bytes.fromhex("88a2 10 00 ffff ff 01 01020304 0000 0000 00 00 0000") + bytes(28)


def test_identify_asks_one_sector_of_the_target() -> None:
    frame = identify_frame(CLIENT, TARGET, shelf=3, slot=4, tag=9)
    assert frame == TARGET + CLIENT + bytes.fromhex("88a2 10 00 0003 04 00 00000009 00 00 01 ec 000000000000 0000") + bytes(24)


def test_config_answer_parsed() -> None:
    target = parse_config_response(config_answer(), tag=77, interface="eth0")
    assert target == AoeTarget(3, 4, "eth0", "02:00:00:00:00:a1", 0x4019, 16, None)
    assert target.name == "e3.4"


@pytest.mark.parametrize(
    "frame",
    [
        config_answer(ver_flags=0x28),
        config_answer(ver_flags=0x10),
        config_answer(ver_flags=0x1C),
        config_answer(tag=78),
        config_answer()[:31],
        config_answer(command=0),
        config_answer(shelf=0xFFFF),
        config_answer(slot=0xFF),
        config_answer(source=b"\x01\x00\x5e\x00\x00\x01"),
        config_answer()[:12] + b"\x08\x00" + config_answer()[14:],
    ],
    ids=["version-2", "not-a-response", "error", "other-tag", "short", "ata", "broadcast-shelf", "broadcast-slot", "multicast", "ipv4"],
)
def test_malformed_config_answers_rejected(frame: bytes) -> None:
    assert parse_config_response(frame, tag=77, interface="eth0") is None


def test_identify_sector_count() -> None:
    lba48 = {83: 0x5400, 60: 0xFFFF, 61: 0x0FFF, 100: 0x0003, 101: 0x0002, 102: 0x0001}
    assert parse_identify_response(identify_answer(lba48), tag=78) == 0x0001_0002_0003
    assert parse_identify_response(identify_answer({60: 0x5678, 61: 0x1234}), tag=78) == 0x12345678
    assert parse_identify_response(identify_answer(lba48, status=0x41), tag=78) is None
    assert parse_identify_response(identify_answer(lba48), tag=79) is None
    assert parse_identify_response(identify_answer(lba48)[:400], tag=78) is None


@given(st.binary(max_size=700), st.integers(0, 2**32 - 1))
def test_parsers_never_raise(frame: bytes, tag: int) -> None:
    parse_config_response(frame, tag=tag, interface="eth0")
    parse_identify_response(frame, tag=tag)


def test_human_size() -> None:
    assert [human_size(n) for n in (None, 512, 48 * 2**20 + 1536, 3 * 2**29, 2**40)] == ["-", "512B", "48M", "1.5G", "1T"]


def test_parse_target() -> None:
    assert parse_target("e12.34") == (12, 34)


def test_messages_name_target_interfaces_and_answers() -> None:
    answers = [AoeTarget(0, 1, "eth0", "02:00:00:00:00:01", 1, 16, None), AoeTarget(0, 2, "eth1", "02:00:00:00:00:02", 1, 16, None)]
    assert str(several_targets_error("eth0", answers)) == (
        "root=overlay:aoe=eth0: 2 AoE targets answer on eth0: e0.1 on eth0 (02:00:00:00:00:01), "
        "e0.2 on eth1 (02:00:00:00:00:02); name one; e.g. root=overlay:aoe=e0.1"
    )
    assert not_found_message("e1.1", timeout=120, tried=["eth0", "eth1 (no carrier)"], answers=answers) == (
        "AoE target e1.1 did not answer within 120 s on eth0, eth1 (no carrier); "
        "targets that answered: e0.1 on eth0 (02:00:00:00:00:01), e0.2 on eth1 (02:00:00:00:00:02)"
    )
    assert not_found_message("e1.1", timeout=5, tried=["eth0"], answers=[]) == (
        "AoE target e1.1 did not answer within 5 s on eth0; targets that answered: none"
    )
    assert not_found_message(None, timeout=60, tried=["eth0"], answers=[]) == "no AoE target answered on eth0 within 60 s"
    assert not_found_message("e0.1", timeout=60, tried=[], answers=[]) == (
        "AoE target e0.1 did not answer within 60 s on no Ethernet link with carrier; targets that answered: none"
    )
    assert no_device_message(Path("/dev/etherd/e0.1"), timeout=120, interfaces=["eth0"], answers=answers[:1]) == (
        "/dev/etherd/e0.1 did not appear within 120 s (aoe driver on eth0); "
        "targets that answered the wire probe: e0.1 on eth0 (02:00:00:00:00:01)"
    )
