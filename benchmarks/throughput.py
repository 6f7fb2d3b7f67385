"""5. Sequential read of the root device inside the guest: kiwi-overlay with 1 and 4 connections vs nbd-client.

The root image padded with zeros to SIZE_MB (squashfs ignores what follows its end) is served by
qemu-nbd, which takes several connections; the guest boots without systemd and its init reads
the whole device (ko.test=read-all: page cache dropped, dd bs=1M), reporting bytes and seconds.
dracut's stock nbd root runs nbd-client with its defaults (one connection, the kernel's netlink
interface, 512-byte blocks), and with other options of it; for each read the time the guest's
/proc/stat charges to its kernel meanwhile (kernel-cpu: system, irq and softirq), and how many
blocks of translated code QEMU threw away meanwhile (its monitor's `info jit`).

Every variant boots with FRESH_PAGES; the STALE rows show what a read costs without it.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.boot_time import DRACUT, KIWI, Initrds, Samples, boot_variant, cmdline, progress
from benchmarks.stats import median, ratio, spread
from tests.boot.qemu import BootResult, Guest, Mark, monitor_command
from tests.boot.servers import QemuNbd

# Every read boots with it: the guest's kernel zeroes a page as it frees it, so QEMU's TCG drops the
# code it translated from that page during the boot, not store by store during the read (why: item
# 5's description in run.py).
FRESH_PAGES = "init_on_free=1"


@dataclass(frozen=True)
class Variant:
    kind: str
    extra: tuple[str, ...] = ()  # kernel command line
    nbd_client: tuple[str, ...] = ()  # nbd-client's options (dracut's NBDOPTS)
    fresh_pages: bool = True  # booted with FRESH_PAGES; without, once (nbd-client's read takes minutes)

    @property
    def name(self) -> str:
        """For the boot's log: the kind and what sets it apart (connections, nbd-client's options, stale pages)."""
        words = [word.rsplit("=", 1)[-1].lstrip("-") for word in (*self.extra, *self.nbd_client)]
        words += [] if self.fresh_pages else ["stale-pages"]
        return "-".join((self.kind, *(words or ["default"])))

    def cmdline_words(self) -> tuple[str, ...]:
        return (FRESH_PAGES, *self.extra) if self.fresh_pages else self.extra


NBD_CLIENT = "nbd-client (dracut's stock nbd, default: 1 connection)"  # the reference: the first row
ONE_CONNECTION = "kiwi-overlay, rd.root.overlay.nbd.connections=1"
STALE_NBD_CLIENT = f"nbd-client, default, without {FRESH_PAGES}"
STALE_ONE_CONNECTION = f"kiwi-overlay, 1 connection, without {FRESH_PAGES}"
VARIANTS = {
    NBD_CLIENT: Variant(DRACUT),
    "nbd-client -L (the ioctl interface instead of netlink)": Variant(DRACUT, nbd_client=("-L",)),
    ONE_CONNECTION: Variant(KIWI, ("rd.root.overlay.nbd.connections=1",)),
    "kiwi-overlay, rd.root.overlay.nbd.connections=4": Variant(KIWI, ("rd.root.overlay.nbd.connections=4",)),
    STALE_NBD_CLIENT: Variant(DRACUT, fresh_pages=False),
    STALE_ONE_CONNECTION: Variant(KIWI, ("rd.root.overlay.nbd.connections=1",), fresh_pages=False),
}


def padded_image(image: Path, *, size_mb: int, output: Path) -> Path:
    """IMAGE with zeros appended up to SIZE_MB (sparse)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, output)
    with output.open("r+b") as handle:
        handle.truncate(max(size_mb << 20, image.stat().st_size))
    return output


def mb_per_second(result: BootResult) -> float | None:
    found = re.search(r"^ok .*bytes=(\d+) seconds=([\d.]+)", result.value("read-all") or "")
    if not found or float(found[2]) <= 0:
        return None
    return int(found[1]) / float(found[2]) / 1e6


def median_kernel_cpu(samples: Samples) -> float | None:
    """Seconds the guest's /proc/stat charged to its kernel (system, irq, softirq) during a read, the median of SAMPLES' boots."""
    found = [re.search(r"^ok .* kernel-cpu=([\d.]+)", result.value("read-all") or "") for result in samples.results]
    return median([float(match[1]) for match in found if match])


@dataclass(frozen=True)
class Requests:
    """What the server saw of one boot's NBD_CMD_READs (qemu-nbd's trace): how many, how big, how many at once."""

    count: int
    median_bytes: float
    most_in_flight: int


_GOT_READ = re.compile(r"nbd_receive_request Got request: \{[^}]*\.type = 0x0, from = \d+, len = (\d+)")
_REPLY = re.compile(r"nbd_co_send_simple_reply ")


