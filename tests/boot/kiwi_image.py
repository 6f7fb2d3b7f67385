"""The KIWI image of docs/kiwi/kis-debian13, built with kiwi-ng as docs/kiwi.md shows, cached.

The build follows docs/kiwi.md: the project's .deb goes into a flat apt repository
(dpkg-scanpackages), and kiwi-ng builds the KIS image from the description with Debian's archive
added on the command line (--add-repo), taken from this machine's apt sources. The one difference:
the description's repository (dir:///srv/kiwi-overlay/repo) is pointed at a private directory with
--set-repo, so a build never touches /srv.

The result (root image, .kernel, .initrd, .append) is cached under the harness cache, keyed by the
description, the .deb, kiwi's version and the archive, and built when missing. KIWI's image root
and its bootstrap are thrown away: only the files a PXE server needs stay.
`python3 -m tests.boot.kiwi_image --deb DEB` prints the image's files (building them when missing).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kiwi_overlay.run import run
from tests.boot.cache import CACHE, cached, exclusive
from tests.boot.qemu import RESULT_PORT, Disk, Guest
from tests.boot.servers import NbdServer

PROJECT = Path(__file__).resolve().parents[2]
DESCRIPTION = PROJECT / "docs/kiwi/kis-debian13"
DISTRIBUTION = "trixie"
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
IMAGES = CACHE / "kiwi"
# kiwi-ng keeps one apt cache for every build on the machine (/var/cache/kiwi): one build at a time.
KIWI_LOCK = CACHE / "kiwi-ng.lock"
NBD_DEFAULT_PORT = 10809
# docs/kiwi.md's nbd-server configuration (KIWI's page, no losetup), its image path aside.
NBD_CONFIG = """[generic]
    user = root
    group = root
[export]
    exportname = {image}
    readonly = true
"""
DOCS_IMAGE = "/srv/kiwi/kiwi-overlay-debian13.x86_64-1.0.0"
# What the tests add to it: loopback only, and a transaction log to see the client's disconnect.
LOOPBACK_ONLY = "    listenaddr = 127.0.0.1\n"
TRANSACTION_LOG = "    transactionlog = {log}\n"
NBD_DISCONNECT_REQUEST = bytes.fromhex("2560951300000002")  # request magic, flags 0, NBD_CMD_DISC
PROBE_FILE = "/root/kiwi-overlay-probe"
# The probe: after multi-user.target, report the system and the root (KO-MARK lines on the result
# channel, see qemu.py),
# write PROBE_FILE (reporting what an earlier boot left there), power off.
PROBE_SCRIPT = f"""m() {{ read -r u _ < /proc/uptime; echo "[$u] KO-MARK $*" > {RESULT_PORT}; }}
m multi-user=$(systemctl is-active multi-user.target)
m os=$(. /etc/os-release && echo $VERSION_CODENAME)
m root-fstype=$(findmnt -no FSTYPE /)
while read -r line; do m mount $line; done < /proc/mounts
if [ -e {PROBE_FILE} ]; then m probe-file=found $(cat {PROBE_FILE}); else m probe-file=created; fi
m boot-id=$(cat /proc/sys/kernel/random/boot_id)
cat /proc/sys/kernel/random/boot_id > {PROBE_FILE} && sync {PROBE_FILE} && m write=ok
m poweroff
"""
PROBE_UNIT = """[Unit]
Description=kiwi-overlay test probe
DefaultDependencies=no
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff
[Service]
Type=oneshot
ExecStart=/bin/sh -c '{script}'
"""


@dataclass(frozen=True)
class KiwiImage:
    """What a KIS build leaves for the PXE server: the root image, the kernel, the initrd."""

    directory: Path

    def _one(self, pattern: str) -> Path:
        found = sorted(self.directory.glob(pattern))
        if len(found) != 1:
            raise RuntimeError(f"{self.directory}: expected one {pattern}, found {[path.name for path in found]}")
        return found[0]

    @property
    def kernel(self) -> Path:
        return self._one("*.kernel")

    @property
    def initrd(self) -> Path:
        return self._one("*.initrd*")

    @property
    def root(self) -> Path:
        """The root filesystem image ({name}.x86_64-{version}, ext4), the file to export."""
        found = [path for path in self.directory.glob("*.x86_64-*") if re.fullmatch(r".+\.x86_64-[0-9.]+", path.name)]
        if len(found) != 1:
            raise RuntimeError(f"{self.directory}: expected one root image NAME.x86_64-VERSION, found {[path.name for path in found]}")
        return found[0]


@dataclass(frozen=True)
class Archive:
    """A Debian archive as kiwi-ng's --add-repo wants it."""

    uri: str
    keyring: str | None

    def add_repo(self) -> str:
        """source,type,alias,priority,imageinclude,package_gpgcheck,{signing_keys},components,distribution."""
        keys = f"{{file://{self.keyring}}}" if self.keyring else ""  # kiwi takes local keys as file: URIs
        return f"{self.uri},apt-deb,debian,,,,{keys},main,{DISTRIBUTION}"


def probe_cmdline() -> str:
    """The probe as a unit systemd's debug generator takes from the kernel command line (nothing goes into the image)."""
    script = PROBE_SCRIPT.replace("$", "$$").replace("\n", "; ")  # $$: a literal $ in a unit file
    unit = base64.b64encode(PROBE_UNIT.format(script=script).encode()).decode()
    return f"systemd.set_credential_binary=systemd.extra-unit.ko-probe.service:{unit} systemd.wants=ko-probe.service"


