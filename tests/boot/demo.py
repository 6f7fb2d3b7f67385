"""`make demo`: build the initrd and the root, serve the root over NBD, boot it with the console shown.

Ends with a short summary: the root device, the layers, the time to root. `--scenario` picks what
boots (default: kiwi-overlay, issue 8's scenario 1); SCENARIOS maps names to an initrd builder, the
NBD port and the kernel command line for a served root. `--kiwi` boots the KIWI image of
docs/kiwi.md instead (built with kiwi-ng when not cached) from nbd-server as docs/kiwi.md
configures it, into its own systemd; the tests' probe powers it off after multi-user.target.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.boot.guest_kernel import guest_kernel
from tests.boot.initrd import kiwi_overlay_initrd, stock_nbd_initrd
from tests.boot.kiwi_image import kiwi_guest, kiwi_image, nbd_server, project_deb, pxe_files
from tests.boot.qemu import BootResult, Guest, boot
from tests.boot.rootfs import root_image
from tests.boot.servers import NbdServer

BUILD = Path(__file__).resolve().parents[2] / "build/demo"


@dataclass(frozen=True)
class Scenario:
    title: str
    build_initrd: Callable[[Path], Path]  # output path -> the initrd
    cmdline: Callable[[NbdServer], str]  # the served root -> the guest's kernel command line
    port: int | None = None  # the NBD server's port; None: any free one


SCENARIOS = {
    "kiwi-overlay": Scenario(
        "kiwi-overlay: root=overlay:nbd=HOST:EXPORT, a tmpfs write layer, nothing else on the command line",
        lambda output: kiwi_overlay_initrd(output=output, systemd=False),
        lambda server: f"root=overlay:nbd=10.0.2.2:{server.name}",
        port=10809,  # the form without a port means NBD's default port
    ),
    "stock-nbd": Scenario(
        "dracut's own NBD root with rootovl (the baseline)",
        lambda output: stock_nbd_initrd(output=output),
        lambda server: f"root={server.nbd_root('squashfs')} rootovl ip=dhcp",
    ),
}


def summary(result: BootResult, *, initrd: Path, initrd_seconds: float) -> str:
    """Device, layers and time to root, from the markers (the mount table as the root sees it)."""
    options = dict(re.findall(r"(lowerdir|upperdir)=([^,]+)", result.value("root-options") or ""))
    mounted = {fields[1]: f"{fields[0]} ({fields[2]})" for fields in (line.split() for line in result.mounts)}

    def backing(path: str) -> str:
        """The mount that holds PATH, when the root can still see it."""
        holders = [point for point in mounted if path == point or path.startswith(point.rstrip("/") + "/")]
        return mounted[max(holders, key=len)] if holders and max(holders, key=len) != "/" else "not visible from the root"

    lower, upper = options.get("lowerdir", "?"), options.get("upperdir", "?")
    rows = [
        ("root", f"{result.value('root-fstype')} ({result.value('root-source')})"),
        ("read layer", f"{lower} on {backing(lower)}"),
        ("write layer", f"{upper} on {backing(upper)}"),
        ("write test", result.value("write") or "not run"),
        ("time to root", f"{result.time_to_root:.1f} s guest uptime" if result.time_to_root else "root not reached"),
        ("boot", f"{result.seconds:.1f} s wall clock, QEMU TCG"),
        ("initrd", f"{initrd.stat().st_size / 1e6:.1f} MB, built in {initrd_seconds:.0f} s"),
        ("console log", str(result.log)),
    ]
    return "\n".join(f"  {name:<13}{value}" for name, value in rows)


def kiwi() -> int:
    """docs/kiwi.md: the KIS image's kernel and initrd, root=overlay:nbd=10.0.2.2:export on port 10809."""
    print("== the KIWI image of docs/kiwi.md: make deb, kiwi-ng (about 5 min when not cached) ...", flush=True)
    image = kiwi_image(deb=project_deb())
    with tempfile.TemporaryDirectory(prefix="ko-demo-kiwi-") as scratch:
        tftp = pxe_files(image, Path(scratch) / "tftpboot")
        with nbd_server(image, Path(scratch)):
            append = "root=overlay:nbd=10.0.2.2:export"
            print(f"== nbd-server exports {image.root.name} as 'export' on port 10809; booting with: {append}", flush=True)
            result = boot(kiwi_guest(tftp, append), name="demo-kiwi", echo=sys.stdout, timeout=600)
    print(f"\n== KIWI image: {'booted' if result.value('multi-user') == 'active' else 'FAILED'}")
    for name in ("multi-user", "os", "root-fstype", "write"):
        print(f"  {name:<13}{result.value(name)}")
    print(f"  {'boot':<13}{result.seconds:.1f} s wall clock, QEMU TCG\n  {'console log':<13}{result.log}")
    return 0 if result.value("write") == "ok" else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="kiwi-overlay")
    parser.add_argument("--kiwi", action="store_true", help="boot the KIWI image of docs/kiwi.md")
    args = parser.parse_args()
    if args.kiwi:
        return kiwi()
    scenario = SCENARIOS[args.scenario]
    print(f"== {scenario.title}", flush=True)
    kernel = guest_kernel()
    image = root_image("squashfs")
    print(f"== guest kernel {kernel.version}; root image {image}; building the initrd (dracut) ...", flush=True)
    started = time.monotonic()
    initrd = scenario.build_initrd(BUILD / f"{args.scenario}.img")
    initrd_seconds = time.monotonic() - started
    with NbdServer(image, port=scenario.port) as server:
        cmdline = scenario.cmdline(server)
        print(f"== NBD export '{server.name}' on 127.0.0.1:{server.port}; booting with: {cmdline}", flush=True)
        result = boot(Guest(initrd=initrd, cmdline=cmdline), name=f"demo-{args.scenario}", echo=sys.stdout)
    print(f"\n== {scenario.title}: {'booted' if result.reached_root else 'FAILED'}")
    print(summary(result, initrd=initrd, initrd_seconds=initrd_seconds))
    return 0 if result.reached_root and result.value("write") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
