"""5b. Multi-connection with latency: kiwi-overlay's sequential read with 1 and 4 NBD connections, 2 ms more RTT.

The host kernel has no sch_netem, so the delay is added inside the guest: the benchmark-only dracut
module benchmarks/dracut/90ko-bench-netem puts `tc qdisc ... netem delay 2ms` (ko.bench.netem=2ms)
on each NIC from a udev rule as the NIC appears, before kiwi-overlay brings it up, and writes the
qdisc to the console; a boot without that line does not count. Only what the guest sends is
delayed: the round trip to the server grows by the delay. The read is item 5's (ko.test=read-all of the
zero-padded root image from qemu-nbd), on 2 vCPUs with a reader per vCPU (ko.read.per-cpu: each dd
pinned to its CPU reads its half), so requests come from both CPUs' hardware queues at once; and once
with 4 connections on 1 vCPU, to show that its READs all go over connection 0.

qemu-nbd's trace says which connection carried each READ: the kernel's nbd driver sends a request
on the connection of its blk-mq hardware queue (nbd_queue_rq passes hctx->queue_num as the socket
index) and puts blk_mq_unique_tag(), whose bits 16-31 are that queue's number, into the low half of
the handle (written in the guest's byte order, read by qemu-nbd as big-endian).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.boot_time import KIWI, Samples, boot_variant, cmdline, progress
from benchmarks.stats import median, ratio, spread
from benchmarks.throughput import FRESH_PAGES, Requests, mb_per_second, padded_image, requests
from tests.boot.initrd import kiwi_overlay_initrd
from tests.boot.qemu import BootResult, Guest
from tests.boot.servers import QemuNbd

MODULE_DIR = Path(__file__).resolve().parent / "dracut/90ko-bench-netem"
MODULE = "ko-bench-netem"
DELAY_MS = 2
CONNECTIONS = (1, 4)
# (vCPUs, a reader per vCPU): one sequential reader on 1 vCPU; on 2, one reader per vCPU, so that both
# hardware queues (and so two connections) have requests at once: one reader uses one queue at a time.
READS = ((1, False), (2, True))
# On 1 vCPU the device has one hardware queue, so every READ goes over connection 0: one boot with 4
# connections shows it, and a 1-connection boot to compare with would only measure the boots' noise.
ONCE = ((4, 1),)

_QDISC = re.compile(r"ko-bench-netem: (\S+): qdisc netem \S+ root .*\bdelay (\S+)")
_QUEUES = re.compile(r"ko-bench-netem: nbd\d+ hardware queues: (.*)")
# One per answered request; READs are the only requests answered with data (the export is read-only).
_READ_REPLY = re.compile(r"nbd_co_send_simple_reply Send simple reply: handle = (\d+), error = 0 \([^)]*\), len = [1-9]")


@dataclass(frozen=True)
class Variant:
    connections: int
    cpus: int
    per_cpu: bool = False  # a reader per vCPU, instead of one

    @property
    def label(self) -> str:
        readers = ", a reader per vCPU" if self.per_cpu else ""
        return f"kiwi-overlay, {plural(self.connections, 'connection')}, {plural(self.cpus, 'vCPU')}{readers}"

    @property
    def reference(self) -> Variant:
        """The same read with 1 connection."""
        return Variant(1, self.cpus, self.per_cpu)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


@dataclass
class Measured:
    """One variant's boots: MB/s, what qemu-nbd saw (READs, most in flight), READs per connection."""

    samples: Samples = field(default_factory=Samples)
    requests: list[Requests] = field(default_factory=list)
    per_connection: list[dict[int, int]] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)  # the read's time / its READs, per boot with both
    queues: list[str] = field(default_factory=list)  # the root device's hardware queues and their CPUs, per boot

    @property
    def median_read_ms(self) -> float | None:
        return median(self.read_ms)


def netem_initrd(*, output: Path) -> Path:
    """kiwi-overlay's initrd without systemd (item 5's), plus the netem module."""
    progress("building the kiwi-overlay initrd with ko-bench-netem (no systemd)")
    return kiwi_overlay_initrd(output=output, systemd=False, extra_modules=(MODULE,), module_dirs=(MODULE_DIR,))


def delays(result: BootResult) -> dict[str, str]:
    """The netem delay the guest's module set on each NIC, from the console."""
    return {found[1]: found[2] for line in result.console().splitlines() if (found := _QDISC.search(line))}


def hardware_queues(result: BootResult) -> str | None:
    """The root device's blk-mq hardware queues and their CPUs, as the module logged them ("queue 0 (CPUs 0)")."""
    found = next((match for line in result.console().splitlines() if (match := _QUEUES.search(line))), None)
    return found[1].strip() if found else None


def reads_per_connection(trace: str) -> dict[int, int]:
    """How many READs each connection (the guest's hardware queue number) carried, from qemu-nbd's trace."""
    counts: Counter[int] = Counter()
    for line in trace.splitlines():
        if found := _READ_REPLY.search(line):
            guest_handle = int.from_bytes(int(found[1]).to_bytes(8, "big"), "little")
            counts[(guest_handle >> 16) & 0xFFFF] += 1
    return dict(sorted(counts.items()))


