"""1b. Kernel start to the root's init on Debian 13: both initrds built by Debian 13's own dracut.

Item 1 again with Debian 13's kernel, dracut and Python: the cached trixie image root of
tests/boot/distro.py, each initrd dracut's default there (systemd flavour, no host-only) built in
a throwaway copy of it. kiwi-overlay: its Debian package installed (distro_initrd "deb").
dracut: Debian 13's nbd-client, dracut-network, isc-dhcp-client and procps (network-legacy's check
wants dhclient and pgrep) installed with apt, and dracut's nbd, overlay-root and network-legacy
added, the modules item 1 builds with Debian 12's dracut (named, or dracut 106 would pick
systemd-networkd). Booted with that root's kernel from the same nbd-server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.boot_time import DRACUT, KIWI, TITLES, Samples, cell, cmdline, progress, times_to_root
from benchmarks.stats import ratio
from kiwi_overlay.run import run
from tests.boot.distro import DistroInitrd, distro_initrd, root_initrd
from tests.boot.initrd import STOCK_NBD_MODULES
from tests.boot.qemu import Guest
from tests.boot.servers import NbdServer

SUITE = "trixie"
STOCK_PACKAGES = ("nbd-client", "dracut-network", "isc-dhcp-client", "procps")
STOCK_STEPS = (f"apt-get install -y -q --no-install-recommends {' '.join(STOCK_PACKAGES)}",)


@dataclass(frozen=True)
class Measured:
    samples: dict[str, Samples]
    versions: str  # the root's kernel, dracut and python3
    ready: float  # seconds until both initrds were there (built when missing)


def dpkg_version(root: Path, package: str) -> str:
    """PACKAGE's version in ROOT, read by the host's dpkg-query (no chroot: the cached root stays as it is)."""
    return run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Version}", package], capture=True).stdout


def initrds() -> dict[str, DistroInitrd]:
    """Both initrds, from the cache or built now (cold: about a minute, more when the base root is missing too)."""
    stock = root_initrd(SUITE, "stock-nbd", steps=STOCK_STEPS, modules=STOCK_NBD_MODULES)
    return {DRACUT: stock, KIWI: distro_initrd(SUITE, "deb")}


def measure(*, runs: int, image: Path) -> Measured:
    """RUNS boots of each initrd with the root's kernel, interleaved."""
    started = time.monotonic()
    progress(f"the Debian {SUITE} initrds (built when missing)")
    made = initrds()
    ready = time.monotonic() - started
    with NbdServer(image) as server:
        guests = {kind: Guest(initrd=initrd.initrd, cmdline=cmdline(kind, server), kernel=initrd.kernel) for kind, initrd in made.items()}
        samples = times_to_root(guests, runs=runs, name=lambda kind, number: f"debian13-{kind}-{number}")
    kernel = made[KIWI].kernel  # the root's, as the stock initrd's
    versions = f"kernel {kernel.version}, dracut {dpkg_version(kernel.root, 'dracut')}, python3 {dpkg_version(kernel.root, 'python3')}"
    return Measured(samples, versions=versions, ready=ready)


def table(measured: Measured) -> str:
    dracut, kiwi = measured.samples[DRACUT], measured.samples[KIWI]
    rows = [
        "| initrd | dracut nbd + rootovl | kiwi-overlay (.deb) | kiwi-overlay / dracut |",
        "|---|---|---|---|",
        f"| Debian 13: {measured.versions}; systemd | {cell(dracut)} | {cell(kiwi)} | {ratio(kiwi.median, dracut.median)} |",
        "",
        f"- Both initrds there after {measured.ready:.0f} s (from the cache, or built in this run when missing).",
    ]
    rows += [f"- {TITLES[kind]}: not measured: {samples.failure}" for kind, samples in measured.samples.items() if samples.failure]
    return "\n".join(rows)
