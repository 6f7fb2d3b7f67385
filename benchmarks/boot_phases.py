"""2. Where kiwi-overlay's time goes inside the initrd, from its rd.kiwi.debug timestamps.

Every kiwi-overlay message carries CLOCK_BOOTTIME (`[  12.345678] kiwi-overlay: ...`, also when
journald forwards it). Phases are the gaps between known messages, in the order of the boot:
the command line hook (interpreter start, imports, claim), the network, the NBD supervisor's fork,
the nbd module and its netlink family, the negotiation, the kernel attach, the mounts. Medians over the boots of each flavour.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.boot_time import FLAVOURS, KIWI, Initrds, Samples, boot_variant, cmdline
from benchmarks.stats import median, seconds
from tests.boot.qemu import BootResult, Guest
from tests.boot.servers import NbdServer

_MESSAGE = re.compile(r"\[\s*(\d+\.\d+)\] kiwi-overlay: (.*)$")
_KERNEL_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]")
# The start of dracut's cmdline stage: its banner (no systemd) or systemd starting the service.
_CMDLINE_STAGE = re.compile(r"\] (?:dracut: |systemd\[1\]: Starting dracut-cmdline\.service)")
# systemd's generators (kiwi-overlay's among them) and unit loading: after the machine ID, before the first job.
_GENERATORS_START = re.compile(r"\] systemd\[1\]: (?:Initializing machine ID|Hostname set to)")
_GENERATORS_END = re.compile(r"\] systemd\[1\]: Queued start job for default target")
_KERNEL_EVENTS = {"cmdline-stage": _CMDLINE_STAGE, "generators-start": _GENERATORS_START, "generators-end": _GENERATORS_END}

Timeline = dict[str, float]

# A hook's process logs, after its imports and plan, how long ago its interpreter started.
STARTED = r"interpreter started ([\d.]+) s before"

EVENTS = {
    "cmdline-process": rf"^dracut-cmdline: {STARTED}",
    "cmdline": r"^dracut cmdline: ",
    "mount-process": rf"^(?:mount|prepare): {STARTED}",
    "net-first": rf"^(?!dracut cmdline|\S+: {STARTED})",  # the bring-up's first message
    "net-done": r"^network up in ([\d.]+) s",
    "carrier": r"^carrier on \S+ \(([\d.]+) s\)",
    "lease": r"DHCP lease .* \(([\d.]+) s\)$",
    "supervisor-start": r"^starting the NBD supervisor",
    "supervisor-up": r"^nbd supervisor: started",
    "kernel-interface": r"^nbd supervisor: (nbd netlink family bound|.*using the ioctl interface)",
    "negotiated": r"^nbd supervisor: \d+ connection\(s\) to .* negotiated",
    "connected": r"^nbd supervisor: /dev/nbd\d+ connected",
    "assembled": r"^read layer ",
}


def timeline(result: BootResult) -> Timeline:
    """The time of the first message of each EVENTS kind (and the reported durations, as NAME:value)."""
    events: Timeline = {}
    for line in result.console().splitlines():
        for name, kernel_pattern in _KERNEL_EVENTS.items():
            if name not in events and kernel_pattern.search(line) and (stamp := _KERNEL_TIME.match(line)):
                events[name] = float(stamp[1])
        message = _MESSAGE.search(line)
        if not message:
            continue
        for name, pattern in EVENTS.items():
            found = re.search(pattern, message[2])
            if name not in events and found:
                events[name] = float(message[1])
                if found.groups() and found[1] and re.fullmatch(r"[\d.]+", found[1]):
                    events[f"{name}:value"] = float(found[1])
    return events


def _cmdline_hook(events: Timeline) -> float | None:
    """The cmdline stage's start to kiwi-overlay's answer: 0 where its systemd generator answered before the stage."""
    if "cmdline-stage" not in events or "cmdline" not in events:
        return None
    return max(events["cmdline"] - events["cmdline-stage"], 0.0)


def _process_start(events: Timeline, name: str) -> float | None:
    """When the process of NAME (an EVENTS "...-process") started: its message's stamp less the age it gives."""
    return events[name] - events[f"{name}:value"] if f"{name}:value" in events else None


def _cmdline_process(events: Timeline) -> float | None:
    """kiwi-overlay's own cmdline hook: its interpreter's start to its answer (no systemd; with it the generator answers)."""
    start = _process_start(events, "cmdline-process")
    return events["cmdline"] - start if start is not None and "cmdline" in events else None