def measure(*, runs: int, image: Path, size_mb: int, scratch: Path, delay_ms: int = DELAY_MS) -> dict[Variant, Measured]:
    """RUNS boots of each variant, interleaved round by round, all with DELAY_MS on the guest's NIC."""
    delay = f"{delay_ms}ms"  # tc's spelling, and how it prints the qdisc
    results = {
        Variant(connections, cpus, per_cpu): Measured()
        for cpus, per_cpu in READS
        for connections in CONNECTIONS
        if cpus > 1 or (connections, cpus) in ONCE
    }
    initrd = netem_initrd(output=scratch / "initrds/kiwi-overlay-netem.img")
    padded = padded_image(image, size_mb=size_mb, output=scratch / "padded.squashfs")
    with QemuNbd(padded, connections=8, trace=True) as server:
        for round_number in range(runs):
            for variant, measured in results.items():
                if round_number and (variant.connections, variant.cpus) in ONCE:
                    continue
                extra = [FRESH_PAGES, f"rd.root.overlay.nbd.connections={variant.connections}", f"ko.bench.netem={delay}"]
                extra += ["ko.test=read-all"]
                extra += ["ko.read.per-cpu"] if variant.per_cpu else []
                guest = Guest(initrd=initrd, cmdline=cmdline(KIWI, server, *extra), cpus=variant.cpus)
                offset = server.log.stat().st_size if server.log.exists() else 0
                name = f"netem-{variant.connections}conn-{variant.cpus}cpu{'-percpu' if variant.per_cpu else ''}-{round_number}"
                figures = len(measured.samples.values)
                booted = len(measured.samples.results)
                boot_variant(measured.samples, guest, name=name, value=lambda result: _delayed_rate(result, delay))
                if len(measured.samples.results) > booted:
                    measured.queues.append(hardware_queues(measured.samples.results[-1]) or "n/m")
                with server.log.open("rb") as log:
                    log.seek(offset)
                    trace = log.read().decode(errors="replace")
                if found := requests(trace):
                    measured.requests.append(found)
                    measured.per_connection.append(reads_per_connection(trace))
                    if len(measured.samples.values) > figures:
                        seconds = (padded.stat().st_size / 1e6) / measured.samples.values[-1]
                        measured.read_ms.append(seconds / found.count * 1000)
    return results


def _delayed_rate(result: BootResult, delay: str) -> float | None:
    """MB/s of the read, if the console shows the netem DELAY on a NIC (else the figure does not count)."""
    if delay not in delays(result).values():
        progress(f"no netem delay {delay} on the console of {result.log.name}: the boot does not count")
        return None
    return mb_per_second(result)


def _reads(requests_seen: Requests, counts: dict[int, int], *, connections: int) -> str:
    split = "+".join(str(counts.get(index, 0)) for index in range(connections))
    return f"{split} ({requests_seen.most_in_flight})"


def table(results: dict[Variant, Measured], *, size_mb: int, delay_ms: int = DELAY_MS) -> str:
    rows = [
        f"| client ({delay_ms} ms more RTT, {size_mb} MiB export, qemu-nbd) | median | range | / 1 connection, same vCPUs "
        "| time per READ | the device's hardware queues (CPUs) | READs per connection, each boot (most in flight) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, measured in results.items():
        samples = measured.samples
        if not samples.values:
            rows.append(f"| {variant.label} | not measured | | | | | |")
            continue
        reference = results.get(variant.reference)
        compared = ratio(samples.median, reference.samples.median if reference else None)
        reads = "; ".join(
            _reads(seen, counts, connections=variant.connections)
            for seen, counts in zip(measured.requests, measured.per_connection, strict=True)
        )
        figures = spread(samples.values, "MB/s")
        per_read = f"{measured.median_read_ms:.1f} ms" if measured.median_read_ms else "n/m"
        queues = " / ".join(sorted(set(measured.queues)))  # the same in every boot, unless the kernel changed its mind
        rate = f"**{median(samples.values):.1f} MB/s**"
        rows.append(f"| {variant.label} | {rate} | {figures} | {compared} | {per_read} | {queues} | {reads or 'n/m'} |")
    notes = [f"- {variant.label}: not measured: {m.samples.failure}" for variant, m in results.items() if m.samples.failure]
    return "\n".join(rows + (["", *notes] if notes else []))


def verdict(results: dict[Variant, Measured] | None, *, cpus: int, per_cpu: bool) -> tuple[str, str]:
    """Do 4 connections beat 1 with CPUS vCPUs (PER_CPU: a reader on each): the figures shown, and met /
    not met (why) / not measured.

    Met only when every 4-connection boot spread its READs over more than one connection and the
    slowest of them beat the fastest 1-connection boot: TCG boots are noisy, and a faster median
    with every READ on one connection is noise, not the connections' gain.
    """
    one, four = (results.get(Variant(connections, cpus, per_cpu)) if results else None for connections in CONNECTIONS)
    if not four or not four.samples.values:
        return "n/m", "not measured"
    four_rate = median(four.samples.values)
    used = sorted({len(counts) for counts in four.per_connection}) or [0]
    spread_over = f"{used[0]}" if len(used) == 1 else f"{used[0]}-{used[-1]}"
    if used[-1] <= 1:  # no 1-connection read needed to tell
        return f"{four_rate:.1f} MB/s; READs over {spread_over} of 4 connections", (
            "not met: every READ went over one connection (blk-mq makes no more hardware queues than vCPUs, "
            "and the nbd driver sends each queue's requests over a connection of its own: item 5b)"
        )
    if not one or not one.samples.values:
        return "n/m", "not measured"
    one_rate = median(one.samples.values)
    shown = f"{four_rate:.1f} vs {one_rate:.1f} MB/s ({ratio(four_rate, one_rate)}); READs over {spread_over} of 4 connections"
    if used[0] > 1 and min(four.samples.values) > max(one.samples.values):
        return shown, "**met**"
    per_read = four.median_read_ms
    added = f": a READ takes {per_read:.1f} ms under TCG, the added round trip {DELAY_MS} ms of it" if per_read else ""
    return shown, f"not met: no gain beyond the spread of the boots{added}"
