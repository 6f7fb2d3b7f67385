"""Issue 15's network boots: the root over NBD through a VLAN, a bond, and IPv6 only.

Each boots the session's no-systemd kiwi-overlay initrd (tests/boot/initrd.py) into the test root
and checks what the root's init reports. The VLAN and the bond need the guest kernel (the host has
neither 8021q nor bonding); tests/test_net.py covers the rest of the bring-up in namespaces.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.boot.initrd import session_initrd
from tests.boot.qemu import Guest, boot
from tests.boot.rootfs import root_image
from tests.boot.vlan import VlanSegment

pytestmark = pytest.mark.boot

BOOT_TIMEOUT = 300.0


def busybox_sha256() -> str:
    return hashlib.sha256(Path("/bin/busybox").read_bytes()).hexdigest()


def test_nbd_root_through_a_vlan() -> None:
    """vlan=eth0.42:eth0 ip=eth0.42:dhcp: DHCP and NBD reach the server only as frames tagged 42."""
    with VlanSegment(root_image("squashfs"), vid=42) as segment:
        cmdline = f"root=overlay:{segment.url()} vlan=eth0.42:eth0 ip=eth0.42:dhcp ko.test=checksum"
        guest = Guest(session_initrd(systemd=False), cmdline, user_net=False, netdevs=(segment.netdev(),))
        result = boot(guest, name="net-vlan-nbd", timeout=BOOT_TIMEOUT)
        tagged = segment.tagged
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
    console = result.console()
    assert "eth0.42: VLAN 42 on eth0" in console, result.describe()
    assert "eth0.42: DHCP lease 10.42.0." in console, result.describe()
    assert tagged > 100, f"only {tagged} tagged frames\n{result.describe()}"  # the root was read through the VLAN
