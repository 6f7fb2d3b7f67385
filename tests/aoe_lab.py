"""The AoE lab of test_aoe.py and test_aoe_spoofed.py: a client and a target namespace joined by veth pairs.

The `lab` fixture that yields one is in conftest.py.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

RESPONDER = Path(__file__).with_name("aoe_responder.py")
IMAGE_SIZE = 48 * 2**20 + 3 * 512  # an odd sector count, so the size is really read


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _has_packet_socket(pid: int) -> bool:
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            sockets.add(os.readlink(fd))
        except OSError:
            continue
    rows = Path(f"/proc/{pid}/net/packet").read_text().splitlines()[1:]
    return any(f"socket:[{row.split()[-1]}]" in sockets for row in rows)


class Lab:
    """A client namespace and a target namespace joined by veth pairs ko-aoe-cN <-> ko-aoe-tN."""

    def __init__(self, tmp_path: Path) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.client = f"ko-aoe-{suffix}-c"
        self.target = f"ko-aoe-{suffix}-t"
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[str]] = []
        self.links = 0
        ip("netns", "add", self.client)
        ip("netns", "add", self.target)

    def link(self, *, up: bool = True) -> str:
        """A new veth pair; the target end has MAC 02:00:00:00:a0:0N. Returns the client end's name."""
        n = self.links
        self.links += 1
        client, target = f"ko-aoe-c{n}", f"ko-aoe-t{n}"
        ip("-n", self.client, "link", "add", client, "type", "veth", "peer", "name", target, "netns", self.target)
        ip("-n", self.target, "link", "set", target, "address", self.mac(n), "up")
        if up:
            ip("-n", self.client, "link", "set", client, "up")
        return client

    @staticmethod
    def mac(n: int) -> str:
        return f"02:00:00:00:a0:{n:02x}"

    def spawn(self, *argv: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(["ip", "netns", "exec", self.target, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.processes.append(process)
        return process

    def vblade(self, shelf: int, slot: int, *, link: int = 0) -> None:
        image = self.tmp_path / f"e{shelf}.{slot}.img"
        with image.open("wb") as handle:
            handle.truncate(IMAGE_SIZE)
        process = self.spawn("vblade", str(shelf), str(slot), f"ko-aoe-t{link}", str(image))
        deadline = time.monotonic() + 10
        while not _has_packet_socket(process.pid):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "vblade did not open its socket"
            time.sleep(0.01)

    def responder(self, *, link: int = 0) -> subprocess.Popen[str]:
        process = self.spawn(sys.executable, str(RESPONDER), f"ko-aoe-t{link}")
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n", process.communicate()[1]
        return process

    def call(self, expression: str) -> Any:
        """EXPRESSION (discover or locate of aoe.discovery) evaluated in the client namespace; a KiwiOverlayError is returned."""
        program = (
            "import pickle, sys, time\n"
            "from kiwi_overlay.aoe.discovery import discover, locate\n"
            "from kiwi_overlay.config.plan import AoeRoot\n"
            "from kiwi_overlay.errors import KiwiOverlayError\n"
            f"try:\n    result = {expression}\n"
            "except KiwiOverlayError as error:\n    result = KiwiOverlayError(str(error))\n"
            "sys.stdout.buffer.write(pickle.dumps(result))\n"
        )
        result = subprocess.run(["ip", "netns", "exec", self.client, sys.executable, "-c", program], capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode()
        return pickle.loads(result.stdout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.client, sys.executable, "-m", "kiwi_overlay", "aoe", "discover", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.communicate()
        subprocess.run(["ip", "netns", "del", self.client], check=False)
        subprocess.run(["ip", "netns", "del", self.target], check=False)
