"""Issue 13: KIWI's workflow end to end, as docs/kiwi.md shows it.

The KIS image of docs/kiwi/kis-debian13 is built once per session with kiwi-ng (the project's
.deb from `make deb` in a local apt repository, Debian's archive from this machine's apt sources;
cached by content) and its .kernel and .initrd boot in QEMU from the root image exported as KIWI's
page says: nbd-server with [generic] and [export] on NBD's port 10809, or `vbladed 0 1 IFACE IMAGE`.

The image is what KIWI built, nothing added. To see the booted system the test hands systemd a
small unit on the kernel command line (a systemd.extra-unit credential, wanted with
systemd.wants=), ordered after multi-user.target: it reports the root, writes a file, syncs and
powers the machine off; the image's own shutdown then ends the guest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot.kiwi_image import (
    DOCS_IMAGE,
    NBD_CONFIG,
    Archive,
    KiwiImage,
    debian_archive,
    disconnected,
    kiwi_guest,
    kiwi_image,
    nbd_server,
    project_deb,
    pxe_files,
)
from tests.boot.qemu import BootResult, Disk, boot
from tests.boot.rootfs import blank_disk, ext4_disk
from tests.boot.servers import AoeTarget

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs/kiwi.md"
BOOT_TIMEOUT = 600.0  # a whole Debian 13 with systemd under TCG, and a shutdown
COW_LABEL = "kiwicow"


@pytest.fixture(scope="session")
def image() -> KiwiImage:
    """`make kiwi-image`: the .deb from `make deb`, the KIS build when it is not cached."""
    return kiwi_image(deb=project_deb())


@pytest.fixture(scope="session")
def tftpboot(image: KiwiImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """KIWI's step 1, into a private TFTP root."""
    return pxe_files(image, tmp_path_factory.mktemp("tftpboot"))


@pytest.fixture
def unchanged(image: KiwiImage) -> Iterator[None]:
    """The cached root image is exported as it is: no boot may write to it."""
    before = image.root.stat().st_mtime_ns
    yield
    assert image.root.stat().st_mtime_ns == before, f"{image.root} was written to"


def mounted(result: BootResult, mountpoint: str) -> tuple[str, str] | None:
    """(source, fstype) of the mount on MOUNTPOINT as the probe saw it."""
    for line in result.mounts:
        fields = line.split()
        if len(fields) > 2 and fields[1] == mountpoint:
            return fields[0], fields[2]
    return None


def expect_probe(result: BootResult, *, probe_file: str = "created") -> None:
    """The image's systemd reached multi-user.target on the overlay root, wrote the file and powered off cleanly."""
    got = {name: result.value(name) for name in ("multi-user", "os", "root-fstype", "write", "probe-file")}
    expected = {"multi-user": "active", "os": "trixie", "root-fstype": "overlay", "write": "ok"}
    wrong = {name: value for name, value in expected.items() if got[name] != value}
    assert not wrong and (got["probe-file"] or "").startswith(probe_file) and not result.stray, f"{got} {result.stray}\n{result.describe()}"
    assert result.returncode == 0 and not result.timed_out, result.describe()
    assert "reboot: Power down" in result.console(), result.describe()


# ---- docs/kiwi.md is what the tests run --------------------------------------------------------------------------


def test_docs_show_the_configuration_and_the_boot_entries_the_tests_use() -> None:
    docs = DOCS.read_text()
    assert NBD_CONFIG.format(image=DOCS_IMAGE) in docs
    for line in (
        "append initrd=boot/initrd root=overlay:nbd=10.0.2.2:export",
        "append initrd=boot/initrd root=overlay:aoe=e0.1",
        "append initrd=boot/initrd root=overlay:aoe=eth0",
        f"append initrd=boot/initrd root=overlay:nbd=10.0.2.2:export rd.root.overlay.write=LABEL={COW_LABEL}",
        f"vbladed 0 1 IFACE {DOCS_IMAGE}",
        "cp *.kernel /srv/tftpboot/boot/linux",
        "cp *.initrd /srv/tftpboot/boot/initrd",
    ):
        assert line in docs, line
    description = ROOT / "docs/kiwi/kis-debian13"
    assert (description / "root/etc/dracut.conf.d/overlay.conf").read_text() == 'add_dracutmodules+=" kiwi-overlay "\n'


