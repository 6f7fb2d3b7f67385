"""Issue 12: kiwi-overlay where users are. Debian 12 and 13 image roots (debootstrap, tests/boot/distro.py),
kiwi-overlay installed as a user would (the Debian package, system-wide pip, a venv on 13), dracut run
inside the root, and the root's own kernel booting issue 8's scenarios (tests/test_boot_kiwi.py).

Every install form boots, and every suite boots each kind (NBD with a tmpfs write layer, AoE by
target, a persistent write device), without multiplying the boots: one form per kind and suite.
The initrds are dracut's default for each distribution: systemd, no network module.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.boot.distro import FORMS, SUITES, distro_initrd
from tests.test_boot_kiwi import scenario_1, scenario_3, scenario_7

pytestmark = pytest.mark.distro

# What each suite's Debian packages are (facts.md); pip and venv get PyPI's (not checked: they move).
DEBIAN_VERSIONS = {"bookworm": ("3.11", "5.9.4"), "trixie": ("3.13", "7.0.0")}
FORM_CASES = [(suite, form) for suite in SUITES for form in FORMS if form != "venv" or suite == "trixie"]
CHECK = (
    "import sys, psutil; from kiwi_overlay.netlink.route import Route; Route().close(); "
    "print('%d.%d' % sys.version_info[:2], psutil.__version__)"
)


@pytest.mark.root
@pytest.mark.parametrize(("suite", "form"), FORM_CASES, ids=[f"debian{SUITES[suite]}-{form}" for suite, form in FORM_CASES])
def test_each_install_form_puts_a_working_kiwi_overlay_into_the_initrd(suite: str, form: str, tmp_path: Path) -> None:
    """Without a guest: the initrd dracut built in the root runs kiwi-overlay and its dependencies (0.7: pyroute2 entry points)."""
    made = distro_initrd(suite, form)
    subprocess.run(["lsinitrd", "--unpack", str(made.initrd)], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "dev").mkdir(exist_ok=True)
    if not (tmp_path / "dev/null").exists():
        os.mknod(tmp_path / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    chroot = [shutil.which("chroot", path="/usr/sbin:/usr/bin") or "chroot", str(tmp_path)]
    env = {"PATH": "/usr/sbin:/usr/bin"}
    explain = subprocess.run(
        [*chroot, "/usr/bin/kiwi-overlay", "explain", "--cmdline", "root=overlay:aoe=e0.1"], env=env, capture_output=True, text=True
    )
    assert explain.returncode == 0 and "AoE target e0.1" in explain.stdout, explain.stderr
    check = subprocess.run([*chroot, "python3", "-I", "-S", "-c", CHECK], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # The NBD attach path with this pyroute2: a one-line reason (no nbd module here, or nothing on port 1), never an exception.
    attach = 'mount -t proc proc "$1/proc"; mount -t sysfs sysfs "$1/sys"; exec chroot "$1" kiwi-overlay nbd attach nbd://127.0.0.1:1/root'
    failed = subprocess.run(["unshare", "--mount", "sh", "-ec", attach, "sh", str(tmp_path)], env=env, capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "unexpected" not in failed.stderr, failed.stderr
    python, psutil = check.stdout.split()
    assert python == DEBIAN_VERSIONS[suite][0]
    if form == "deb":
        assert psutil == DEBIAN_VERSIONS[suite][1]


LEGS = [
    ("bookworm", "deb", "nbd-tmpfs"),
    ("bookworm", "pip", "aoe-target"),
    ("bookworm", "pip", "persistent"),
    ("trixie", "deb", "nbd-tmpfs"),
    ("trixie", "pip", "aoe-target"),
    ("trixie", "venv", "persistent"),
]


@pytest.mark.boot
@pytest.mark.parametrize(("suite", "form", "kind"), LEGS, ids=[f"debian{SUITES[suite]}-{form}-{kind}" for suite, form, kind in LEGS])
def test_debian_image_boots(suite: str, form: str, kind: str, tmp_path: Path) -> None:
    made = distro_initrd(suite, form)
    name = f"distro-debian{SUITES[suite]}-{form}-{kind}"
    if kind == "nbd-tmpfs":
        scenario_1(made.initrd, name=name, kernel=made.kernel)
    elif kind == "aoe-target":
        scenario_7(made.initrd, by="target", name=name, kernel=made.kernel)
    else:
        scenario_3(made.initrd, tmp_path=tmp_path, name=name, kernel=made.kernel)
