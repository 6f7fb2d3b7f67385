"""The systemd generator: unit names as systemd-escape makes them, units systemd-analyze accepts, and mounts that work."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockdev import loop_device, make_image, make_tree, unmount_under
from hypothesis import given, settings
from hypothesis import strategies as st

from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.generator import EXECUTABLE, escape_path, generate

# Characters with a meaning to systemd-escape, then any others (no NUL: it cannot be in argv).
_SPECIAL = st.sampled_from(list("/.-\\ %:_$\"'aZ09é\t"))
_ANY = st.characters(exclude_characters="\0", exclude_categories=("Cs",))


def systemd_escape(path: str) -> str | None:
    result = subprocess.run(["systemd-escape", "--path", "--", path], capture_output=True, text=True)
    return result.stdout.rstrip("\n") if result.returncode == 0 else None


@settings(max_examples=300, deadline=None)
@given(st.text(st.one_of(_SPECIAL, _ANY), max_size=40).map(lambda text: "/" + text))
def test_escape_path_is_systemd_escape(path: str) -> None:
    assert_escapes_like_systemd(path)


@pytest.mark.parametrize(
    "path",
    ["/", "//", "/.", "/sysroot", "/sysroot/", "/./a//b/.", "/.hidden/x", "/a/../b", "/" + "x" * 255, "/" + "x" * 256]
    + ["/" + "/".join(["y" * 200] * count) + "/" + "z" * tail for count, tail in ((20, 74), (20, 75), (20, 73))],
)
def test_escape_path_edges(path: str) -> None:
    assert_escapes_like_systemd(path)


def assert_escapes_like_systemd(path: str) -> None:
    """escape_path gives what `systemd-escape --path` prints, and refuses what it refuses."""
    expected = systemd_escape(path)
    if expected is None:
        with pytest.raises(ValueError):
            escape_path(path)
    else:
        assert escape_path(path) == expected


def units(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): path.read_text() for path in sorted(directory.rglob("*")) if path.is_file()}


def settings_of(text: str, section: str) -> dict[str, str]:
    """KEY=VALUE of one section, with systemd's %% turned back into %."""
    found: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key] = value.replace("%%", "%")
    return found


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root for `systemd-analyze verify --root`: this machine's systemd and dracut units, the kiwi-overlay
    executable, and etc/systemd/system for the generated units (no stubs: ordering cycles with the real
    initrd units show up)."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    assert (root / "usr/lib/systemd/system/dracut-pre-mount.service").exists()
    executable = root / str(EXECUTABLE).lstrip("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def verify(root: Path, *names: str) -> None:
    """No error and no warning, for NAMES and for the start jobs of the initrd's targets with them in."""
    targets = ("initrd.target", "initrd-switch-root.target")
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *names, *targets], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


def test_not_an_overlay_root_writes_nothing(tmp_path: Path) -> None:
    for cmdline in ("root=/dev/sda1 ro", "", "root=overlay"):
        result = subprocess.run(
            [sys.executable, "-m", "kiwi_overlay", "generate", str(tmp_path), str(tmp_path), str(tmp_path), "--cmdline", cmdline],
            capture_output=True,
            text=True,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert list(tmp_path.iterdir()) == []


def test_units_go_to_the_early_directory(tmp_path: Path) -> None:
    """systemd-fstab-generator writes a sysroot.mount of root=overlay:... into the normal directory."""
    normal, early, late = (tmp_path / name for name in ("normal", "early", "late"))
    subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "generate", str(normal), str(early), str(late), "--cmdline", "root=overlay:LABEL=r"],
        check=True,
    )
    assert not normal.exists() and not late.exists()
    assert sorted(path.name for path in early.iterdir()) == ["initrd-root-fs.target.requires", "kiwi-overlay.service", "sysroot.mount"]


def test_overlay_units(unit_root: Path) -> None:
    directory = unit_root / "etc/systemd/system"
    cmdline = KernelCmdline("root=overlay:nbd=10.0.0.1:rootfs rootflags=redirect_dir=on rd.root.overlay.timeout=30 rd.retry=20")
    generate(cmdline, directory)
    written = units(directory)
    assert sorted(written) == ["initrd-root-fs.target.requires/sysroot.mount", "kiwi-overlay.service", "sysroot.mount"]
    assert (directory / "initrd-root-fs.target.requires/sysroot.mount").readlink() == Path("../sysroot.mount")
    mount = settings_of(written["sysroot.mount"], "Mount")
    assert mount == {
        "What": "overlay",
        "Where": "/sysroot",
        "Type": "overlay",
        "Options": "lowerdir=/run/overlay/rootfsbase,upperdir=/run/overlay/overlayfs/rw,workdir=/run/overlay/overlayfs/work"
        ",redirect_dir=on",
    }
    unit = settings_of(written["sysroot.mount"], "Unit")
    assert (unit["Requires"], unit["After"], unit["Before"]) == ("kiwi-overlay.service", "kiwi-overlay.service", "initrd-root-fs.target")
    assert unit["JobTimeoutSec"] == "140s"  # rd.retry + the service's timeout
    service = settings_of(written["kiwi-overlay.service"], "Service")
    assert service["ExecStart"] == "/usr/bin/kiwi-overlay prepare"
    assert service["TimeoutStartSec"] == "120s"  # read device and write device waits + margin
    assert (service["Type"], service["RemainAfterExit"]) == ("oneshot", "yes")
    assert settings_of(written["kiwi-overlay.service"], "Unit")["OnFailure"] == "emergency.target"
    verify(unit_root, "sysroot.mount", "kiwi-overlay.service")