def test_the_debian_archive_is_the_first_deb_entry_of_the_apt_sources(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: trixie\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian http://other.example/debian\nSuites: bookworm\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    archive = debian_archive(sources)
    assert archive == Archive("http://mirror.example/debian", "/usr/share/keyrings/debian-archive-keyring.gpg")
    assert archive.add_repo() == (
        "http://mirror.example/debian,apt-deb,debian,,,,{file:///usr/share/keyrings/debian-archive-keyring.gpg},main,trixie"
    )
    (tmp_path / "none.sources").write_text("Types: deb-src\nURIs: http://src.example/debian\n")
    with pytest.raises(RuntimeError, match="no 'Types: deb' entry"):
        debian_archive(tmp_path / "none.sources")


# ---- 1: KIWI's NBD form ---------------------------------------------------------------------------------------------


@pytest.mark.kiwi
@pytest.mark.boot
@pytest.mark.usefixtures("unchanged")
def test_kiwi_nbd_root_on_the_default_port(image: KiwiImage, tftpboot: Path, tmp_path: Path) -> None:
    with nbd_server(image, tmp_path):
        result = boot(kiwi_guest(tftpboot, "root=overlay:nbd=10.0.2.2:export"), name="kiwi-image-nbd", timeout=BOOT_TIMEOUT)
    expect_probe(result)
    source, fstype = mounted(result, "/run/overlay/rootfsbase") or ("", "")
    assert re.fullmatch(r"/dev/nbd\d+", source) and fstype == "ext4", result.describe()  # the first free device
    assert mounted(result, "/run/overlay") == ("tmpfs", "tmpfs"), result.describe()
    assert disconnected(tmp_path), f"nbd-server saw no NBD_CMD_DISC\n{result.describe()}"


# ---- 2: KIWI's AoE form --------------------------------------------------------------------------------------------


@pytest.mark.kiwi
@pytest.mark.boot
@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("source", ["e0.1", "eth0"])
def test_kiwi_aoe_root_exported_with_vbladed(image: KiwiImage, tftpboot: Path, source: str) -> None:
    with AoeTarget(image.root, shelf=0, slot=1, readonly=False, daemon=True) as target:
        guest = kiwi_guest(tftpboot, f"root=overlay:aoe={source}", taps=(target.tap,))
        result = boot(guest, name=f"kiwi-image-aoe-{source}", timeout=BOOT_TIMEOUT)
    expect_probe(result)
    assert mounted(result, "/run/overlay/rootfsbase") == ("/dev/etherd/e0.1", "ext4"), result.describe()


# ---- 3: a persistent write device ------------------------------------------------------------------------------------


@pytest.mark.kiwi
@pytest.mark.boot
@pytest.mark.usefixtures("unchanged")
def test_kiwi_nbd_root_with_a_persistent_write_device(image: KiwiImage, tftpboot: Path, tmp_path: Path) -> None:
    cow = ext4_disk(tmp_path / "cow.img", size_mb=256, label=COW_LABEL)
    disks = (Disk(blank_disk(tmp_path / "scratch.img", size_mb=8), serial="koscratch"), Disk(cow, serial=COW_LABEL))
    append = f"root=overlay:nbd=10.0.2.2:export rd.root.overlay.write=LABEL={COW_LABEL}"
    results = []
    for number in (1, 2):
        work = tmp_path / f"boot{number}"
        work.mkdir()
        with nbd_server(image, work):
            results.append(boot(kiwi_guest(tftpboot, append, disks=disks), name=f"kiwi-image-cow-{number}", timeout=BOOT_TIMEOUT))
        assert disconnected(work), f"nbd-server saw no NBD_CMD_DISC\n{results[-1].describe()}"
    first, second = results
    expect_probe(first, probe_file="created")
    expect_probe(second, probe_file=f"found {first.value('boot-id')}")
    assert mounted(second, "/run/overlay/overlayfs") == ("/dev/vdb", "ext4"), second.describe()
