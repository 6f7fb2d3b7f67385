"""Issue 15's root forms on the host: rd.root.overlay.partition and .ram parsed and explained, the RAM copy
on real loop devices, and dracut's own modules' options named with their kiwi-overlay equivalent.

The host kernel reads no partition tables of loop devices: partitions found are tested in QEMU
(tests/test_boot_roots.py); here, a device without any.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockdev import blank_image, loop_device, make_image, make_tree, mounts_under, unmount_under

from kiwi_overlay import ram
from kiwi_overlay.boot import prepare_root
from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.config.parse import parse_plan
from kiwi_overlay.config.plan import AoeRoot, DhcpRoot, LocalRoot, NbdRoot, Partition
from kiwi_overlay.config.roots import root_from_root_path
from kiwi_overlay.errors import KiwiOverlayError, OptionError
from kiwi_overlay.foreign import nbd_uri_from_dracut


@pytest.mark.parametrize(
    ("value", "partition"),
    [
        ("2", Partition(by="number", value="2")),
        ("02", Partition(by="number", value="2")),
        ("PARTLABEL=system", Partition(by="PARTLABEL", value="system")),
        ("PARTUUID=1234-02", Partition(by="PARTUUID", value="1234-02")),
        ("LABEL=root fs", Partition(by="LABEL", value="root fs")),
        ("UUID=4f3c-11", Partition(by="UUID", value="4f3c-11")),
    ],
)
def test_partition_forms(value: str, partition: Partition) -> None:
    plan = parse_plan(KernelCmdline(f'root=overlay:nbd=10.0.0.1:disk "rd.root.overlay.partition={value}"'))
    assert plan.partition == partition


@pytest.mark.parametrize("value", ["0", "256", "", "LABEL=", "label=x", "sda2", "-1"])
def test_bad_partition_is_one_line_naming_the_option(value: str) -> None:
    with pytest.raises(OptionError) as error:
        parse_plan(KernelCmdline(f"root=overlay:aoe=e0.1 rd.root.overlay.partition={value}"))
    assert str(error.value).startswith(f"rd.root.overlay.partition={value}: needs a partition number (1-255) or PARTLABEL=")
    assert str(error.value).endswith("e.g. rd.root.overlay.partition=2")


def test_explain_shows_partition_and_ram() -> None:
    cmdline = "root=overlay:nbd=10.0.0.1:disk rd.root.overlay.partition=LABEL=root rd.root.overlay.ram"
    text = subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "explain", "--cmdline", cmdline], capture_output=True, text=True, check=True
    ).stdout
    assert "on its partition LABEL=root (rd.root.overlay.partition)" in text
    assert "copied into RAM (rd.root.overlay.ram), the device then detached" in text
    assert "/run/overlay/rootfsbase  <- /run/overlay/ram/image  [auto; ro,loop]  read layer" in text
    assert "/run/overlay/ram  <- tmpfs  [tmpfs; mode=0700]  copy of (partition LABEL=root of (NBD device" in text


def test_rd_debug_turns_on_debug_like_rd_kiwi_debug() -> None:
    assert parse_plan(KernelCmdline("root=overlay:LABEL=r rd.debug")).debug
    assert parse_plan(KernelCmdline("root=overlay:LABEL=r rd.kiwi.debug")).debug
    assert not parse_plan(KernelCmdline("root=overlay:LABEL=r rd.debug=0")).debug


@pytest.mark.parametrize(
    ("option", "says"),
    [
        ("rd.overlay", "not needed: kiwi-overlay's root always has an overlay"),
        ("rd.overlay=tmpfs:size=4G,nr_inodes=100", "use rd.root.overlay.size=4G"),
        ("rd.overlay=LABEL=persist", "use rd.root.overlay.write=LABEL=persist"),
        ("rd.overlay=/dev/sdb1", "use rd.root.overlay.write=/dev/sdb1"),
        ("rd.overlay.reset", "use rd.root.overlay.reset"),
        ("rd.overlay.readonly", "the closest is rd.root.overlay.temporary"),
        ("rd.overlay.crypt=LABEL=c", "it has no equivalent"),
        ("rootovl", "not needed: kiwi-overlay's root always has a write layer"),
        ("rd.live.ram", "use rd.root.overlay.ram"),
        ("netroot=nbd:10.0.0.1:root:ext4", "use root=overlay:nbd://10.0.0.1:10809/root rootfstype=ext4"),
    ],
)
def test_dracut_options_are_named_with_the_equivalent(option: str, says: str) -> None:
    plan = parse_plan(KernelCmdline(f"{option} root=overlay:nbd=10.0.0.1:root"))
    assert len(plan.notes) == 1
    assert plan.notes[0].startswith(f"{option} is dracut's ")
    assert says in plan.notes[0]
    # Not an overlay root: kiwi-overlay says nothing about other modules' options.
    assert parse_plan(KernelCmdline(f"{option} root=/dev/sda1")).notes == ()


def test_a_root_nbd_before_the_overlay_root_is_named_too() -> None:
    plan = parse_plan(KernelCmdline("root=nbd:10.0.0.1:10809/root root=overlay:nbd=10.0.0.1:root"))
    assert plan.notes == (
        "root=nbd:10.0.0.1:10809/root is dracut's nbd module's option, which kiwi-overlay does not read; "
        "use root=overlay:nbd://10.0.0.1:10809/root",
    )


@pytest.mark.parametrize(
    ("dracut", "converted"),
    [
        ("nbd:10.0.0.1:10809/root", ("root=overlay:nbd://10.0.0.1:10809/root", None)),
        ("nbd:10.0.0.1:root:squashfs", ("root=overlay:nbd://10.0.0.1:10809/root", "squashfs")),
        ("nbd:10.0.2.2:10900:auto:ro:-name,root", ("root=overlay:nbd://10.0.2.2:10900/root", None)),
        ("nbd:[fd00::1]:10809/r:ext4", ("root=overlay:nbd://[fd00::1]:10809/r", "ext4")),
        ("nbd:10.0.0.1", None),
    ],
)
def test_dracut_nbd_roots_convert(dracut: str, converted: tuple[str, str | None] | None) -> None:
    assert nbd_uri_from_dracut(dracut) == converted


def test_ram_refuses_what_does_not_fit_naming_the_option() -> None:
    ram.check_fits(100 << 20, available=(100 << 20) + ram.RESERVE, device=Path("/dev/nbd0"))
    with pytest.raises(KiwiOverlayError) as error:
        ram.check_fits(2 << 30, available=1 << 30, device=Path("/dev/nbd0"))
    assert str(error.value) == (
        "rd.root.overlay.ram: the read layer /dev/nbd0 is 2048.0 MiB, but only 1024.0 MiB of RAM is available "
        "(64.0 MiB must stay free); boot without rd.root.overlay.ram, or give the machine more memory"
    )


def test_available_memory_is_this_machines() -> None:
    assert 0 < ram.available_memory() < int(Path("/proc/meminfo").read_text().split()[1]) << 10


# ---- on loop devices (root) ---------------------------------------------------------------------------------------


@pytest.fixture
def where(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    run_dir, sysroot = tmp_path / "run", tmp_path / "sysroot"
    yield run_dir, sysroot
    unmount_under(run_dir, sysroot)


@pytest.mark.root
def test_ram_copy_serves_the_root_after_the_device_is_gone(tmp_path: Path, where: tuple[Path, Path]) -> None:
    run_dir, sysroot = where
    image = make_image("squashfs", tmp_path / "root.squashfs", tree=make_tree(tmp_path / "tree"))
    with loop_device(image, read_only=True) as device:
        plan = parse_plan(KernelCmdline(f"root=overlay:UNIXNODE={device.name} rd.root.overlay.ram"))
        prepare_root(plan, run_dir=run_dir, sysroot=sysroot, mount_root=True)
    # The device is detached: every read comes from the copy in RAM.
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    assert (sysroot / "usr/lib/data").read_bytes() == bytes(range(256)) * 64
    assert (sysroot / "etc/marker").read_text() == "image A\n"
    copy = run_dir / "ram/image"
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(image.read_bytes()).digest()
    sources = {line.split()[1]: line.split()[0] for line in Path("/proc/self/mounts").read_text().splitlines()}
    assert sources[str(run_dir / "rootfsbase")].startswith("/dev/loop")
    assert sources[str(run_dir / "rootfsbase")] != str(device)
    assert mounts_under(run_dir, sysroot) == [str(p) for p in (run_dir, run_dir / "ram", run_dir / "rootfsbase", sysroot)]


@pytest.mark.root
def test_partition_of_a_device_without_partitions_fails_in_one_line_and_undoes(tmp_path: Path, where: tuple[Path, Path]) -> None:
    run_dir, sysroot = where
    with loop_device(blank_image(tmp_path / "disk"), read_only=True) as device:
        plan = parse_plan(KernelCmdline(f"root=overlay:UNIXNODE={device.name} rd.root.overlay.partition=2"))
        with pytest.raises(KiwiOverlayError) as error:
            prepare_root(plan, run_dir=run_dir, sysroot=sysroot, mount_root=True)
    assert str(error.value) == f"rd.root.overlay.partition=2: {device} has no partitions (no partition table the kernel reads)"
    assert mounts_under(run_dir, sysroot) == []


# ---- root=dhcp ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root_path", "uri"),
    [
        ("overlay:nbd=10.0.0.1:rootfs", "nbd://10.0.0.1:10809/rootfs"),
        ("nbd://10.0.0.1:10900/rootfs", "nbd://10.0.0.1:10900/rootfs"),
        ("nbds://server.example/rootfs", "nbds://server.example:10809/rootfs"),
        ("nbd:10.0.0.1:10809/rootfs:squashfs", "nbd://10.0.0.1:10809/rootfs"),
    ],
)
def test_a_root_path_names_an_nbd_root_with_the_command_lines_options(root_path: str, uri: str) -> None:
    root = root_from_root_path(root_path, "root=dhcp rd.root.overlay.nbd.connections=2")
    assert isinstance(root, NbdRoot)
    assert (root.uri, root.connections) == (uri, 2)


def test_a_root_path_may_name_aoe_and_local_roots() -> None:
    assert root_from_root_path("overlay:aoe=e1.2", "root=dhcp") == AoeRoot(target="e1.2", interface=None, interfaces=())
    assert root_from_root_path("overlay:LABEL=root", "root=dhcp") == LocalRoot(spec="LABEL=root", device=Path("/dev/disk/by-label/root"))


@pytest.mark.parametrize(
    ("root_path", "problem"),
    [
        (
            "10.0.0.1:/srv/nfsroot",
            "the DHCP root-path '10.0.0.1:/srv/nfsroot' is not an overlay root (overlay:..., nbd://, nbds:// or nbd:)",
        ),
        ("nbd:10.0.0.1", "the DHCP root-path 'nbd:10.0.0.1' is not dracut's nbd:SERVER:PORT/EXPORT"),
        ("overlay:nbd=10.0.0.1", "the DHCP root-path 'overlay:nbd=10.0.0.1': root=overlay:nbd=10.0.0.1: needs HOST:EXPORT"),
    ],
)
def test_a_root_path_that_is_no_overlay_root_is_one_line(root_path: str, problem: str) -> None:
    with pytest.raises(OptionError) as error:
        root_from_root_path(root_path, "root=dhcp")
    assert str(error.value).startswith(f"root=dhcp: {problem}")
    assert str(error.value).endswith("; e.g. a root-path of overlay:nbd=192.168.1.1:rootfs or nbd://192.168.1.1/rootfs")


def test_root_dhcp_plans_dhcp_and_explains_the_root_path() -> None:
    plan = parse_plan(KernelCmdline("root=dhcp"))
    assert isinstance(plan.root, DhcpRoot)
    assert (plan.network.needs_ip, plan.network.ip, plan.network.implied_dhcp) == (True, ("dhcp",), True)
    text = subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "explain", "--cmdline", "root=dhcp"], capture_output=True, text=True, check=True
    ).stdout
    assert "read layer:  the root the DHCP server's root-path (option 17) names" in text


@pytest.mark.root
def test_root_dhcp_mounts_the_root_the_dhcp_server_names(tmp_path: Path) -> None:
    """dnsmasq in a namespace names the root in option 17; `kiwi-overlay mount --cmdline root=dhcp` runs in the client namespace.

    `ip netns exec` gives the client its own mount namespace (a tmpfs on /run there keeps the lease
    files off the host's /run) and its own resolv.conf; the mounts end with it, so they are checked inside.
    """
    from test_net import Lab

    image = make_image("squashfs", tmp_path / "root.squashfs", tree=make_tree(tmp_path / "tree", marker="from root-path"))
    lab = Lab(tmp_path)
    try:
        with loop_device(image, read_only=True) as device:
            lab.link("ko-a", 61, options=(f"option:root-path,overlay:UNIXNODE={device.name}",))
            lab.own_resolv_conf()
            run_dir, sysroot = tmp_path / "run-dir", tmp_path / "sysroot"
            script = (
                'sysroot=$1 run_dir=$2; shift 2; mount -t tmpfs tmpfs /run && "$@" && cat "$sysroot/etc/marker" '
                '&& findmnt -n -o SOURCE "$run_dir/rootfsbase"; status=$?; umount -R "$sysroot" "$run_dir"; exit $status'
            )
            argv = [sys.executable, "-m", "kiwi_overlay", "mount", "--cmdline", "root=dhcp", "--sysroot", str(sysroot)]
            argv += ["--run-dir", str(run_dir)]
            result = subprocess.run(
                ["ip", "netns", "exec", lab.ns, "sh", "-c", script, "sh", str(sysroot), str(run_dir), *argv],
                capture_output=True,
                text=True,
                timeout=120,
            )
    finally:
        lab.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["from root-path", str(device)]
    assert f"kiwi-overlay: root=dhcp: ko-a's lease names the root overlay:UNIXNODE={device.name}" in result.stderr


@pytest.mark.root
def test_root_dhcp_without_a_root_path_is_one_line(tmp_path: Path) -> None:
    from test_net import Lab

    lab = Lab(tmp_path)
    try:
        lab.link("ko-a", 62)
        lab.own_resolv_conf()
        script = 'mount -t tmpfs tmpfs /run && exec "$@"'
        argv = [sys.executable, "-m", "kiwi_overlay", "mount", "--cmdline", "root=dhcp rd.root.overlay.timeout=20"]
        argv += ["--sysroot", str(tmp_path / "sysroot"), "--run-dir", str(tmp_path / "run-dir")]
        result = subprocess.run(
            ["ip", "netns", "exec", lab.ns, "sh", "-c", script, "sh", *argv], capture_output=True, text=True, timeout=120
        )
    finally:
        lab.close()
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "kiwi-overlay: root=dhcp: the DHCP server sent no root-path (option 17) in the lease on ko-a; "
        "set one, e.g. dnsmasq --dhcp-option=option:root-path,overlay:nbd=192.168.1.1:rootfs"
    )