def test_readonly_units(unit_root: Path) -> None:
    directory = unit_root / "etc/systemd/system"
    generate(KernelCmdline("root=overlay:LABEL=root rd.root.overlay.readonly"), directory)
    mount = settings_of((directory / "sysroot.mount").read_text(), "Mount")
    assert mount == {"What": "/run/overlay/rootfsbase", "Where": "/sysroot", "Options": "bind,ro"}
    verify(unit_root, "sysroot.mount", "kiwi-overlay.service")


def test_values_are_escaped(unit_root: Path) -> None:
    """An escaped mount point name and specifier characters in rootflags survive systemd's parser."""
    directory = unit_root / "etc/systemd/system"
    sysroot = Path("/run/ko-ovl-test/sys-root")
    generate(KernelCmdline(r"root=overlay:LABEL=r rootflags=index=on,a%b\c%%d"), directory, sysroot=sysroot, run_dir=Path("/run/ko-ovl-x"))
    name = "run-ko\\x2dovl\\x2dtest-sys\\x2droot.mount"
    assert name == systemd_escape(str(sysroot)) + ".mount"
    text = (directory / name).read_text()
    assert "Options=lowerdir=/run/ko-ovl-x/rootfsbase,upperdir=/run/ko-ovl-x/overlayfs/rw,workdir=/run/ko-ovl-x/overlayfs/work" in text
    assert text.rstrip("\n").endswith(r",index=on,a%%b\c%%%%d")
    service = settings_of((directory / "kiwi-overlay.service").read_text(), "Service")
    assert service["ExecStart"] == f"/usr/bin/kiwi-overlay prepare --run-dir /run/ko-ovl-x --sysroot {sysroot}"
    verify(unit_root, name, "kiwi-overlay.service")


def test_invalid_command_line_leaves_the_error_to_the_service(unit_root: Path) -> None:
    """No sysroot.mount for a plan that does not parse: the service runs `mount`, which fails with the one-line error."""
    directory = unit_root / "etc/systemd/system"
    generate(KernelCmdline("root=overlay:LABEL=r rd.root.overlay.size=lots"), directory)
    assert sorted(units(directory)) == ["initrd-root-fs.target.requires/kiwi-overlay.service", "kiwi-overlay.service"]
    assert settings_of((directory / "kiwi-overlay.service").read_text(), "Service")["ExecStart"] == "/usr/bin/kiwi-overlay mount"
    verify(unit_root, "kiwi-overlay.service")


@pytest.fixture
def read_device(tmp_path: Path) -> Iterator[Path]:
    image = make_image("erofs", tmp_path / "root.erofs", tree=make_tree(tmp_path / "tree"))
    with loop_device(image, read_only=True) as device:
        yield device
    unmount_under(tmp_path / "run", tmp_path / "sysroot")


@pytest.mark.root
@pytest.mark.parametrize("extra", ["", "rd.root.overlay.readonly"])
def test_mounting_what_the_units_describe(tmp_path: Path, read_device: Path, extra: str) -> None:
    """Run ExecStart of kiwi-overlay.service, then mount exactly What/Type/Options/Where of the mount unit."""
    cmdline = f"root=overlay:UNIXNODE={read_device.name} {extra}"
    directory = tmp_path / "units"
    directory.mkdir()
    sysroot, run_dir = tmp_path / "sysroot", tmp_path / "run"
    generate(KernelCmdline(cmdline), directory, sysroot=sysroot, run_dir=run_dir)
    exec_start = settings_of((directory / "kiwi-overlay.service").read_text(), "Service")["ExecStart"].split()
    assert exec_start[0] == str(EXECUTABLE)
    command = [sys.executable, "-m", "kiwi_overlay", *exec_start[1:], "--cmdline", cmdline]
    subprocess.run(command, check=True, capture_output=True)
    mount = settings_of((directory / (escape_path(str(sysroot)) + ".mount")).read_text(), "Mount")
    sysroot.mkdir()
    type_option = ["-t", mount["Type"]] if "Type" in mount else []
    subprocess.run(["mount", *type_option, "-o", mount["Options"], mount["What"], mount["Where"]], check=True)
    assert (sysroot / "etc/marker").read_text() == "image A\n"
    if extra:
        with pytest.raises(OSError):
            (sysroot / "etc/marker").write_text("changed\n")
    else:
        (sysroot / "etc/marker").write_text("changed\n")
        assert (run_dir / "overlayfs/rw/etc/marker").read_text() == "changed\n"


@pytest.mark.parametrize("retry", ["soon", "nan", "inf", "-5", ""])
def test_an_rd_retry_dracut_would_not_take_counts_as_its_default(tmp_path: Path, retry: str) -> None:
    generate(KernelCmdline(f"root=overlay:LABEL=r rd.root.overlay.timeout=30 rd.retry={retry}"), tmp_path)
    # dracut's default rd.retry (180 s) + the service's timeout (2 x 30 + 60 s)
    assert settings_of((tmp_path / "sysroot.mount").read_text(), "Unit")["JobTimeoutSec"] == "300s"
