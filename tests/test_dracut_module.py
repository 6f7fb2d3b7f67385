"""The dracut module: emitted from the package, committed, shellcheck-clean, and working in real initrds.

The initrds are built with dracut for Debian's 6.1 guest kernel, with and without systemd; their
kiwi-overlay runs in a chroot of the unpacked image, which proves the Python closure is complete.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.boot.initrd import MODULE_DIR, VERITY_CONF, kiwi_overlay_initrd, session_initrd
from tests.boot.qemu import Guest, boot

PACKAGE_COPY = Path(__file__).resolve().parents[1] / "kiwi_overlay/dracut"
NBD = "root=overlay:nbd=192.0.2.1:rootfs"
CHROOT = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin") or "chroot"
GENERATOR = "/usr/lib/systemd/system-generators/kiwi-overlay-generator"  # in the systemd initrd


def kiwi_overlay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiwi_overlay", *args], capture_output=True, text=True, check=False)


def test_committed_module_is_what_the_package_emits(tmp_path: Path) -> None:
    result = kiwi_overlay("dracut-module", "--no-command", "--output", str(tmp_path / "55kiwi-overlay"))
    assert result.returncode == 0, result.stderr
    emitted = tmp_path / "55kiwi-overlay"
    names = sorted(path.name for path in emitted.iterdir())
    assert names == sorted(path.name for path in MODULE_DIR.iterdir()), "regenerate: make dracut-module"
    _, mismatch, errors = filecmp.cmpfiles(emitted, MODULE_DIR, names, shallow=False)
    assert (mismatch, errors) == ([], []), "regenerate: make dracut-module"
    for name in names:
        assert (emitted / name).stat().st_mode == (MODULE_DIR / name).stat().st_mode, name


def test_emitted_module_records_the_command_that_emitted_it(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "kiwi-overlay"  # this venv's: not on dracut's PATH
    result = subprocess.run([command, "dracut-module", "--output", str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "kiwi-overlay-command").read_text() == f"{command}\n"
    module = kiwi_overlay("dracut-module", "--output", str(tmp_path / "module"))  # python -m kiwi_overlay: the command beside it
    assert (tmp_path / "module/kiwi-overlay-command").read_text() == f"{command}\n", module.stderr
    relative = kiwi_overlay("dracut-module", "--command", "bin/kiwi-overlay", "--output", str(tmp_path / "relative"))
    assert (relative.returncode, relative.stderr) == (
        2,
        "kiwi-overlay: --command bin/kiwi-overlay: needs an absolute path, e.g. /opt/kiwi-overlay/bin/kiwi-overlay\n",
    )


FIND_COMMAND = 'dfatal() { :; }; derror() { echo "$*" >&2; }; . "$moddir/module-setup.sh"; _kiwi_overlay'


def find_command(moddir: Path, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    """module-setup.sh's choice of the kiwi-overlay command, run as dracut would (its own PATH)."""
    return subprocess.run(
        ["/bin/bash", "-c", FIND_COMMAND], env={"PATH": path, "moddir": str(moddir), **env}, capture_output=True, text=True, check=False
    )


def test_module_finds_the_recorded_command_then_usr_bin_usr_local_bin_and_path(tmp_path: Path) -> None:
    recorded = tmp_path / "venv/bin/kiwi-overlay"
    on_path = tmp_path / "path/kiwi-overlay"
    for command in (recorded, on_path):
        command.parent.mkdir(parents=True)
        command.write_text("#!/bin/sh\n")
        command.chmod(0o755)
    kiwi_overlay("dracut-module", "--command", str(recorded), "--output", str(tmp_path / "module"))
    assert find_command(tmp_path / "module", "/usr/sbin:/usr/bin:/sbin:/bin").stdout == f"{recorded}\n"
    assert find_command(tmp_path / "module", "/usr/bin", KIWI_OVERLAY=str(on_path)).stdout == f"{on_path}\n", "KIWI_OVERLAY overrides"
    recorded.unlink()  # gone since the emission: the usual places (none here), then PATH
    fallback = find_command(tmp_path / "module", f"{on_path.parent}:/usr/bin")
    installed = [path for path in ("/usr/bin/kiwi-overlay", "/usr/local/bin/kiwi-overlay") if os.access(path, os.X_OK)]
    assert fallback.stdout == f"{installed[0] if installed else on_path}\n"
    assert find_command(MODULE_DIR, "/nowhere").stdout == (f"{installed[0]}\n" if installed else ""), "the committed copy records none"