def kiwi_guest(tftp: Path, append: str, *, probe: bool = True, disks: Sequence[Disk] = (), taps: Sequence[str] = ()) -> Guest:
    """A guest booting KIWI's files as the PXE entry does (kernel TFTP/boot/linux, initrd TFTP/boot/initrd, APPEND).

    With TAPS (AoE) it has only those NICs; else one on QEMU's user network. PROBE adds the probe.
    """
    cmdline = f"{append} {probe_cmdline()}" if probe else append
    return Guest(tftp / "boot/initrd", cmdline, vmlinuz=tftp / "boot/linux", disks=disks, user_net=not taps, taps=taps)


def pxe_files(image: KiwiImage, tftp: Path) -> Path:
    """KIWI's step 1: the kernel and the initrd copied to TFTP/boot/linux and TFTP/boot/initrd."""
    (tftp / "boot").mkdir(parents=True, exist_ok=True)
    shutil.copy(image.kernel, tftp / "boot/linux")
    shutil.copy(image.initrd, tftp / "boot/initrd")
    return tftp


def nbd_server(image: KiwiImage, work: Path) -> NbdServer:
    """nbd-server with docs/kiwi.md's configuration, on loopback, with a transaction log in WORK."""
    config = NBD_CONFIG.format(image=image.root).replace("[export]\n", LOOPBACK_ONLY + "[export]\n")
    config += TRANSACTION_LOG.format(log=work / "transactions")
    return NbdServer(image.root, name="export", port=NBD_DEFAULT_PORT, config=config)


def disconnected(work: Path) -> bool:
    """Whether the client of nbd_server(..., WORK) sent NBD_CMD_DISC (the server logged it)."""
    log = work / "transactions"
    return log.exists() and NBD_DISCONNECT_REQUEST in log.read_bytes()


def project_deb() -> Path:
    """`make deb`: this checkout's kiwi-overlay_VERSION_all.deb."""
    subprocess.run(["make", "-s", "deb"], cwd=PROJECT, check=True, capture_output=True)
    (deb,) = (PROJECT / "build/deb").glob("kiwi-overlay_*_all.deb")
    return deb


def debian_archive(sources: Path = APT_SOURCES) -> Archive:
    """The first archive of this machine's deb822 apt sources (the image's packages come from there)."""
    for stanza in sources.read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.strip() and not line.startswith("#") and ":" in line and not line[0].isspace():
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("uris"):
            return Archive(fields["uris"].split()[0], fields.get("signed-by"))
    raise RuntimeError(f"{sources}: no 'Types: deb' entry with URIs")


def deb_digest(deb: Path) -> str:
    """What DEB installs, not when it was built: its control fields and its files' names, modes and contents."""
    digest = hashlib.sha256(run(["dpkg-deb", "--field", deb], capture=True).stdout.encode())
    tarball = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tarball)) as members:
        for member in members:
            content = members.extractfile(member)
            digest.update(f"{member.name} {member.mode:o} {member.linkname}".encode() + b"\0")
            digest.update(hashlib.sha256(content.read() if content else b"").digest())
    return digest.hexdigest()


def _key(deb: Path, archive: Archive) -> str:
    digest = hashlib.sha256()
    for path in sorted(DESCRIPTION.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(DESCRIPTION)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    digest.update(deb_digest(deb).encode())
    digest.update(f"{metadata.version('kiwi')} {archive}".encode())
    return digest.hexdigest()[:16]


def local_repository(deb: Path, repo: Path) -> None:
    """DEB in a flat apt repository at REPO, as docs/kiwi.md makes it."""
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copy(deb, repo)
    scan = ["dpkg-scanpackages", "--multiversion", "."]
    packages = subprocess.run(scan, cwd=repo, check=True, capture_output=True, text=True)  # run() has no cwd
    (repo / "Packages").write_text(packages.stdout)


def build(*, deb: Path, target: Path, repo: Path, archive: Archive, log: Path) -> None:
    """kiwi-ng's KIS build of the description into TARGET (docs/kiwi.md, with --set-repo for REPO)."""
    local_repository(deb, repo)
    kiwi_ng = Path(sys.executable).with_name("kiwi-ng")
    run(
        [
            kiwi_ng, "--logfile", log, "--type", "kis", "system", "build",
            "--description", DESCRIPTION, "--target-dir", target,
            "--set-repo", f"dir://{repo}",
            "--add-repo", archive.add_repo(),
        ]
    )  # fmt: skip


def kiwi_image(*, deb: Path) -> KiwiImage:
    """The KIS image built with DEB installed (cached; the root image is read-only by convention)."""
    archive = debian_archive()

    def make(work: Path) -> Path:
        work.chmod(0o755)  # apt reads the repository as its sandbox user _apt
        log = work / "kiwi.log"
        try:
            with exclusive(KIWI_LOCK):
                build(deb=deb, target=work / "target", repo=work / "repo", archive=archive, log=log)
        except Exception as error:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
            raise RuntimeError(f"kiwi-ng failed: {error}\n{tail}") from None
        result = work / "result"
        result.mkdir()
        for path in (work / "target").iterdir():
            if path.is_file() and not path.name.endswith((".packages", ".verified", ".changes")):
                path.rename(result / path.name)
        log.rename(result / "kiwi.log")
        return result

    return KiwiImage(cached(IMAGES / f"kis-debian13-{_key(deb, archive)}", make))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deb", type=Path, required=True, help="the project's kiwi-overlay_VERSION_all.deb")
    args = parser.parse_args()
    started = time.monotonic()
    image = kiwi_image(deb=args.deb.resolve())
    print(f"{image.directory} ({time.monotonic() - started:.0f} s)")
    for path in (image.root, image.kernel, image.initrd):
        print(f"  {path.name}: {path.stat().st_size / 1e6:.1f} MB")