def own_time(events: Timeline) -> float | None:
    """kiwi-overlay's processes on the way to the root (no systemd): the cmdline hook's, and the mount step's to the root assembled."""
    hook, mount = _cmdline_process(events), _process_start(events, "mount-process")
    return hook + events["assembled"] - mount if hook is not None and mount is not None and "assembled" in events else None


def _gap(start: str, end: str) -> Callable[[Timeline], float | None]:
    return lambda events: events[end] - events[start] if start in events and end in events else None


def _network_start(events: Timeline) -> float | None:
    return events["net-done"] - events["net-done:value"] if "net-done" in events else None


def _before_first_network_message(events: Timeline) -> float | None:
    start = _network_start(events)
    return events["net-first"] - start if start is not None and "net-first" in events else None


def _dhcp(events: Timeline) -> float | None:
    return events["lease:value"] - events["carrier:value"] if "lease:value" in events and "carrier:value" in events else None


def _network_start_to_assembled(events: Timeline) -> float | None:
    start = _network_start(events)
    return events["assembled"] - start if start is not None and "assembled" in events else None


@dataclass(frozen=True)
class Phase:
    label: str
    value: Callable[[Timeline], float | None]

    def median(self, timelines: list[Timeline]) -> float | None:
        """The median of this phase over the boots' TIMELINES that have it."""
        return median([found for events in timelines if (found := self.value(events)) is not None])


PHASES = (
    Phase("cmdline hook: kiwi-overlay's process, its interpreter's start to its answer (interpreter, imports, claim; no systemd)",
          _cmdline_process),
    Phase("cmdline stage: its start to kiwi-overlay's answer (dracut's init and earlier cmdline hooks too);"
          " 0 where the generator answered before the stage (systemd)", _cmdline_hook),
    Phase("systemd: generators (kiwi-overlay's: interpreter, imports, units, the cmdline hook's answer) and unit loading",
          _gap("generators-start", "generators-end")),
    Phase("mount step: its interpreter's start to its first message (interpreter, imports, plan)",
          lambda events: events.get("mount-process:value")),
    Phase("mount step: network bring-up, as reported (`network up in`)", lambda events: events.get("net-done:value")),
    Phase("… of which: bring-up start to its first message (bring-up and netlink imports)", _before_first_network_message),
    Phase("… of which: DHCP, carrier to lease", _dhcp),
    Phase("network up to starting the NBD supervisor", _gap("net-done", "supervisor-start")),
    Phase("NBD supervisor process: fork (an interpreter start and imports before)", _gap("supervisor-start", "supervisor-up")),
    Phase("nbd module load and kernel interface (netlink family)", _gap("supervisor-up", "kernel-interface")),
    Phase("negotiation", _gap("kernel-interface", "negotiated")),
    Phase("attach (kernel connect to /dev/nbdN)", _gap("negotiated", "connected")),
    Phase("mounts (tmpfs, read layer, overlay)", _gap("connected", "assembled")),
    Phase("**network start to root assembled**", _network_start_to_assembled),
)  # fmt: skip


def measure(*, runs: int, initrds: Initrds, image: Path) -> dict[bool, Samples]:
    """RUNS debug boots per flavour; Samples.values holds each boot's time to root, .results the consoles."""
    results = {systemd: Samples() for systemd in FLAVOURS}
    with NbdServer(image) as server:
        for round_number in range(runs):
            for systemd, samples in results.items():
                guest = Guest(initrd=initrds.get(KIWI, systemd=systemd), cmdline=cmdline(KIWI, server, "rd.kiwi.debug"))
                name = f"phases-{'systemd' if systemd else 'nosystemd'}-{round_number}"
                boot_variant(samples, guest, name=name, value=lambda result: result.time_to_root)
    return results


def table(results: dict[bool, Samples]) -> str:
    timelines = {systemd: [timeline(result) for result in samples.results if result.reached_root] for systemd, samples in results.items()}
    header = " | ".join(f"{FLAVOURS[systemd]} ({len(timelines[systemd])} boots)" for systemd in FLAVOURS)
    rows = [f"| phase | {header} |", "|---|" + "---|" * len(FLAVOURS)]
    for phase in PHASES:
        cells = []
        for systemd in FLAVOURS:
            cells.append(seconds(phase.median(timelines[systemd]), 2))
        rows.append(f"| {phase.label} | {' | '.join(cells)} |")
    notes = [f"- {FLAVOURS[systemd]}: not measured: {samples.failure}" for systemd, samples in results.items() if samples.failure]
    return "\n".join(rows + (["", *notes] if notes else []))
