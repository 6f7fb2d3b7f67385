"""1. Kernel start to the root's init: kiwi-overlay vs dracut's stock `nbd` + `overlay-root` (`rootovl`).

Same root image, guest kernel, nbd-server and machine; the initrds with and without systemd. The
figure is the guest uptime at which the root's init starts (BootResult.time_to_root): QEMU TCG,
one vCPU. Rounds interleave the variants so that load on the host spreads over all of them.
The boot plumbing here (initrds built once per run, command lines, failure reasons) serves
boot_phases.py and throughput.py too.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from benchmarks.stats import median, ratio, seconds, spread
from tests.boot.initrd import KIWI_OVERLAY_MODULES, build_initrd, kiwi_overlay_initrd, stock_nbd_initrd
from tests.boot.qemu import BootResult, Guest, Mark, boot
from tests.boot.servers import NbdServer, QemuNbd

KIWI = "kiwi-overlay"
DRACUT = "dracut"
WITHOUT = "without-module"  # kiwi-overlay's initrd minus the module (initrd_size.py)
TITLES = {KIWI: "kiwi-overlay", DRACUT: "dracut nbd + rootovl", WITHOUT: "same initrd without kiwi-overlay"}
FLAVOURS = {False: "no systemd", True: "systemd"}
BOOT_TIMEOUT = 240.0
K = TypeVar("K")

Server = NbdServer | QemuNbd


def _without_module(*, output: Path, systemd: bool) -> Path:
    return build_initrd(output=output, systemd=systemd, modules=tuple(name for name in KIWI_OVERLAY_MODULES if name != KIWI))


BUILDERS: dict[str, Callable[..., Path]] = {KIWI: kiwi_overlay_initrd, DRACUT: stock_nbd_initrd, WITHOUT: _without_module}


class Initrds:
    """The run's initrds, each built by dracut on first use into DIRECTORY."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._built: dict[tuple[str, bool], Path] = {}

    def get(self, kind: str, *, systemd: bool) -> Path:
        if (kind, systemd) not in self._built:
            output = self.directory / f"{kind}-{'systemd' if systemd else 'no-systemd'}.img"
            progress(f"building the {TITLES[kind]} initrd ({FLAVOURS[systemd]})")
            self._built[kind, systemd] = BUILDERS[kind](output=output, systemd=systemd)
        return self._built[kind, systemd]


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def cmdline(kind: str, server: Server, *extra: str, nbd_client: Sequence[str] = ()) -> str:
    """The kernel command line for KIND's initrd booting SERVER's export (DHCP on QEMU user networking).

    NBD_CLIENT: options dracut passes to nbd-client (its NBDOPTS).
    """
    root = f"root=overlay:{server.url()}" if kind == KIWI else f"root={server.nbd_root('squashfs', options=nbd_client)} rootovl"
    return " ".join((root, "ip=dhcp", *extra))


# The kernel's timestamp and the name[pid] journald puts before a service's output.
_PREFIX = re.compile(r"^\[\s*\d+\.\d+\]\s*(?:[\w@.-]+\[\d+\]:\s*)?")
_REASONS = (re.compile(r"^\w*(?:Error|Exception): .*"), re.compile(r"kiwi-overlay: .*"), re.compile(r"FATAL: .*"))


def failure(result: BootResult) -> str | None:
    """Why RESULT did not reach the root, in one line (None when it did)."""
    if result.reached_root:
        return None
    lines = [_PREFIX.sub("", line) for line in result.console().splitlines()]
    for pattern in _REASONS:
        found = [match[0] for line in lines if (match := pattern.search(line))]
        if found:  # the exception that started it, else the last word on it
            return f"{found[0] if pattern is _REASONS[0] else found[-1]} (console: {result.log.name})"
    ended = "time limit hit" if result.timed_out else f"QEMU exit status {result.returncode}"
    return f"root not reached, {ended} (console: {result.log.name})"


