"""Issue 17, item 5: nbds:// roots that boot, with the TLS files the module put into the initrd.

Certificates are made here with openssl: a CA, a server certificate for 10.0.2.2 (the host as the
guest sees it), a client certificate, and a second CA that signed nothing of this. The initrd is
built once for this file with `kiwi_overlay_tls_dir` (as a dracut.conf.d file would set it)
naming a directory with ca.pem, wrong-ca.pem, client.pem and client-key.pem: the module installs
them under /etc/kiwi-overlay/tls/, where the command lines name them.
nbd-server 3.24 asks every TLS client for a certificate (tests/boot/servers.py), so the boots
against it carry the client certificate; the server-authenticated-only boot is against qemu-nbd.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.boot.initrd import kiwi_overlay_initrd
from tests.boot.qemu import BootResult, Guest, boot
from tests.boot.rootfs import root_image
from tests.boot.servers import GUEST_HOST, NbdServer, QemuNbd, ServerTls
from tests.nbd_servers import make_ca, sign
from tests.test_boot_kiwi import busybox_sha256, mounted

pytestmark = pytest.mark.boot

BOOT_TIMEOUT = 300.0
IN_INITRD = Path("/etc/kiwi-overlay/tls")
CA = f"rd.root.overlay.nbd.tls.ca={IN_INITRD}/ca.pem"
WRONG_CA = f"rd.root.overlay.nbd.tls.ca={IN_INITRD}/wrong-ca.pem"
CLIENT = f"rd.root.overlay.nbd.tls.cert={IN_INITRD}/client.pem rd.root.overlay.nbd.tls.key={IN_INITRD}/client-key.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    server = sign(directory, ca, "server", san=f"IP:{GUEST_HOST}", usage="serverAuth")
    client = sign(directory, ca, "client", san="DNS:client", usage="clientAuth")
    wrong_ca = make_ca(directory / "wrong", "ca")
    for_initrd = directory / "kiwi-overlay-tls"  # what /etc/kiwi-overlay/tls is on a build host
    for_initrd.mkdir()
    for source, name in ((ca[0], "ca.pem"), (wrong_ca[0], "wrong-ca.pem"), (client[0], "client.pem"), (client[1], "client-key.pem")):
        shutil.copy(source, for_initrd / name)
    qemu_dir = directory / "qemu-nbd"  # QEMU's file names
    qemu_dir.mkdir()
    for source, name in ((ca[0], "ca-cert.pem"), (server[0], "server-cert.pem"), (server[1], "server-key.pem")):
        shutil.copy(source, qemu_dir / name)
    return {"ca": ca[0], "server_cert": server[0], "server_key": server[1], "for_initrd": for_initrd, "qemu_dir": qemu_dir}


@pytest.fixture(scope="module")
def tls_initrd(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("initrd") / "kiwi-overlay-tls.img"
    return kiwi_overlay_initrd(output=output, systemd=False, environment={"kiwi_overlay_tls_dir": str(pki["for_initrd"])})


def nbd_server_tls(pki: dict[str, Path]) -> NbdServer:
    return NbdServer(root_image("squashfs"), tls=ServerTls(pki["server_cert"], pki["server_key"], client_ca=pki["ca"]))


def boot_tls(initrd: Path, url: str, options: str, *, name: str) -> BootResult:
    cmdline = f"root=overlay:{url} {options} rd.root.overlay.timeout=40 ko.test=checksum"
    return boot(Guest(initrd, cmdline), name=name, timeout=BOOT_TIMEOUT)


def test_nbds_root_boots_with_the_right_ca_and_a_client_certificate(pki: dict[str, Path], tls_initrd: Path) -> None:
    with nbd_server_tls(pki) as server:
        result = boot_tls(tls_initrd, server.url(), f"{CA} {CLIENT}", name="tls-nbd-server-client-cert")
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())  # read through the TLS proxy after switch_root
    assert mounted(result, "/run/overlay/rootfsbase") == ("/dev/nbd0", "squashfs"), result.describe()


def test_nbds_root_with_the_wrong_ca_stops_with_one_line(pki: dict[str, Path], tls_initrd: Path) -> None:
    with nbd_server_tls(pki) as server:
        result = boot_tls(tls_initrd, server.url(), f"{WRONG_CA} {CLIENT}", name="tls-wrong-ca")
    assert not result.reached_root and not result.timed_out, result.describe()
    refused = [line for line in result.console().splitlines() if "TLS certificate does not verify" in line]
    assert len(refused) == 1, result.describe()
    expected = f"kiwi-overlay: NBD server {GUEST_HOST}:{server.port}: TLS certificate does not verify: "
    assert refused[0].startswith(expected), result.describe()


def test_nbds_root_boots_with_only_the_ca_when_the_server_asks_no_client_certificate(pki: dict[str, Path], tls_initrd: Path) -> None:
    with QemuNbd(root_image("squashfs"), tls_dir=pki["qemu_dir"]) as server:
        result = boot_tls(tls_initrd, server.url(), CA, name="tls-qemu-nbd-ca-only")
    result.expect(root_fstype="overlay", write="ok", checksum=busybox_sha256())