def test_closure_is_traced_for_this_interpreter_with_names_only_and_no_aliases() -> None:
    from kiwi_overlay.pyclosure import trace

    closure = trace(python=Path(sys.executable))
    assert list(closure.stdlib) == sorted(closure.stdlib)
    assert {"ssl", "socket", "json", "argparse", "ctypes", "encodings.utf_8", "collections"} <= set(closure.stdlib)
    unwanted = {"site", "sitecustomize", "tkinter", "pydoc", "__main__", "test", "os.path", "sys", "_frozen_importlib"}
    assert not unwanted & set(closure.stdlib)
    assert not {"asyncio", "unittest", "sqlite3"} & set(closure.stdlib), "pyroute2's sockets, test helpers and NDB stay out"
    assert closure.packages == ("kiwi_overlay", "psutil", "pyroute2")


def test_import_scan_finds_function_level_and_relative_imports(tmp_path: Path) -> None:
    from kiwi_overlay.pyclosure import source_imports

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import a\n")
    (package / "a.py").write_text("def f():\n    import ssl\n    from .sub import b\n")
    (package / "sub/__init__.py").write_text("from .. import a\nfrom .b import x\n")
    (package / "sub/b.py").write_text("")
    assert source_imports(package) == {"pkg", "pkg.a", "ssl", "pkg.sub", "pkg.sub.b", "pkg.sub.b.x"}


def test_dracut_python_writes_bytecode_and_a_launcher_and_names_the_elf_files(tmp_path: Path) -> None:
    result = kiwi_overlay("dracut-python", "--initdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    elf_files = result.stdout.splitlines()
    interpreter = os.path.realpath(sys.executable)
    assert elf_files[0] == interpreter
    assert any(path.endswith("/libssl.so.3") for path in elf_files)
    assert not any("sqlite" in path for path in elf_files), "pyroute2's NDB (sqlite3) is not on the boot path"
    launcher = (tmp_path / "usr/bin/kiwi-overlay").read_text()
    assert launcher.startswith(f"#!{interpreter} -ISBXutf8\n")
    stdlib = tmp_path / Path(sysconfig.get_path("stdlib")).relative_to("/")
    assert (stdlib / "os.pyc").is_file() and not (stdlib / "os.py").exists()
    assert (stdlib / "kiwi_overlay/cli.pyc").is_file()
    assert [path.name.split("-")[0] for path in sorted(stdlib.glob("*.dist-info"))] == ["kiwi_overlay", "psutil", "pyroute2"]
    assert not list(stdlib.rglob("*.py"))
    # pyroute2 by the directories the trace entered: its link kinds (loaded by listing their directory), not
    # NDB, nor its sockets and asyncio (kiwi_overlay.netlink sends its messages over sockets of its own).
    assert (stdlib / "pyroute2/netlink/rtnl/ifinfmsg/plugins/bond.pyc").is_file()
    assert not (stdlib / "pyroute2/iproute").exists() and not (stdlib / "asyncio").exists()
    assert not (stdlib / "pyroute2/ndb").exists() and not (stdlib / "sqlite3").exists()
    # Of a package's top directory only what the trace loaded: not pyroute2's ipset or wireless modules, nor
    # psutil's for other systems; kiwi_overlay's own whole (python3 -m kiwi_overlay needs its __main__).
    assert (stdlib / "pyroute2/common.pyc").is_file() and not (stdlib / "pyroute2/ipset.pyc").exists()
    assert (stdlib / "psutil/_pslinux.pyc").is_file() and not (stdlib / "psutil/_pswindows.pyc").exists()
    assert (stdlib / "kiwi_overlay/__main__.pyc").is_file()
    # Without docstrings, with each function on its source line (tracebacks under rd.kiwi.debug).
    from kiwi_overlay import cli

    probe = (
        "import sys; sys.path[:0] = [sys.argv[1]]; from kiwi_overlay import cli; "
        "print(cli.__doc__, cli.main.__doc__, cli.main.__code__.co_firstlineno)"
    )
    shipped = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(stdlib)], capture_output=True, text=True, check=True)
    assert shipped.stdout.split() == ["None", "None", str(cli.main.__code__.co_firstlineno)]


