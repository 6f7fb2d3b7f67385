"""6. The boot as a timeline: one bar per phase, kiwi-overlay's initrd above dracut's, per flavour.

The phases come from the CLOCK_BOOTTIME stamps of one boot's console (the kernel's own messages,
dracut's and systemd's, kiwi-overlay's rd.kiwi.debug messages): for each initrd and flavour the
boot of the run whose time to root is the median. Drawn with matplotlib (the bench extra).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.boot.qemu import BootResult

_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


@dataclass(frozen=True)
class Event:
    """The end of a phase: LABEL ends at the first console line matching PATTERN."""

    label: str
    pattern: str


# Where each phase ends, in boot order; a phase starts where the previous found one ended.
COMMON_START = (
    Event("kernel", r"Run /init as init process"),
    Event("systemd generators", r"systemd\[1\]: Queued start job for default target"),
    Event("initrd start", r"\] (?:dracut: |systemd\[1\]: Starting dracut-cmdline\.service)"),
)
KIWI_EVENTS = (
    *COMMON_START,
    Event("cmdline hook", r"kiwi-overlay: dracut cmdline: "),
    Event("udev, initqueue, mount step start", r"kiwi-overlay: (?!dracut cmdline|dracut-cmdline: )"),
    Event("network", r"kiwi-overlay: network up in"),
    Event("NBD: supervisor, module, negotiation, attach", r"kiwi-overlay: nbd supervisor: /dev/nbd\d+ connected"),
    Event("mounts", r"kiwi-overlay: read layer "),
)
DRACUT_EVENTS = (
    *COMMON_START,
    Event("udev, initqueue, network, nbd-client", r"nbd\d+: detected capacity change from 0"),
    Event("mounts", r"dracut: Mounted root filesystem|Mounted sysroot\.mount|Reached target initrd-root-fs\.target"),
)
SWITCH = "to the root's init (switch_root)"  # ends at the root's first marker (time_to_root)


@dataclass(frozen=True)
class Row:
    label: str
    phases: tuple[tuple[str, float, float], ...]  # (phase, start, end) in guest seconds


def phases(result: BootResult, events: Sequence[Event]) -> tuple[tuple[str, float, float], ...]:
    """(label, start, end) of each phase of EVENTS found in RESULT's console, from 0 to the root's init."""
    found: dict[str, float] = {}
    for line in result.console().splitlines():
        stamp = _STAMP.match(line)
        if not stamp:
            continue
        for event in events:
            if event.label not in found and re.search(event.pattern, line):
                found[event.label] = float(stamp[1])
    found[SWITCH] = result.time_to_root or 0.0
    spans = []
    start = 0.0
    for label in (*(event.label for event in events), SWITCH):
        end = found.get(label)
        if end is not None and end >= start:
            spans.append((label, start, end))
            start = end
    return tuple(spans)


def median_boot(results: Sequence[BootResult]) -> BootResult | None:
    reached = sorted((r for r in results if r.time_to_root is not None), key=lambda r: r.time_to_root or 0.0)
    return reached[(len(reached) - 1) // 2] if reached else None


def draw(rows: Sequence[Row], output: Path, *, title: str) -> Path:
    """The rows as horizontal bars, one colour per phase, into the SVG OUTPUT."""
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    labels = list(dict.fromkeys(phase for row in rows for phase, _, _ in row.phases))
    colours = {label: plt.get_cmap("tab10")(index % 10) for index, label in enumerate(labels)}
    figure, axes = plt.subplots(figsize=(11, 1.0 + 0.6 * len(rows)))
    for position, row in enumerate(reversed(rows)):
        for label, start, end in row.phases:
            axes.barh(position, end - start, left=start, height=0.6, color=colours[label], edgecolor="white", linewidth=0.5)
            if end - start >= 0.8:
                axes.text((start + end) / 2, position, f"{end - start:.1f}", ha="center", va="center", fontsize=7, color="white")
    axes.set_yticks(range(len(rows)), [row.label for row in reversed(rows)])
    axes.set_xlabel("guest uptime (s, CLOCK_BOOTTIME)")
    axes.set_title(title, fontsize=10)
    axes.legend(
        handles=[Patch(color=colours[label], label=label) for label in labels],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.45 if len(rows) <= 2 else -0.25),
        ncol=3,
        fontsize=7,
        frameon=False,
    )
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    # No date in the file: the same boots draw the same SVG.
    figure.savefig(output, format="svg", metadata={"Date": None})
    plt.close(figure)
    return output