@dataclass
class Samples:
    """What the boots of one variant gave: values, or why it failed (then it is not booted again)."""

    values: list[float] = field(default_factory=list)
    failure: str | None = None
    results: list[BootResult] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return median(self.values)

    @property
    def idle(self) -> float | None:
        """The median CPU idle time until the root's init, over the boots that reached it."""
        return median([float(idle) for result in self.results if (idle := result.value("cpu-idle"))])


def boot_variant(
    samples: Samples, guest: Guest, *, name: str, value: Callable[[BootResult], float | None], on_mark: Callable[[Mark], None] | None = None
) -> None:
    """Boot GUEST once into SAMPLES (skipped after a failure); VALUE reads the figure from the result, ON_MARK sees each marker."""
    if samples.failure:
        return
    result = boot(guest, name=f"ko-bn-{name}", timeout=BOOT_TIMEOUT, on_mark=on_mark)
    samples.results.append(result)
    figure = value(result) if result.reached_root else None
    if figure is None:
        samples.failure = failure(result) or f"no figure in the console (console: {result.log.name})"
        progress(f"{name}: FAILED: {samples.failure}")
        return
    samples.values.append(figure)
    progress(f"{name}: {figure:.2f}")


def times_to_root(guests: Mapping[K, Guest], *, runs: int, name: Callable[[K, int], str]) -> dict[K, Samples]:
    """RUNS boots of each of GUESTS, interleaved round by round; NAME(key, round) names each boot."""
    results = {key: Samples() for key in guests}
    for round_number in range(runs):
        for key, samples in results.items():
            boot_variant(samples, guests[key], name=name(key, round_number), value=lambda result: result.time_to_root)
    return results


def measure(*, runs: int, initrds: Initrds, image: Path) -> dict[tuple[str, bool], Samples]:
    """RUNS boots of each (initrd kind, systemd) variant, interleaved round by round."""
    with NbdServer(image) as server:
        guests = {
            (kind, systemd): Guest(initrd=initrds.get(kind, systemd=systemd), cmdline=cmdline(kind, server))
            for systemd in FLAVOURS
            for kind in (DRACUT, KIWI)
        }
        return times_to_root(guests, runs=runs, name=lambda key, number: f"boot-{key[0]}-{'systemd' if key[1] else 'nosystemd'}-{number}")


def cell(samples: Samples) -> str:
    if samples.failure and not samples.values:
        return "not measured"
    return f"**{seconds(samples.median)}** ({spread(samples.values)})"


def table(results: dict[tuple[str, bool], Samples]) -> str:
    rows = [
        "| initrd | dracut nbd + rootovl | kiwi-overlay | kiwi-overlay / dracut |",
        "|---|---|---|---|",
    ]
    for systemd, flavour in FLAVOURS.items():
        dracut, kiwi = results[DRACUT, systemd], results[KIWI, systemd]
        rows.append(f"| {flavour} | {cell(dracut)} | {cell(kiwi)} | {ratio(kiwi.median, dracut.median)} |")
    rows += [
        "",
        "| initrd | dracut: CPU idle until the root's init | kiwi-overlay: CPU idle until the root's init |",
        "|---|---|---|",
    ]
    for systemd, flavour in FLAVOURS.items():
        dracut, kiwi = results[DRACUT, systemd], results[KIWI, systemd]
        rows.append(f"| {flavour} | {_idle_cell(dracut)} | {_idle_cell(kiwi)} |")
    notes = [f"- {TITLES[kind]}, {FLAVOURS[systemd]}: not measured: {s.failure}" for (kind, systemd), s in results.items() if s.failure]
    return "\n".join(rows + (["", *notes] if notes else []))


def _idle_cell(samples: Samples) -> str:
    if samples.idle is None:
        return "n/m"
    return f"{seconds(samples.idle, 2)} of {seconds(samples.median)}"
