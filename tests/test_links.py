"""links_up against real veth pairs in network namespaces that the test creates and removes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with a veth pair: `ko-a` inside, its peer `ko-b` in a second namespace."""
    name = f"ko-links-{uuid.uuid4().hex[:6]}"
    peer = name + "-p"
    ip("netns", "add", name)
    ip("netns", "add", peer)
    try:
        ip("-n", name, "link", "add", "ko-a", "type", "veth", "peer", "name", "ko-b", "netns", peer)
        yield name
    finally:
        ip("netns", "del", name)
        ip("netns", "del", peer)


def links_up_in(netns: str, code: str) -> str:
    program = f"from kiwi_overlay.net.links import links_up\n{code}"
    result = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_carrier_comes_when_the_peer_is_up(netns: str) -> None:
    # The peer goes up 0.5 s after links_up starts waiting: carrier arrives as a link event.
    subprocess.Popen(["sh", "-c", f"sleep 0.5; ip -n {netns}-p link set ko-b up"])
    assert links_up_in(netns, "print(links_up(['ko-a'], timeout=20))") == "('ko-a',)"


def test_all_ethernet_links_when_none_named(netns: str) -> None:
    ip("-n", netns + "-p", "link", "set", "ko-b", "up")
    assert links_up_in(netns, "print(links_up(None, timeout=20))") == "('ko-a',)"


def test_no_carrier_returns_empty_after_the_timeout(netns: str) -> None:
    out = links_up_in(netns, "print(links_up(['ko-a'], timeout=1))")
    assert out == "()"
    state = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "ko-a"], capture_output=True, text=True, check=True).stdout
    assert "UP" in state.split(">")[0]  # the link itself was set up


def test_unknown_interface_is_named(netns: str) -> None:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", "from kiwi_overlay.net.links import links_up; links_up(['eth9'], timeout=1)"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "network interface eth9 not found (interfaces: ko-a, lo)" in result.stderr
