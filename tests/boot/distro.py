"""Debian image roots, kiwi-overlay installed in them the way users do, and the initrds dracut builds there.

A base root per suite (bookworm = Debian 12, trixie = Debian 13) comes from debootstrap with this
machine's Debian mirror (/etc/apt/sources.list.d/debian.sources), then the kernel with apt inside
it (debootstrap cannot take the kernel together with dracut). It is cached under
CACHE/distro, keyed by BASE_PACKAGES and the suite, and rebuilt when missing.

An install form is kiwi-overlay put into a throwaway copy of a base root (an overlay mount in a
private mount namespace; the base never changes), the way docs/dracut.md tells users:
    deb   apt-get install ./kiwi-overlay_VERSION_all.deb (Debian's pyroute2 and psutil)
    pip   pip install --break-system-packages WHEEL (system-wide, /usr/local; PyPI's dependencies)
    venv  python3 -m venv /opt/kiwi-overlay; /opt/kiwi-overlay/bin/pip install WHEEL
then add_dracutmodules+=" kiwi-overlay " in /etc/dracut.conf.d and dracut inside the root, with a
clean environment. What comes out and is cached (keyed by the base, the form and the artifact):
the root's kernel and that initrd, booted by the tests with the test root (tests/boot/rootfs.py).
root_initrd does the same with other steps and modules (the benchmarks' stock dracut initrd).

`python3 -m tests.boot.distro SUITE [FORM]` prints the base root (or the form's kernel and initrd).
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiwi_overlay.run import run
from tests.boot.cache import CACHE, cached
from tests.boot.guest_kernel import GuestKernel

SUITES = {"bookworm": "12", "trixie": "13"}
FORMS = ("deb", "pip", "venv")
ROOTS = CACHE / "distro"
PROJECT = Path(__file__).resolve().parents[2]
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# What an image builder's root has besides minbase: dracut (the default systemd flavour needs
# systemd and udev), Python with pip and venv for the pip and venv forms.
BASE_PACKAGES = ("dracut", "systemd", "systemd-sysv", "udev", "kmod", "python3", "python3-pip", "python3-venv", "ca-certificates")
CLEAN_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

# Runs inside `unshare --mount`: $1 is the root; the rest, the command run in it with a clean
# environment. The host's /dev, /proc, /sys and resolv.conf, visible to this namespace only.
_CHROOT = """
root=$1; shift
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
exec chroot "$root" "$@"
"""
# Runs inside `unshare --mount`: a throwaway overlay copy of the base root ($1), the artifact
# ($3, if any) and this machine's network settings (name servers, trusted CAs: pip, a proxy) copied
# in, each step with a root shell's PATH, then the dracut modules $6 added in dracut.conf.d and
# dracut as an image builder runs it: inside the root, clean environment. The steps and modules
# are constants of this project, never outside input.
_FORM = """
base=$1 scratch=$2 artifact=$3 kver=$4 result=$5 modules=$6; shift 6
root=$scratch/root
mkdir "$scratch/upper" "$scratch/work" "$root"
mount -t overlay -o "lowerdir=$base,upperdir=$scratch/upper,workdir=$scratch/work" ko-bt-distro "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
[ -z "$artifact" ] || cp "$artifact" "$root/tmp/"
shell_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for step; do chroot "$root" env -i PATH="$shell_path" DEBIAN_FRONTEND=noninteractive sh -ec "$step"; done
printf 'add_dracutmodules+=" %s "\n' "$modules" > "$root/etc/dracut.conf.d/added-modules.conf"
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dracut --force --no-hostonly /tmp/initrd.img "$kver" \
    > "$result/dracut.log" 2>&1 || { tail -3 "$result/dracut.log" >&2; exit 1; }