def bare_venv(path: Path, *packages: str, python: Path = Path(sys.executable)) -> Path:
    """A venv of PYTHON with only PACKAGES, copied from this venv's site-packages."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(path)], check=True)
    site = Path(sysconfig.get_path("purelib"))
    (target,) = path.glob("lib/python3.*/site-packages")
    for name in packages:
        if name == "kiwi_overlay":  # this checkout, as the editable install has it
            (target / "kiwi_overlay.pth").write_text(f"{PACKAGE_COPY.parents[1]}\n")
            continue
        shutil.copytree(site / name, target / name)
        for metadata in site.glob(f"{name}-*.dist-info"):
            shutil.copytree(metadata, target / metadata.name)
    return path / "bin/python"


def dracut_python(python: Path, initdir: Path) -> subprocess.CompletedProcess[str]:
    """`kiwi-overlay dracut-python` under PYTHON, this checkout's kiwi_overlay first on its path."""
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from kiwi_overlay.cli import main; raise SystemExit(main())"
    argv = [str(python), "-I", "-c", code, str(PACKAGE_COPY.parents[1]), "dracut-python", "--initdir", str(initdir)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_dracut_python_stops_in_one_line_for_a_missing_dependency(tmp_path: Path) -> None:
    python = bare_venv(tmp_path / "bare", "psutil")
    result = dracut_python(python, tmp_path / "initrd")
    expected = f"kiwi-overlay: {python} has no kiwi_overlay, pyroute2: install kiwi-overlay for the Python that goes into the initrd\n"
    assert (result.returncode, result.stderr) == (2, expected)
    assert not (tmp_path / "initrd").exists()


def test_dracut_python_stops_in_one_line_for_a_dependency_too_old(tmp_path: Path) -> None:
    python = bare_venv(tmp_path / "old", "kiwi_overlay", "psutil", "pyroute2")
    (metadata,) = python.parents[1].glob("lib/python3.*/site-packages/psutil-*.dist-info/METADATA")
    metadata.write_text(re.sub(r"(?m)^Version: .*$", "Version: 5.8.0", metadata.read_text()))
    result = dracut_python(python, tmp_path / "initrd")
    expected = f"kiwi-overlay: psutil 5.8.0 is too old for kiwi-overlay: it needs psutil >= 5.9.4 (for {python})\n"
    assert (result.returncode, result.stderr) == (2, expected)


def test_dracut_python_carries_an_interpreter_outside_usr(tmp_path: Path) -> None:
    """As pyenv's and uv's are: a prefix of its own (here, Debian's interpreter and library copied), used through a venv."""
    prefix = tmp_path / "pyenv/versions/3"
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (prefix / "bin").mkdir(parents=True)
    base = Path(os.path.realpath(sys.executable))
    shutil.copy2(base, prefix / "bin" / version)
    shutil.copytree(Path(sysconfig.get_path("stdlib")), prefix / "lib" / version, symlinks=True)
    python = bare_venv(tmp_path / "venv", "kiwi_overlay", "psutil", "pyroute2", python=prefix / "bin" / version)
    initdir = tmp_path / "initrd"
    result = dracut_python(python, initdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(prefix / "bin" / version)
    inside = initdir / prefix.relative_to("/")
    assert os.readlink(inside / "bin/python3") == version
    assert (inside / "lib" / version / "os.pyc").is_file() and (inside / "lib" / version / "pyroute2/__init__.pyc").is_file()
    assert (initdir / "usr/bin/kiwi-overlay").read_text().startswith(f"#!{prefix}/bin/{version} -ISBXutf8\n")


def test_minimum_versions_are_the_ones_pyproject_declares() -> None:
    from kiwi_overlay.pyclosure import MINIMUM_VERSIONS

    declared = tomllib.loads((PACKAGE_COPY.parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(declared) == sorted(f"{name}>={version}" for name, version in MINIMUM_VERSIONS.items())


@pytest.mark.parametrize("path", sorted(MODULE_DIR.glob("*.sh")), ids=lambda path: path.name)
def test_shell_files_pass_shellcheck(path: Path) -> None:
    result = subprocess.run(["shellcheck", "--severity=style", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("cmdline", "conf"),
    [
        (NBD, "rd.neednet=1 ip=dhcp\n"),
        (NBD + " ip=eth0:dhcp", "rd.neednet=1\n"),
        ("root=overlay:nbd://[fd00::1]:10900/rootfs ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:none", "rd.neednet=1\n"),
    ],
)
def test_dracut_cmdline_asks_dracut_for_the_network_and_the_shutdown_initramfs_for_nbd(tmp_path: Path, cmdline: str, conf: str) -> None:
    result = kiwi_overlay("dracut-cmdline", "--root", str(tmp_path), "--cmdline", cmdline)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert (tmp_path / "etc/cmdline.d/kiwi-overlay-net.conf").read_text() == conf
    assert (tmp_path / "run/initramfs/.need_shutdown").exists()


@pytest.mark.parametrize("cmdline", ["root=overlay:aoe=e0.1", "root=overlay:aoe=eth1", "root=overlay:LABEL=root"])
def test_dracut_cmdline_claims_aoe_and_local_roots_without_network_or_shutdown(tmp_path: Path, cmdline: str) -> None:
    result = kiwi_overlay("dracut-cmdline", "--root", str(tmp_path), "--cmdline", cmdline)
    assert (result.returncode, result.stderr) == (0, "")
    assert list(tmp_path.rglob("*")) == [], "AoE is layer 2: no ip=, no rd.neednet"


@pytest.mark.parametrize("root", ["aoe=e0.1", "LABEL=root"])
def test_a_write_device_asks_for_the_shutdown_initramfs_with_any_transport(tmp_path: Path, root: str) -> None:
    """Issue 14 item 9: the shutdown hook leaves a persistent write layer clean, whatever carries the root."""
    result = kiwi_overlay("dracut-cmdline", "--root", str(tmp_path), "--cmdline", f"root=overlay:{root} rd.root.overlay.write=LABEL=cow")
    assert (result.returncode, result.stderr) == (0, "")
    assert [path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file()] == [Path("run/initramfs/.need_shutdown")]


@pytest.mark.parametrize("cmdline", ["root=/dev/sda1", "root=nbd:192.0.2.1:rootfs", "quiet", "root=overlay:nbd=1.2.3.4:a root=LABEL=x"])
def test_dracut_cmdline_leaves_other_roots_alone(tmp_path: Path, cmdline: str) -> None:
    result = kiwi_overlay("dracut-cmdline", "--root", str(tmp_path), "--cmdline", cmdline)
    assert (result.returncode, result.stderr) == (1, "")
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize(
    ("cmdline", "files"),
    [
        ("root=overlay:nbd=192.0.2.1", ["etc/cmdline.d/kiwi-overlay-net.conf", "run/initramfs/.need_shutdown"]),
        ("root=overlay:tftp=x", []),
        ("root=overlay:", []),
    ],
)
def test_dracut_cmdline_claims_an_invalid_overlay_root_for_the_mount_step_to_refuse(tmp_path: Path, cmdline: str, files: list[str]) -> None:
    """The hook checks nothing: the mount step (or kiwi-overlay.service) parses every option and says what is wrong."""
    result = kiwi_overlay("dracut-cmdline", "--root", str(tmp_path), "--cmdline", cmdline)
    assert (result.returncode, result.stderr) == (0, "")
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file()) == files
    explained = kiwi_overlay("explain", "--cmdline", cmdline)
    assert explained.returncode == 2 and explained.stderr.startswith(f"kiwi-overlay: {cmdline.partition(' ')[0]}: ")


# What the generator leaves for the cmdline hook and systemd-modules-load, for an NBD root.
NBD_ANSWER = {
    "run/kiwi-overlay/dracut-cmdline": "0\n",
    "run/modules-load.d/kiwi-overlay.conf": "nbd\n",
    "run/kiwi-overlay/kiwi-overlay-net.conf": "rd.neednet=1 ip=dhcp\n",
    "run/initramfs/.need_shutdown": "",
}


@pytest.mark.parametrize(
    ("cmdline", "files"),
    [
        (NBD, NBD_ANSWER),
        ("root=overlay:aoe=e0.1", {"run/kiwi-overlay/dracut-cmdline": "0\n"}),
        ("root=/dev/sda1", {"run/kiwi-overlay/dracut-cmdline": "1\n"}),
        # invalid, claimed all the same: kiwi-overlay.service runs `kiwi-overlay mount`, which says why
        ("root=overlay:nbd=192.0.2.1", NBD_ANSWER),
    ],
)  # fmt: skip
def test_generator_answers_for_the_cmdline_hook(tmp_path: Path, cmdline: str, files: dict[str, str]) -> None:
    from kiwi_overlay.cmdline import KernelCmdline
    from kiwi_overlay.dracut_cmdline import answer_ahead

    answer_ahead(KernelCmdline(cmdline), root=tmp_path)
    assert {str(path.relative_to(tmp_path)): path.read_text() for path in tmp_path.rglob("*") if path.is_file()} == files


def test_generator_answers_once_per_boot(tmp_path: Path) -> None:
    """systemd runs generators again at every daemon-reload: the work (and its messages) happen once."""
    from kiwi_overlay.cmdline import KernelCmdline
    from kiwi_overlay.dracut_cmdline import answer_ahead

    answer_ahead(KernelCmdline(NBD), root=tmp_path)
    (tmp_path / "run/kiwi-overlay/kiwi-overlay-net.conf").unlink()  # moved by the cmdline hook
    answer_ahead(KernelCmdline(NBD), root=tmp_path)
    assert not (tmp_path / "run/kiwi-overlay/kiwi-overlay-net.conf").exists()


# ---- real initrds -------------------------------------------------------------------------------------------------

FLAVOURS = pytest.mark.parametrize("systemd", [False, True], ids=["no-systemd", "systemd"])


def unpack(image: Path, target: Path) -> Path:
    target.mkdir()
    data = subprocess.run(["zstd", "-dc", str(image)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data, cwd=target, check=True)
    return target


def listing(image: Path) -> set[str]:
    out = subprocess.run(["lsinitrd", str(image)], capture_output=True, text=True, errors="replace", check=True).stdout
    return {line.split()[8] for line in out.splitlines() if len(line.split()) >= 9 and line[:1] in "-dl"}


def verity_stack(files: set[str]) -> tuple[bool, bool]:
    """Whether an initrd's files hold veritysetup, and dm-verity.ko."""
    return "usr/sbin/veritysetup" in files, any(name.endswith("md/dm-verity.ko") for name in files)


@pytest.fixture(scope="session", params=[False, True], ids=["no-systemd", "systemd"])
def initrd(request: pytest.FixtureRequest) -> tuple[bool, Path]:
    return request.param, session_initrd(systemd=request.param)


def unpacked_initrd(*, systemd: bool, target: Path) -> Path:
    """The session's initrd unpacked, with the /dev/null that devtmpfs gives it at boot (subprocess needs it)."""
    root = unpack(session_initrd(systemd=systemd), target)
    (root / "dev").mkdir(exist_ok=True)
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return root


@pytest.fixture
def chroot_dir(initrd: tuple[bool, Path], tmp_path: Path) -> Path:
    return unpacked_initrd(systemd=initrd[0], target=tmp_path / "initrd")


# dracut's cmdline stage, as far as the hook sees it: dracut-lib, root= as dracut parsed it, the hook.
CMDLINE_HOOK = (
    '. /lib/dracut-lib.sh; root=$(getarg root=); . /usr/lib/dracut/hooks/cmdline/20-kiwi-overlay-cmdline.sh; echo "$root $rootok"'
)


def in_chroot(root: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROOT, str(root), *argv], capture_output=True, text=True, errors="replace", check=False, env=env or {"PATH": "/usr/sbin:/usr/bin"}
    )


@pytest.mark.root
def test_initrd_holds_the_interpreter_the_package_its_dependencies_and_the_hooks(initrd: tuple[bool, Path]) -> None:
    systemd, image = initrd
    files = listing(image)
    python = Path(os.path.realpath(sys.executable))
    stdlib = f"usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}"
    expected = {
        str(python.relative_to("/")),
        "usr/bin/kiwi-overlay",
        f"{stdlib}/os.pyc",
        f"{stdlib}/ssl.pyc",
        f"{stdlib}/kiwi_overlay/cli.pyc",
        f"{stdlib}/pyroute2/__init__.pyc",
        f"{stdlib}/psutil/__init__.pyc",
        "usr/lib/dracut/hooks/cmdline/20-kiwi-overlay-cmdline.sh",
        "usr/lib/dracut/hooks/shutdown/45-kiwi-overlay-shutdown.sh",
    }
    assert expected <= files, sorted(expected - files)
    assert any(name.startswith(f"{stdlib}/psutil/_psutil_linux") for name in files)
    assert not any(name.endswith("/ldconfig") for name in files), "no library lookup at boot (kiwi_overlay.uevents)"
    assert any(name.endswith("/libssl.so.3") for name in files)
    assert not any(name.endswith(".py") and name.startswith(stdlib) for name in files), "bytecode only"
    assert not any("/tests/" in name for name in files if name.startswith(stdlib))
    for driver in ("block/nbd.ko", "block/aoe/aoe.ko", "overlayfs/overlay.ko", "squashfs/squashfs.ko", "erofs/erofs.ko", "block/loop.ko"):
        assert any(name.endswith(driver) for name in files), driver
    assert verity_stack(files) == (False, False), "dm-verity only with kiwi_overlay_verity=yes"
    generator = "usr/lib/systemd/system-generators/kiwi-overlay-generator"
    mount_hook = "usr/lib/dracut/hooks/mount/10-kiwi-overlay-mount.sh"
    assert (generator in files, mount_hook in files) == (systemd, not systemd)


@pytest.mark.root
@pytest.mark.parametrize("verity", [False, True], ids=["default", "kiwi_overlay_verity=yes"])
def test_veritysetup_and_dm_verity_go_in_only_with_kiwi_overlay_verity(verity: bool) -> None:
    """Issue 16 goal 3: about 0.6 MB zstd that an initrd carries only when dracut.conf.d asks for it."""
    files = listing(session_initrd(systemd=False, verity=verity))
    assert verity_stack(files) == (verity, verity)
    assert any(name.endswith("/libcryptsetup.so.12") for name in files) == verity


def failed_build(tmp_path: Path, conf: str, *, hidden: tuple[Path, ...] = ()) -> list[str]:
    """The kiwi-overlay lines of the log of a no-systemd build that dracut gave up (HIDDEN: host files it does not see)."""
    output = tmp_path / "initrd.img"
    with pytest.raises(RuntimeError, match="dracut failed"):
        kiwi_overlay_initrd(output=output, systemd=False, conf=conf, hidden=hidden)
    assert not output.exists()
    return [line for line in output.with_name("initrd.img.log").read_text().splitlines() if "kiwi-overlay: " in line]


@pytest.mark.root
@pytest.mark.parametrize("value", ["maybe", "YES", "1"])
def test_kiwi_overlay_verity_other_than_yes_or_no_stops_the_build_with_one_line(tmp_path: Path, value: str) -> None:
    expected = f'dracut: kiwi-overlay: kiwi_overlay_verity="{value}" in dracut.conf.d: must be yes or no, e.g. kiwi_overlay_verity="yes"'
    assert failed_build(tmp_path, f'kiwi_overlay_verity="{value}"\n') == [expected]


@pytest.mark.root
def test_kiwi_overlay_verity_on_a_build_host_without_veritysetup_stops_the_build_with_one_line(tmp_path: Path) -> None:
    veritysetup = Path(os.path.realpath(shutil.which("veritysetup", path="/usr/sbin:/usr/bin") or "/usr/sbin/veritysetup"))
    assert failed_build(tmp_path, VERITY_CONF, hidden=(veritysetup,)) == [
        'dracut: kiwi-overlay: kiwi_overlay_verity="yes" in dracut.conf.d needs veritysetup on the build host: '
        "install cryptsetup-bin (Debian, Ubuntu) or cryptsetup (openSUSE, Fedora)"
    ]


@pytest.mark.root
def test_verity_on_an_initrd_without_veritysetup_says_how_to_build_one(tmp_path: Path) -> None:
    """What rd.root.overlay.verity meets in a default initrd once the read device is attached: one line."""
    chroot_dir = unpacked_initrd(systemd=False, target=tmp_path / "initrd")
    code = (
        "from pathlib import Path; from kiwi_overlay.errors import KiwiOverlayError; from kiwi_overlay.verity import open_verified\n"
        "try: open_verified(Path('/dev/nbd0'), 64 * '0')\nexcept KiwiOverlayError as error: print(error)"
    )
    result = in_chroot(chroot_dir, "python3", "-I", "-S", "-c", code)
    assert (result.stdout, result.stderr) == (
        f'rd.root.overlay.verity={64 * "0"}: this initrd has no veritysetup; build it with kiwi_overlay_verity="yes" in '
        "dracut.conf.d (and veritysetup, cryptsetup-bin, on the build host)\n",
        "",
    )


@pytest.mark.root
def test_kiwi_overlay_explains_a_plan_inside_the_initrd(chroot_dir: Path) -> None:
    result = in_chroot(chroot_dir, "/usr/bin/kiwi-overlay", "explain", "--cmdline", NBD + " rd.root.overlay.size=2g")
    assert result.returncode == 0, result.stderr
    assert "NBD export 'rootfs' on 192.0.2.1:10809" in result.stdout
    assert "tmpfs of 2g" in result.stdout
    module = in_chroot(chroot_dir, "python3", "-m", "kiwi_overlay", "explain", "--json", "--cmdline", "root=overlay:aoe=e0.1")
    assert module.returncode == 0, module.stderr
    assert '"transport": "aoe"' in module.stdout


@pytest.mark.root
def test_kiwi_overlay_in_the_initrd_ignores_the_callers_environment(chroot_dir: Path) -> None:
    hostile = {"PATH": "/nowhere", "PYTHONPATH": "/nowhere", "PYTHONHOME": "/nowhere", "PYTHONSAFEPATH": "x", "LANG": "de_DE.ISO-8859-15"}
    result = in_chroot(chroot_dir, "/usr/bin/kiwi-overlay", "explain", "--cmdline", NBD, env=hostile)
    assert result.returncode == 0, result.stderr


@pytest.mark.root
def test_dependencies_import_and_work_inside_the_initrd(chroot_dir: Path) -> None:
    code = (
        "import psutil, ssl, json; "
        "from kiwi_overlay.netlink.route import Route; from kiwi_overlay.netlink.generic import GenericSocket; "
        "from kiwi_overlay.netlink.pyroute import ctrlmsg; Route().links(); GenericSocket().bind('nlctrl', ctrlmsg); "
        "from kiwi_overlay.uevents import KernelUevents; KernelUevents().__exit__(); "
        "print(ssl.OPENSSL_VERSION.split()[0], psutil.__version__)"
    )
    result = in_chroot(chroot_dir, "python3", "-I", "-S", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OpenSSL ")
    assert "no kernel uevents" not in result.stderr, "the uevent socket works without libudev"


@pytest.mark.root
@pytest.mark.parametrize(
    ("cmdline", "root"),
    [(NBD, "kiwi-overlay 1"), ("root=/dev/vda1", "/dev/vda1 "), ("root=overlay:nbd=192.0.2.1", "kiwi-overlay 1")],
)
def test_cmdline_hook_claims_the_root_for_dracut(chroot_dir: Path, cmdline: str, root: str) -> None:
    (chroot_dir / "etc/cmdline").write_text(cmdline + "\n")  # no /proc in the chroot: kiwi-overlay reads /etc/cmdline
    result = in_chroot(chroot_dir, "/bin/sh", "-c", CMDLINE_HOOK)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, root), result.stderr
    if cmdline == NBD:
        assert (chroot_dir / "etc/cmdline.d/kiwi-overlay-net.conf").read_text() == "rd.neednet=1 ip=dhcp\n"


@pytest.mark.root
def test_cmdline_hook_dies_when_kiwi_overlay_fails(chroot_dir: Path) -> None:
    stub_kiwi_overlay(chroot_dir, status=2)  # what an unreadable command line or a bug returns
    result = in_chroot(chroot_dir, "/bin/sh", "-c", CMDLINE_HOOK)
    assert result.returncode == 1
    assert 'FATAL: "kiwi-overlay: the cmdline hook failed' in (chroot_dir / "usr/lib/dracut/hooks/emergency/01-die.sh").read_text()


@pytest.mark.root
def test_the_cmdline_hook_imports_no_parser_and_no_plan(chroot_dir: Path) -> None:
    """On every boot's critical path: argparse, pathlib, re, dataclasses or the plan would be most of its time in a TCG guest."""
    (chroot_dir / "etc/cmdline").write_text("root=overlay:LABEL=root rd.root.overlay.write=LABEL=cow\n")
    code = "import sys; from kiwi_overlay.cli import main; print(main(['dracut-cmdline']), *sorted(sys.modules))"
    result = in_chroot(chroot_dir, "python3", "-I", "-S", "-B", "-X", "utf8", "-c", code)
    status, *modules = result.stdout.split()
    assert (status, result.stderr) == ("0", ""), "claimed"
    heavy = {"argparse", "pathlib", "re", "dataclasses", "inspect", "contextlib", "subprocess", "typing", "kiwi_overlay.config.parse"}
    assert heavy.isdisjoint(modules), sorted(heavy.intersection(modules))


def test_make_install_puts_the_module_under_buildroot(tmp_path: Path) -> None:
    repo = MODULE_DIR.parents[2]
    subprocess.run(["make", "-s", "-C", str(repo), "install", f"buildroot={tmp_path}"], check=True, capture_output=True)
    installed = tmp_path / "usr/lib/dracut/modules.d/55kiwi-overlay"
    names = sorted(path.name for path in MODULE_DIR.iterdir())
    assert sorted(path.name for path in installed.iterdir()) == names
    assert filecmp.cmpfiles(installed, MODULE_DIR, names, shallow=False)[0] == names
    assert os.access(installed / "module-setup.sh", os.X_OK)


STUB = '#!/bin/sh\necho "$*" >> /kiwi-overlay.calls\nexit "$(cat /kiwi-overlay.status 2>/dev/null || echo 0)"\n'


def stub_kiwi_overlay(root: Path, *, status: int) -> Path:
    """Replace the initrd's kiwi-overlay with a stub that records its arguments and exits STATUS."""
    (root / "usr/bin/kiwi-overlay").write_text(STUB)
    (root / "kiwi-overlay.status").write_text(f"{status}\n")
    return root / "kiwi-overlay.calls"


@pytest.mark.root
@pytest.mark.parametrize(
    ("dracut_root", "status", "calls", "exit_status"),
    [
        ("kiwi-overlay", 0, "mount --sysroot /sysroot\n", 0),
        ("kiwi-overlay", 2, "mount --sysroot /sysroot\n", 1),
        ("block:/dev/vda1", 0, None, 0),
    ],
)
def test_mount_hook_assembles_only_the_claimed_root_and_dies_on_failure(
    tmp_path: Path, dracut_root: str, status: int, calls: str | None, exit_status: int
) -> None:
    chroot_dir = unpacked_initrd(systemd=False, target=tmp_path / "initrd")  # with systemd, the generator's units mount
    record = stub_kiwi_overlay(chroot_dir, status=status)
    script = f"root='{dracut_root}' NEWROOT=/sysroot; . /lib/dracut-lib.sh; . /usr/lib/dracut/hooks/mount/10-kiwi-overlay-mount.sh"
    result = in_chroot(chroot_dir, "/bin/sh", "-c", script)
    assert result.returncode == exit_status, result.stderr
    assert (record.read_text() if record.exists() else None) == calls
    if exit_status:
        assert 'FATAL: "kiwi-overlay: no overlay root' in (chroot_dir / "usr/lib/dracut/hooks/emergency/01-die.sh").read_text()


@pytest.mark.root
@pytest.mark.parametrize("status", [0, 2])
def test_shutdown_hook_leaves_the_layers_clean_and_reports_failure_for_a_retry(chroot_dir: Path, status: int) -> None:
    record = stub_kiwi_overlay(chroot_dir, status=status)
    result = in_chroot(chroot_dir, "/bin/sh", "-c", ". /lib/dracut-lib.sh; . /usr/lib/dracut/hooks/shutdown/45-kiwi-overlay-shutdown.sh")
    assert result.returncode == status
    assert record.read_text() == "shutdown\n"


@pytest.mark.root
def test_generator_hands_systemds_directories_to_kiwi_overlay(tmp_path: Path) -> None:
    chroot_dir = unpacked_initrd(systemd=True, target=tmp_path / "initrd")
    record = stub_kiwi_overlay(chroot_dir, status=0)
    result = in_chroot(chroot_dir, GENERATOR, "/run/n", "/run/e", "/run/l")
    assert result.returncode == 0, result.stderr
    assert record.read_text() == "generate /run/n /run/e /run/l\n"


@pytest.mark.root
@pytest.mark.parametrize(("cmdline", "root"), [(NBD, "kiwi-overlay 1"), ("root=/dev/vda1", "/dev/vda1 ")])
def test_with_systemd_the_cmdline_hook_takes_the_generators_answer(tmp_path: Path, cmdline: str, root: str) -> None:
    """The generator runs first and leaves the answer: the hook claims the root without a second interpreter start."""
    chroot_dir = unpacked_initrd(systemd=True, target=tmp_path / "initrd")
    (chroot_dir / "etc/cmdline").write_text(cmdline + "\n")
    before = sorted((chroot_dir / "etc").rglob("*"))
    generator = in_chroot(chroot_dir, GENERATOR, "/run/n", "/run/e", "/run/l")
    assert (generator.returncode, generator.stderr) == (0, "")
    assert sorted((chroot_dir / "etc").rglob("*")) == before, "a file in /etc/cmdline.d starts dracut-cmdline-ask.service"
    record = stub_kiwi_overlay(chroot_dir, status=2)  # had the hook started it, dracut would die
    result = in_chroot(chroot_dir, "/bin/sh", "-c", CMDLINE_HOOK)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, root), result.stderr
    assert not record.exists(), "the hook started kiwi-overlay"
    if cmdline == NBD:
        assert (chroot_dir / "run/modules-load.d/kiwi-overlay.conf").read_text() == "nbd\n"
        assert (chroot_dir / "etc/cmdline.d/kiwi-overlay-net.conf").read_text() == "rd.neednet=1 ip=dhcp\n"
        assert not (chroot_dir / "run/kiwi-overlay/kiwi-overlay-net.conf").exists()


# ---- booting guests -----------------------------------------------------------------------------------------------


@pytest.mark.boot
@FLAVOURS
def test_a_booting_guest_stops_on_an_invalid_root_with_one_clear_line(systemd: bool) -> None:
    result = boot(Guest(session_initrd(systemd=systemd), "root=overlay:nbd=192.0.2.1", user_net=False), name="invalid-root", timeout=240)
    console = result.console()
    assert not result.reached_root
    assert "kiwi-overlay: root=overlay:nbd=192.0.2.1: needs HOST:EXPORT (the export name is missing)" in console
    # The cmdline hook claimed the root (it checks nothing); the step that mounts it refused it and,
    # with systemd, failed kiwi-overlay.service into emergency (systemd shortens the unit's name on the console).
    assert ("emergency.target" if systemd else "FATAL: kiwi-overlay: no overlay root") in console
