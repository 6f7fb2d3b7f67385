"""Issue 14 item 6: AoE discovery stays bounded when a spoofer on the segment answers for thousands of targets.

A spoofer (tests/aoe_spoofer.py) in the target namespace of a Lab (tests/aoe_lab.py) answers every
Query Config with thousands of well-formed answers, or keeps sending them without a pause.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiwi_overlay.aoe.discovery import MAX_ANSWERS
from kiwi_overlay.aoe.protocol import AoeTarget
from tests.aoe_lab import Lab

pytestmark = pytest.mark.root

SPOOFER = Path(__file__).with_name("aoe_spoofer.py")


def spoofer(lab: Lab, count: int, storm: float = 0.0) -> subprocess.Popen[str]:
    process = lab.spawn(sys.executable, str(SPOOFER), "ko-aoe-t0", str(count), str(storm))
    assert process.stdout is not None and process.stdout.readline() == "ready\n", process.communicate()[1]
    return process


def identifies(process: subprocess.Popen[str]) -> int:
    process.kill()
    return process.communicate()[0].count("identify")


def test_answers_and_probes_are_capped(lab: Lab) -> None:
    lab.link()
    process = spoofer(lab, 3000)
    found = lab.call("discover(['ko-aoe-c0'], timeout=1.5)")
    assert isinstance(found, list) and len(found) == MAX_ANSWERS
    assert identifies(process) <= MAX_ANSWERS


def test_the_wanted_target_is_heard_past_the_cap(lab: Lab) -> None:
    """The cap drops spoofed answers, never the one the boot asked for (e114.199 comes after 2999 others)."""
    lab.link()
    spoofer(lab, 3000)
    found = lab.call("discover(['ko-aoe-c0'], timeout=30, want=(114, 199))")
    assert any((target.shelf, target.slot) == (114, 199) for target in found), found
    assert len(found) <= MAX_ANSWERS + 1


def test_the_error_message_stays_one_short_line(lab: Lab) -> None:
    lab.link()
    spoofer(lab, 3000)
    error = lab.call("locate(AoeRoot(target='e0.9', interface=None, interfaces=('ko-aoe-c0',)), deadline=time.monotonic() + 3)")
    text = str(error)
    assert text.startswith("AoE target e0.9 did not answer within 3 s on ko-aoe-c0; targets that answered: e100.0 on ko-aoe-c0 (")
    assert len(text) < 1000 and "\n" not in text and text.endswith(" more"), text


def test_discovery_ends_at_its_deadline_under_a_storm_of_answers(lab: Lab) -> None:
    """_drain read until the socket was empty: a sender that never pauses kept discovery there forever."""
    lab.link()
    spoofer(lab, 200, storm=60)
    started = time.monotonic()
    found = lab.call("discover(['ko-aoe-c0'], timeout=1)")
    # Not a speed check: without the deadline in _drain the call returns only when the storm ends.
    assert time.monotonic() - started < 45
    assert isinstance(found, list) and 0 < len(found) <= MAX_ANSWERS


def test_many_answers_in_a_message_are_summarised() -> None:
    from kiwi_overlay.aoe.messages import describe_answers

    targets = [AoeTarget(100, slot, "eth0", f"02:aa:00:00:00:{slot:02x}", 1, 8, None) for slot in range(200)]
    text = describe_answers(targets)
    assert text.endswith(", and 192 more") and len(text) < 400, text