def requests(trace: str) -> Requests | None:
    sizes, in_flight, most = [], 0, 0
    for line in trace.splitlines():
        if found := _GOT_READ.search(line):
            sizes.append(int(found[1]))
            in_flight += 1
            most = max(most, in_flight)
        elif _REPLY.search(line) and in_flight:
            in_flight -= 1
    return Requests(len(sizes), median(sizes) or 0.0, most) if sizes else None


@dataclass
class Measured:
    """Per variant: its boots, the server's view of each read, the code blocks QEMU invalidated during each read."""

    results: dict[str, Samples]
    requests: dict[str, list[Requests]]
    invalidated: dict[str, list[int]]


_INVALIDATED = re.compile(r"TB invalidate count\s+(\d+)")


class _InvalidationCounter:
    """QEMU's count of invalidated translation blocks at the root's write test (just before the read) and the read's end."""

    def __init__(self, monitor: Path) -> None:
        self.monitor = monitor
        self.counts: dict[str, int] = {}

    def on_mark(self, mark: Mark) -> None:
        if mark.name not in ("write", "read-all"):
            return
        try:
            answer = monitor_command(self.monitor, "info jit")
        except OSError as error:  # the column shows n/m; the boot's own figures still count
            progress(f"QEMU's monitor: {error}")
            return
        if found := _INVALIDATED.search(answer):
            self.counts[mark.name] = int(found[1])

    @property
    def during_read(self) -> int | None:
        return self.counts["read-all"] - self.counts["write"] if len(self.counts) == 2 else None


def measure(*, runs: int, initrds: Initrds, image: Path, size_mb: int, scratch: Path) -> Measured:
    """The MB/s of each variant's boots, what the server's trace shows of their reads, QEMU's invalidations."""
    measured = Measured({label: Samples() for label in VARIANTS}, {label: [] for label in VARIANTS}, {label: [] for label in VARIANTS})
    padded = padded_image(image, size_mb=size_mb, output=scratch / "padded.squashfs")
    with QemuNbd(padded, connections=8, trace=True) as server:
        for round_number in range(runs):
            for label, variant in VARIANTS.items():
                if not variant.fresh_pages and round_number > 0:
                    continue
                line = cmdline(variant.kind, server, *variant.cmdline_words(), "ko.test=read-all", nbd_client=variant.nbd_client)
                counter = _InvalidationCounter(scratch / "monitor.sock")
                guest = Guest(initrd=initrds.get(variant.kind, systemd=False), cmdline=line, monitor=counter.monitor)
                offset = server.log.stat().st_size if server.log.exists() else 0
                name = f"read-{variant.name}-{round_number}"
                boot_variant(measured.results[label], guest, name=name, value=mb_per_second, on_mark=counter.on_mark)
                with server.log.open("rb") as log:
                    log.seek(offset)
                    found = requests(log.read().decode(errors="replace"))
                if found:
                    measured.requests[label].append(found)
                if counter.during_read is not None:
                    measured.invalidated[label].append(counter.during_read)
    return measured


def _multi_conn_note(samples: Samples) -> str:
    """What kiwi-overlay said about the server's multi-conn, if it fell back to one connection."""
    for result in samples.results:
        if "does not allow several connections" in result.console():
            return " (server refused several connections: one used)"
    return ""


def table(measured: Measured, *, size_mb: int) -> str:
    reference = measured.results[NBD_CLIENT].median
    rows = [
        f"| client ({size_mb} MiB export, qemu-nbd) | median | range | / nbd-client | guest's kernel time during the read |"
        " code blocks QEMU invalidated during the read | READs per boot (median size, most in flight) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, samples in measured.results.items():
        if not samples.values:
            rows.append(f"| {label} | not measured | | | | | |")
            continue
        digits = 1 if min(samples.values) >= 1 else 2  # a stale-page read can be well under 0.1 MB/s
        figures = spread(samples.values, "MB/s", digits)
        compared = ratio(samples.median, reference)
        cpu = median_kernel_cpu(samples)
        cpu_shown = f"{cpu:.1f} s" if cpu is not None else "n/m"
        invalidated = median(measured.invalidated[label])
        invalidated_shown = f"{invalidated:,.0f}" if invalidated is not None else "n/m"
        reads = "; ".join(f"{r.count} ({r.median_bytes / 1024:.0f} KiB, {r.most_in_flight})" for r in measured.requests[label]) or "n/m"
        speed = f"**{median(samples.values):.{digits}f} MB/s**"
        rows.append(
            f"| {label}{_multi_conn_note(samples)} | {speed} | {figures} | {compared} | {cpu_shown} | {invalidated_shown} | {reads} |"
        )
    notes = [f"- {label}: not measured: {samples.failure}" for label, samples in measured.results.items() if samples.failure]
    return "\n".join(rows + (["", *notes] if notes else []))
