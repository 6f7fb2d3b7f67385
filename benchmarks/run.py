"""`make bench`, `python -m benchmarks [--quick]`: every benchmark of issue 9, then BENCHMARKS.md.

Host benchmarks first (negotiation, boot storm, network bring-up, initrd sizes), then the QEMU
boots (time to root, kiwi-overlay's phases, read throughput). One section's failure is written
into its section; the others still run. Needs root and the Debian packages of .ci/install-deps.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import (
    boot_phases,
    boot_time,
    debian13,
    goals,
    guest_cost,
    initrd_size,
    negotiation,
    netem,
    storm,
    throughput,
    timeline,
    tls_proxy,
)
from benchmarks.boot_time import FLAVOURS, Initrds, progress
from benchmarks.stats import machine
from tests.boot.guest_kernel import guest_kernel
from tests.boot.rootfs import root_image

T = TypeVar("T")
OUTPUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


@dataclass(frozen=True)
class Settings:
    boot_runs: int
    phase_runs: int
    read_runs: int
    read_size_mb: int
    negotiation_runs: int
    storm_sizes: tuple[int, ...]
    net_runs: int
    tls_runs: int = 3
    netem_runs: int = 2
    debian13_runs: int = 2


FULL = Settings(boot_runs=3, phase_runs=2, read_runs=2, read_size_mb=16, negotiation_runs=30, storm_sizes=(50, 200), net_runs=11)
QUICK = Settings(
    boot_runs=1,
    phase_runs=1,
    read_runs=1,
    read_size_mb=16,
    negotiation_runs=10,
    storm_sizes=(10, 50),
    net_runs=3,
    tls_runs=1,
    netem_runs=1,
    debian13_runs=1,
)
TLS_READ_MB = 128  # CPU seconds per GiB, the measure, do not depend on the size read


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    method: str
    measure: Callable[[], str]


def sections(settings: Settings, initrds: Initrds, scratch: Path, *, svg: Path) -> list[Section]:
    image = root_image("squashfs")
    trees = scratch / "trees"
    s = settings
    # Results kept for the timeline and the goals: the boots of items 1 and 2, initrd sizes, storms.
    kept: dict[str, Any] = {}

    def keep(key: str, results: T) -> T:
        kept[key] = results
        return results

    def phases(results: dict[bool, boot_time.Samples]) -> dict[bool, boot_time.Samples]:
        kept["phases"] = {(boot_time.KIWI, systemd): samples for systemd, samples in results.items()}
        return results

    return [
        Section(
            "negotiation", "3. NBD negotiation on loopback (host)",
            "Against nbd-server on 127.0.0.1. nbd-client: the whole process, up to its failure for lack of the nbd module "
            "(it has negotiated by then). kiwi-overlay: the whole `kiwi-overlay nbd info` process (interpreter, imports, "
            "NBD_OPT_GO, NBD_CMD_DISC), and `connect.open_export` + disconnect in a warm process.",
            lambda: negotiation.table(negotiation.measure(runs=s.negotiation_runs, image=image)),
        ),
        Section(
            "storm", "6. Boot storm: concurrent clients against one nbd-server (host)",
            "N clients start together. Threads: kiwi-overlay's boot code (connect.with_retry + open_export), then the whole "
            "export read with NBD_CMD_READ (256 KiB, one in flight). Processes with processes: N kiwi-overlay client "
            "processes (benchmarks/storm_client.py) and N nbd-client processes, each started and ready (interpreter and "
            "imports done), blocked on a FIFO, released together; negotiation only (nbd-client cannot attach on this host: "
            "no nbd module). Times from the release to the negotiated export (kiwi-overlay's client stamps it and lives on "
            "until the storm is over, as the boot's NBD supervisor does; nbd-client's `size =` line as it arrives). "
            "nbd-server listens with a backlog of 10: a client caught in its overflow waits for a TCP retransmission "
            "(1 s, 3 s, 7 s); kiwi-overlay allows the first attempt 0.5 s to connect and 0.5 s for the greeting, then "
            "connects again (1 s, 2 s, up to 5 s), nbd-client waits without a limit.",
            lambda: storm.table(keep("storm", storm.measure(sizes=s.storm_sizes, image=image))),
        ),
        Section(
            "net", "Extra: network bring-up (host, namespaces)",
            "`kiwi-overlay net up` in a namespace against dnsmasq --no-ping in another, each run from a link that is down "
            "(benchmarks/net_up.py).",
            lambda: net_up(s.net_runs),
        ),
        Section(
            "tls", "Extra: TLS proxy against plain NBD (host)",
            "Sequential NBD_CMD_READ (256 KiB, one in flight) of a zero-padded image from qemu-nbd on 127.0.0.1, plain and "
            "with TLS (benchmarks/tls_proxy.py): the socket the kernel gets for nbd://, the socket-pair end the supervisor's "
            "TlsProxy gives it for nbds://, and the TLS socket read directly in the same process (no proxy hop). CPU seconds "
            "per GiB read are the measure (client: this process with the proxy's threads; server: qemu-nbd); wall-clock "
            "rates depend on what else the shared cores run. Client ceiling: GiB / client CPU, what one free core would carry. "
            "Kernel TLS (OpenSSL's KTLS; Python 3.12+ `ssl.OP_ENABLE_KTLS`, this Python is older) would let the kernel's socket "
            "carry the TLS records after the handshake: the supervisor could hand the nbd driver the TLS socket itself, "
            "so the socket pair, the proxy's two copies through user space and its Python threads leave the data path: the "
            "client would pay about the direct row or less (crypto only, in the kernel, no Python) instead of the proxy row, and no "
            "user-space process would sit between the root filesystem and the network. Caveats: kTLS needs the kernel's "
            "`tls` module (CONFIG_TLS; not on this host), a cipher it implements (AES-GCM, ChaCha20-Poly1305), and TLS 1.3 "
            "messages after the handshake (session tickets, key updates) reach a kernel reader as control records the nbd "
            "driver does not expect: nbd-server's default priority allows only TLS 1.2, which sends none.",
            lambda: tls_proxy.table(tls_proxy.measure(runs=s.tls_runs, image=image, size_mb=TLS_READ_MB), size_mb=TLS_READ_MB),
        ),
        Section(
            "initrd", "4. Initrd size",
            "dracut initrds for the guest kernel (tests/boot/initrd.py): kiwi-overlay's (module + bash + udev-rules on "
            "dracut's base), the same module list without kiwi-overlay, and dracut's stock nbd + overlay-root + "
            "network-legacy for scale. zstd as built; uncompressed = the cpio after zstd -d.",
            lambda: initrd_size.table(
                keep("initrd", [initrd_size.measure(systemd=flavour, initrds=initrds, scratch=trees) for flavour in FLAVOURS])
            ),
        ),
        Section(
            "boot", "1. Kernel start to the root's init (QEMU TCG)",
            "Guest uptime when the root's init starts (its first KO-MARK). Same squashfs root, nbd-server, Debian guest "
            "kernel, 1 vCPU, 1 GiB, QEMU user networking with DHCP. dracut: `root=nbd:...:squashfs rootovl ip=dhcp` "
            f"(nbd, overlay-root, network-legacy). kiwi-overlay: `root=overlay:nbd://... ip=dhcp`. Up to {s.boot_runs} boots "
            "each, variants interleaved round by round. Below 1: kiwi-overlay is faster. CPU idle: the guest's idle time "
            "(/proc/uptime) when the root's init starts, medians: a boot with next to none is bound by the work its one vCPU "
            "does, so only less work shortens it; starting steps earlier, side by side, cannot.",
            lambda: boot_time.table(keep("boot", boot_time.measure(runs=s.boot_runs, initrds=initrds, image=image))),
        ),
        Section(
            "debian13", "1b. Kernel start to the root's init on Debian 13 (QEMU TCG)",
            "Item 1 with Debian 13's kernel, dracut and Python: each initrd is the one dracut builds by default (systemd "
            "flavour, no host-only) in a throwaway copy of the cached Debian 13 image root (tests/boot/distro.py). "
            "kiwi-overlay: its Debian package installed there, `root=overlay:nbd://... ip=dhcp`. dracut: Debian 13's "
            "nbd-client, dracut-network, isc-dhcp-client and procps (network-legacy's dhclient and pgrep) installed with apt, "
            "dracut's nbd, overlay-root and network-legacy modules added (item 1's; without network-legacy named, Debian 13's "
            "dracut brings the network up with systemd-networkd), `root=nbd:...:squashfs rootovl ip=dhcp`. Same squashfs "
            f"root and nbd-server as item 1, that root's kernel for both, 1 vCPU. Up to {s.debian13_runs} boots each, "
            "interleaved (benchmarks/debian13.py).",
            lambda: debian13.table(keep("debian13", debian13.measure(runs=s.debian13_runs, image=image))),
        ),
        Section(
            "phases", "2. kiwi-overlay's time inside the initrd (rd.kiwi.debug)",
            "Boots with rd.kiwi.debug; gaps between kiwi-overlay's own CLOCK_BOOTTIME-stamped messages (medians). "
            "Where a hook's process starts (the cmdline hook's, the mount step's): its first message says how long ago its "
            "interpreter started (/proc/self/stat, 10 ms steps), so its interpreter start and imports are counted from the "
            "process's start, not from the previous message. The cmdline stage's row adds what dracut's init and its earlier "
            "cmdline hooks do before kiwi-overlay's hook. The NBD supervisor is forked from the mount step, with its imports. "
            "With systemd, kiwi-overlay's generator does the command line hook's work and leaves its answer, so the hook "
            "starts no interpreter; the generators' row (systemd's stamps around them) shows what that costs there.",
            lambda: boot_phases.table(phases(boot_phases.measure(runs=s.phase_runs, initrds=initrds, image=image))),
        ),
        Section(
            "cost", "2b. What kiwi-overlay's processes are made of (inside the guest)",
            "One boot of item 2's no-systemd initrd with one more archive after it (benchmarks/guest_probe.sh as rdinit, "
            "before dracut's init; benchmarks/guest_probe.py): the initrd's interpreter with the flags of its kiwi-overlay "
            "command (-ISBXutf8) started with `-c pass`, first the boot's first start, then three more; the imports of each "
            "step of the boot in a fresh interpreter, each on top of the ones before it in the mount step's order, three "
            "rounds; the frozen dataclasses those imports make (timed where the standard library makes each); mount(8) of "
            "a tmpfs, three times. Medians. What is left of item 2's phases is the work itself.",
            lambda: guest_cost.table(keep("cost", guest_cost.measure(initrds=initrds, scratch=scratch))),
        ),
        Section(
            "timeline", "7. The boot as a timeline",
            "From the console stamps (CLOCK_BOOTTIME) of this run's boots: kiwi-overlay from item 2's boots (rd.kiwi.debug), "
            "dracut from item 1's, for each the boot with the median time to root. A phase ends at a message: the kernel "
            "starting /init, systemd's first job (after its generators), dracut's cmdline stage, kiwi-overlay's messages, "
            "the kernel's `nbd0: detected capacity change`, "
            "the root mounted, the root's init.",
            lambda: timeline_section(kept, svg),
        ),
        Section(
            "throughput", "5. Sequential read of the root device in the guest",
            f"`dd bs=1M` of the whole export ({s.read_size_mb} MiB: the root image padded with zeros) from the root's init, "
            "page cache dropped first, no systemd, served by qemu-nbd (it allows 8 connections), over QEMU user networking. "
            "Above 1: faster than nbd-client. nbd-client runs with dracut's defaults (the kernel's netlink interface, "
            "512-byte blocks), and with -L (the ioctl interface; NBDOPTS of dracut's root=nbd:..., which dracut passes on). "
            "Every boot has `init_on_free=1` on its command line, except the two rows that say so (one boot each). "
            "Why: QEMU's TCG keeps the code it translated from a guest page until something writes that page, "
            "and every write to such a page takes its self-modifying-code path, store by store, until no translated code "
            "is left on it. A page the guest frees with code on it (a binary's, the initramfs's after switch_root) keeps "
            "it; the read's page cache and socket buffers, zeroed on allocation (Debian's kernel has init_on_alloc) and "
            "filled as data arrives, land on such pages in some boots far more than in others. init_on_free=1 has the "
            "guest's kernel zero pages as it frees them, during the boot, so no read starts on stale code. The evidence: "
            "the code-blocks column (QEMU's `info jit` TB invalidate count, at the root's write test and at the read's "
            "end); outside the bench, the guest's RIP sampled over QEMU's monitor during a default nbd-client read was "
            "in clear_page_erms (the kernel zeroing a newly allocated page) in 97 % of 5,600 samples, with as many "
            "pages allocated during the read as kiwi-overlay's read (/proc/vmstat: about 16,000), and, with "
            "init_on_alloc=0, in _copy_to_iter (the data's first write into those pages) in 91 %. That also explains "
            "earlier findings: qemu-nbd retransmitting to a guest too slow to acknowledge, and the guest's clocksource "
            "watchdog seeing gaps of seconds. A real machine has no such cost. The kernel time column: what the guest's "
            "/proc/stat charges to its kernel (system, irq and softirq) during the read. The last column is qemu-nbd's "
            "own trace of each boot (every NBD_CMD_READ it received: how many, the median length, the most outstanding "
            "at once): what the client's kernel asked for.",
            lambda: throughput.table(
                keep(
                    "throughput",
                    throughput.measure(runs=s.read_runs, initrds=initrds, image=image, size_mb=s.read_size_mb, scratch=scratch),
                ),
                size_mb=s.read_size_mb,
            ),
        ),
        Section(
            "netem", f"5b. Multi-connection with {netem.DELAY_MS} ms more round-trip time (tc netem in the guest)",
            f"Item 5's read (kiwi-overlay only, the same {s.read_size_mb} MiB export from qemu-nbd, init_on_free=1), with "
            f"rd.root.overlay.nbd.connections=1 and =4 on 2 vCPUs (`-smp`) with a reader per vCPU "
            "(ko.read.per-cpu: one dd pinned to each CPU with taskset, each reading its half of the export: one reader would "
            "use one hardware queue at a time), and =4 on 1 vCPU with one reader, once, to show where its READs go "
            "(no 1-connection boot to compare with: see below), every packet the guest sends delayed by "
            f"{netem.DELAY_MS} ms: the benchmark-only dracut module benchmarks/dracut/90ko-bench-netem adds `tc qdisc ... netem "
            f"delay {netem.DELAY_MS}ms` (ko.bench.netem=) to the NIC from a udev rule as it appears, before kiwi-overlay brings it up "
            "(the host kernel has no sch_netem; the host's network is left alone); a boot whose console does not show the "
            f"qdisc does not count. Up to {s.netem_runs} boots each on 2 vCPUs, interleaved. The last column: the READs qemu-nbd's trace "
            "shows on connection 0+1+2+3 (the guest's hardware queue number is in each request's handle) and the most in flight. "
            "How the kernel spreads requests (Debian's 6.1: drivers/block/nbd.c, block/blk-mq.c, block/blk-mq-cpumap.c): "
            "nbd_queue_rq sends a request over the connection numbered like its blk-mq hardware queue; the driver asks for one "
            "queue per connection, blk-mq makes no more queues than CPUs and maps CPU n to queue n (the hardware queues column: "
            "the device's queues in sysfs, logged by the module before the switch to the root). With 1 vCPU the device has one "
            "queue and every request goes over connection 0, whatever the count; with 2 vCPUs over connections 0 and 1, by the "
            "CPU each reader runs on, both at once; connections 2 and 3 carry nothing (still a fallback: the driver moves requests "
            "off a dead connection onto a live one). "
            "More connections can only pay where one connection is the limit: here dd's readahead asks for 128 KiB READs, a "
            "few at a time (most in flight: as qemu-nbd saw them), and under TCG a READ takes several times the added round "
            "trip (time per READ: the read's time over its READs).",
            lambda: netem.table(
                keep("netem", netem.measure(runs=s.netem_runs, image=image, size_mb=s.read_size_mb, scratch=scratch)),
                size_mb=s.read_size_mb,
            ),
        ),
        Section(
            "goals", "Issue 16's goals in this run",
            "Each goal against this run's own figures (from the items below); `not measured` where this run has none.",
            lambda: goals.table(kept, timeline_drawn=svg.exists() and "timeline" in kept),
        ),
    ]  # fmt: skip


def net_up(runs: int) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.net_up", "--header", "--runs", str(runs)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"net_up exited with {result.returncode}: {result.stderr.strip()[-500:]}")
    return result.stdout.strip()


def timeline_section(boots: dict[str, Any], svg: Path) -> str:
    if "boot" not in boots or "phases" not in boots:
        return "Not drawn: items 1 and 2 did not both run."
    rows = []
    for systemd, flavour in FLAVOURS.items():
        for kind, source, events in ((boot_time.KIWI, "phases", timeline.KIWI_EVENTS), (boot_time.DRACUT, "boot", timeline.DRACUT_EVENTS)):
            samples = boots[source].get((kind, systemd))
            result = timeline.median_boot(samples.results) if samples else None
            if result is not None:
                rows.append(timeline.Row(f"{boot_time.TITLES[kind]}, {flavour}", timeline.phases(result, events)))
    if not rows:
        return "Not drawn: no boot reached the root."
    timeline.draw(rows, svg, title="Kernel start to the root's init, QEMU TCG (one boot each: the median)")
    boots["timeline"] = rows
    lines = [f"![the boot as a timeline]({svg.name})", "", "| boot | phases (seconds) |", "|---|---|"]
    for row in rows:
        lines.append(f"| {row.label} | " + ", ".join(f"{label}: {end - start:.2f}" for label, start, end in row.phases) + " |")
    return "\n".join(lines)


ORDER = ("goals", "boot", "debian13", "phases", "cost", "timeline", "negotiation", "initrd", "throughput", "netem", "tls", "storm", "net")


def document(results: dict[str, tuple[Section, str]], *, before: dict[str, str], after: dict[str, str], wall: float, quick: bool) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench`{' --quick' if quick else ''} (benchmarks/run.py) on {before['date']}; do not edit by hand. "
        "QEMU TCG boot times are noisy: the ratios within one run are what count. `n/m`: not measured.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in before.items() if name != "load average"),
        f"| guest kernel | {guest_kernel().version} (Debian), QEMU TCG, 1 vCPU; booted uncompressed (PVH entry), times from its start |",
        f"| load average | {before['load average']} at the start, {after['load average']} at the end |",
        f"| `make bench` wall time | {wall / 60:.1f} min |",
    ]
    for key in ORDER:
        if key in results:
            section, body = results[key]
            lines += ["", f"## {section.title}", "", section.method, "", body]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one boot per variant, fewer host runs (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=ORDER, help="these sections only")
    parser.add_argument("--boot-runs", type=int, help="boots per variant for item 1 (default 4)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    if args.boot_runs:
        settings = Settings(**{**settings.__dict__, "boot_runs": args.boot_runs})
    started = time.monotonic()
    before = machine()
    results: dict[str, tuple[Section, str]] = {}
    with tempfile.TemporaryDirectory(prefix="ko-bn-") as scratch:
        initrds = Initrds(Path(scratch) / "initrds")
        for section in sections(settings, initrds, Path(scratch), svg=args.output.with_name("boot-timeline.svg")):
            if args.only and section.key not in args.only:
                continue
            progress(f"{section.title} ...")
            section_started = time.monotonic()
            try:
                body = section.measure()
            except Exception as error:
                traceback.print_exc()
                body = f"Not measured: {type(error).__name__}: {error}"
            progress(f"{section.title}: {time.monotonic() - section_started:.0f} s\n{body}")
            results[section.key] = (section, body)
    text = document(results, before=before, after=machine(), wall=time.monotonic() - started, quick=args.quick)
    args.output.write_text(text)
    progress(f"wrote {args.output} in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