cp "$root/tmp/initrd.img" "$result/initrd.img"
"""


def mirror() -> str:
    """The Debian archive this machine uses (the first URIs of debian.sources)."""
    match = re.search(r"^URIs:\s*(\S+)", SOURCES.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError(f"{SOURCES}: no URIs line")
    return match[1]


def in_root(root: Path, *command: str) -> str:
    """Run COMMAND in ROOT (chroot, clean environment, private mounts); its output."""
    argv = ["unshare", "--mount", "--", "sh", "-ec", _CHROOT, "sh", str(root), "env", "-i", CLEAN_PATH, "LC_ALL=C.UTF-8", *command]
    return run(argv, capture=True).stdout


def base_root(suite: str) -> Path:
    """The cached debootstrap root of SUITE with its kernel; built when missing (a few minutes)."""
    key = hashlib.sha256(f"{suite} {mirror()} {' '.join(BASE_PACKAGES)} linux-image-amd64".encode()).hexdigest()[:12]

    def bootstrap(scratch: Path) -> Path:
        tree = scratch / "root"
        include = ",".join(BASE_PACKAGES)
        run(["debootstrap", "--variant=minbase", f"--include={include}", suite, tree, mirror()], capture=True)
        env = ["env", "DEBIAN_FRONTEND=noninteractive", "INITRD=No"]
        in_root(tree, *env, "apt-get", "install", "-y", "-q", "--no-install-recommends", "linux-image-amd64")
        in_root(tree, "apt-get", "clean")
        return tree

    return cached(ROOTS / f"debian-{suite}-{key}", bootstrap)


def kernel_version(root: Path) -> str:
    (modules,) = sorted((root / "lib/modules").glob("*/modules.dep"))
    return modules.parent.name


@dataclass(frozen=True)
class DistroInitrd:
    """What a form produced: the root's own kernel and the initrd dracut built in that root."""

    suite: str
    form: str
    kernel: GuestKernel
    initrd: Path


def deb_package() -> Path:
    """`make deb`'s package, built now (a few seconds)."""
    run(["make", "-C", PROJECT, "deb"], capture=True)
    (deb,) = (PROJECT / "build/deb").glob("kiwi-overlay_*_all.deb")
    return deb


def wheel(output: Path) -> Path:
    """The project's wheel, built now into OUTPUT."""
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", output, PROJECT], capture=True)
    (built,) = output.glob("kiwi_overlay-*.whl")
    return built


def _content(artifact: Path) -> bytes:
    """What ARTIFACT holds: a wheel's members (its zip carries build times), a .deb as it is (reproducible)."""
    if artifact.suffix != ".whl":
        return artifact.read_bytes()
    with zipfile.ZipFile(artifact) as wheel_file:
        return b"".join(name.encode() + wheel_file.read(name) for name in sorted(wheel_file.namelist()))


# The steps of each form, run in the root; ARTIFACT is the .deb or the wheel, copied into /tmp.
EMIT = "kiwi-overlay dracut-module --output /usr/lib/dracut/modules.d/55kiwi-overlay"
FORM_STEPS = {
    "deb": ("apt-get install -y -q --no-install-recommends /tmp/ARTIFACT",),
    "pip": ("python3 -m pip install -q --break-system-packages /tmp/ARTIFACT", EMIT),
    "venv": ("python3 -m venv /opt/kiwi-overlay", "/opt/kiwi-overlay/bin/pip install -q /tmp/ARTIFACT", f"/opt/kiwi-overlay/bin/{EMIT}"),
}


def root_initrd(suite: str, name: str, *, steps: Sequence[str], modules: Sequence[str], artifact: Path | None = None) -> DistroInitrd:
    """dracut's initrd of a throwaway copy of SUITE's root after STEPS, with MODULES added (cached as NAME).

    ARTIFACT, if any, is copied to /tmp first (its content is part of the key); STEPS run as root shell lines.
    """
    base = base_root(suite)
    version = kernel_version(base)
    parts = (
        base.name.encode(),
        _FORM.encode(),
        "\n".join(steps).encode(),
        " ".join(modules).encode(),
        _content(artifact) if artifact else b"",
    )
    key = hashlib.sha256(b"".join(hashlib.sha256(part).digest() for part in parts)).hexdigest()[:12]

    def make(scratch: Path) -> Path:
        result = scratch / "result"
        result.mkdir()
        script = [_FORM, "sh", str(base), str(scratch), str(artifact or ""), version, str(result), " ".join(modules), *steps]
        proc = subprocess.run(["unshare", "--mount", "--", "sh", "-ec", *script], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{suite} {name}: {proc.stderr.strip()[-2000:]}")
        return result

    output = cached(ROOTS / f"initrd-{suite}-{name}-{key}", make)
    return DistroInitrd(suite=suite, form=name, kernel=GuestKernel(version, base), initrd=output / "initrd.img")


@functools.cache
def distro_initrd(suite: str, form: str) -> DistroInitrd:
    """kiwi-overlay installed in SUITE's root as FORM says, and the initrd dracut built there (cached)."""
    with tempfile.TemporaryDirectory(prefix="ko-bt-artifact-") as built:
        artifact = deb_package() if form == "deb" else wheel(Path(built))
        steps = [step.replace("ARTIFACT", artifact.name) for step in FORM_STEPS[form]]
        return root_initrd(suite, form, steps=steps, modules=("kiwi-overlay",), artifact=artifact)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        made = distro_initrd(sys.argv[1], sys.argv[2])
        print(made.kernel.vmlinuz, made.initrd)
    else:
        print(base_root(sys.argv[1]))
