"""Issue 15's root forms in QEMU: a root on a partition of a whole-disk export, the image in RAM, root=dhcp.

The export is tests/boot/rootfs.py's gpt_disk(): GPT, partition 1 "esp", partition 2 "system"
holding the test root. Served over NBD (nbd-server) and AoE (vblade); the initrd is the session's
no-systemd kiwi-overlay initrd of tests/test_boot_kiwi.py.
"""

from __future__ import annotations

import re

import pytest

from tests.boot.qemu import Guest, RunningGuest, boot, log_path
from tests.boot.rootfs import GPT_PARTLABEL, LABEL, gpt_disk, root_image
from tests.boot.servers import AoeTarget, DhcpSegment, NbdServer
from tests.test_boot_kiwi import BOOT_TIMEOUT, busybox_sha256, initrd, mounted

pytestmark = pytest.mark.boot


def test_13_nbd_root_on_a_partition_found_by_its_filesystem_label() -> None:
    """The partition table is read at the attach (no udevd: the first open reads it); LABEL= is the filesystem's, inside."""
    with NbdServer(gpt_disk("ext4")) as server:
        cmdline = f"root=overlay:{server.url()} rd.root.overlay.partition=LABEL={LABEL} rootovl ko.test=checksum,read-files"
        result = boot(Guest(initrd(), cmdline), name="kiwi-13-nbd-partition-label", timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
    assert (result.value("read-files") or "").startswith("ok "), result.describe()
    assert mounted(result, "/run/overlay/rootfsbase") == ("/dev/nbd0p2", "ext4"), result.describe()
    # dracut's overlay-root option is named, with kiwi-overlay's equivalent, rather than ignored.
    assert "kiwi-overlay: rootovl is dracut's overlay-root module's option, which kiwi-overlay does not read" in result.console()


def test_14_nbd_root_on_partition_2_in_ram_survives_the_server_stopping() -> None:
    """rd.root.overlay.ram: the partition is copied into RAM and /dev/nbd0 detached; every file reads with no server."""
    with NbdServer(gpt_disk("squashfs")) as server:
        cmdline = f"root=overlay:{server.url()} rd.root.overlay.partition=2 rd.root.overlay.ram ko.test=hold-3,checksum,read-files"
        with RunningGuest(Guest(initrd(), cmdline), log=log_path("kiwi-14-nbd-partition-ram")) as guest:
            guest.wait_for_mark("hold", timeout=BOOT_TIMEOUT)
            server.stop()
            result = guest.wait(timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
    assert (result.value("read-files") or "").startswith("ok "), result.describe()
    source, fstype = mounted(result, "/run/overlay/rootfsbase") or ("", "")
    assert re.fullmatch(r"/dev/loop\d+", source) and fstype == "squashfs", result.describe()
    assert mounted(result, "/run/overlay/ram") == ("tmpfs", "tmpfs"), result.describe()
    console = result.console()
    assert re.search(r"kiwi-overlay: copied the read layer /dev/nbd0p2 into RAM: [\d.]+ MiB", console), result.describe()
    assert "kiwi-overlay: detached /dev/nbd0: the root runs from RAM (rd.root.overlay.ram)" in console, result.describe()


def test_15_aoe_root_on_a_partition_by_partlabel_in_ram_survives_vblade_stopping() -> None:
    """The aoe driver reads the partition table as it adds the disk; after the copy the driver forgets the target."""
    with AoeTarget(gpt_disk("squashfs"), shelf=0, slot=1) as target:
        cmdline = f"root=overlay:aoe={target.target} rd.root.overlay.partition=PARTLABEL={GPT_PARTLABEL} rd.root.overlay.ram"
        guest = Guest(initrd(), f"{cmdline} ko.test=hold-3,checksum,read-files", user_net=False, taps=(target.tap,))
        with RunningGuest(guest, log=log_path("kiwi-15-aoe-partition-ram")) as running:
            running.wait_for_mark("hold", timeout=BOOT_TIMEOUT)
            target.stop()
            result = running.wait(timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
    assert (result.value("read-files") or "").startswith("ok "), result.describe()
    console = result.console()
    assert "kiwi-overlay: read layer on partition /dev/etherd/e0.1p2 of /dev/etherd/e0.1" in console, result.describe()
    assert "kiwi-overlay: detached /dev/etherd/e0.1: the root runs from RAM (rd.root.overlay.ram)" in console, result.describe()


def test_16_root_dhcp_boots_the_root_that_dnsmasqs_root_path_names() -> None:
    """dnsmasq (in a namespace behind the guest's tap) sends option 17 in KIWI's form; the guest has no other network."""
    with DhcpSegment(root_image("squashfs"), root_path=f"overlay:nbd={DhcpSegment.SERVER_ADDRESS}:root") as segment:
        guest = Guest(initrd(), "root=dhcp ko.test=checksum", user_net=False, taps=(segment.tap,))
        result = boot(guest, name="kiwi-16-root-dhcp", timeout=BOOT_TIMEOUT)
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
    assert mounted(result, "/run/overlay/rootfsbase") == ("/dev/nbd0", "squashfs"), result.describe()
    assert f"kiwi-overlay: root=dhcp: eth0's lease names the root overlay:nbd={DhcpSegment.SERVER_ADDRESS}:root" in result.console()
