"""Filesystem detection on real images, and waiting for real loop devices (this host runs no udevd)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockdev import blank_image, loop_device, make_image, make_tree, unique_label

from kiwi_overlay.config.values import device_from_spec
from kiwi_overlay.devices import KNOWN_FILESYSTEMS, filesystem_type, wait_for_device
from kiwi_overlay.errors import KiwiOverlayError

pytestmark = pytest.mark.root


@pytest.mark.parametrize("fstype", KNOWN_FILESYSTEMS)
def test_filesystem_type_of_real_images(tmp_path: Path, fstype: str) -> None:
    tree = make_tree(tmp_path / "tree") if fstype in ("squashfs", "erofs") else None
    assert filesystem_type(make_image(fstype, tmp_path / "image", tree=tree)) == fstype


def test_no_filesystem(tmp_path: Path) -> None:
    assert filesystem_type(blank_image(tmp_path / "zeros")) is None


@pytest.fixture
def labelled(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    label = unique_label()
    with loop_device(make_image("ext4", tmp_path / "fs.ext4", label=label)) as device:
        yield device, label


def test_existing_device_and_symlink(tmp_path: Path, labelled: tuple[Path, str]) -> None:
    device, _ = labelled
    assert filesystem_type(device) == "ext4"
    assert wait_for_device(device, timeout=1) == device
    (tmp_path / "link").symlink_to(device)
    assert wait_for_device(tmp_path / "link", timeout=1) == device


@pytest.mark.parametrize("tag", ["LABEL", "UUID"])
def test_by_tag_without_udevd(labelled: tuple[Path, str], tag: str) -> None:
    device, label = labelled
    value = label
    if tag == "UUID":
        value = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", str(device)], capture_output=True, text=True).stdout.strip()
    path = device_from_spec(f"{tag}={value}", option="root", example="")
    assert not path.exists()  # no udevd made the link: the probe finds the device
    assert wait_for_device(path, timeout=1) == device


def test_label_with_slash_and_space(tmp_path: Path) -> None:
    label = "ko ovl/" + unique_label()[-4:]
    with loop_device(make_image("ext4", tmp_path / "fs.ext4", label=label)) as device:
        path = device_from_spec(f"LABEL={label}", option="root", example="")
        assert path.name == label.replace(" ", "\\x20").replace("/", "\\x2f")
        assert wait_for_device(path, timeout=1) == device


def test_waits_for_a_device_that_appears_later(tmp_path: Path) -> None:
    label = unique_label()
    image = make_image("ext4", tmp_path / "late.ext4", label=label)
    attached: list[Path] = []

    def attach() -> None:
        result = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True)
        attached.append(Path(result.stdout.strip()))

    timer = threading.Timer(0.5, attach)
    timer.start()
    try:
        found = wait_for_device(Path(f"/dev/disk/by-label/{label}"), timeout=30)
        timer.join()
        assert [found] == attached
    finally:
        timer.cancel()
        timer.join()
        for device in attached:
            subprocess.run(["losetup", "-d", str(device)], check=False)


@pytest.mark.parametrize("path", ["/dev/disk/by-label/{label}", "/dev/{label}"])
def test_timeout_names_the_option(path: str) -> None:
    missing = Path(path.format(label=unique_label()))
    with pytest.raises(KiwiOverlayError) as error:
        wait_for_device(missing, timeout=0.3)
    assert str(error.value) == f"{missing} did not appear within 0.3 s (rd.root.overlay.timeout=0.3)"


def test_waits_without_uevents(tmp_path: Path) -> None:
    """As under a sandbox that denies the netlink socket: the wait looks on an interval instead."""
    link = tmp_path / "root"
    # No descriptor beyond stdin, stdout and stderr: the uevent socket cannot be had.
    code = (
        "import resource, sys; from pathlib import Path; from kiwi_overlay.devices import wait_for_device; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (3, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
        "print(wait_for_device(Path(sys.argv[1]), timeout=30))"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(link)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    try:
        first = child.stderr.readline()
        assert "no kernel uevents (Too many open files): looking every 0.5 s instead" in first
        with loop_device(blank_image(tmp_path / "disk.img", "1M")) as device:
            link.symlink_to(device)
            out, _ = child.communicate(timeout=60)
            assert (child.returncode, out.strip()) == (0, str(device))
    finally:
        child.kill()
        child.wait()
