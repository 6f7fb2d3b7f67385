"""What answered an AoE probe, in one line: for the boot's errors and `kiwi-overlay aoe discover`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kiwi_overlay.aoe.protocol import AoeTarget, parse_target
from kiwi_overlay.errors import OptionError

# A spoofer on the segment can answer for any number of targets: a message lists a few and counts the rest.
_LISTED_ANSWERS = 8


def human_size(size: int | None) -> str:
    """1.5G, 48M, 512B (binary units, as lsblk prints); "-" when unknown."""
    if size is None:
        return "-"
    units = "BKMGTPE"
    exponent = 0
    while exponent < len(units) - 1 and size >= 1024 ** (exponent + 1):
        exponent += 1
    return f"{size / 1024**exponent:.1f}".removesuffix(".0") + units[exponent]


def describe_answers(targets: Sequence[AoeTarget]) -> str:
    """e0.1 on eth0 (52:54:00:12:34:56), ... -- or "none"; past a few, how many more."""
    listed = ", ".join(f"{target.name} on {target.interface} ({target.mac})" for target in targets[:_LISTED_ANSWERS]) or "none"
    return listed + (f", and {len(targets) - _LISTED_ANSWERS} more" if len(targets) > _LISTED_ANSWERS else "")


def several_targets_error(interface: str, targets: Sequence[AoeTarget]) -> OptionError:
    names = sorted({target.name for target in targets}, key=parse_target)
    return OptionError(
        "root",
        f"overlay:aoe={interface}",
        f"{len(names)} AoE targets answer on {interface}: {describe_answers(targets)}; name one",
        f"root=overlay:aoe={names[0]}",
    )


def not_found_message(target: str | None, *, timeout: float, tried: Sequence[str], answers: Sequence[AoeTarget]) -> str:
    """The wire probe gave up: what was asked, where, and what answered instead (a typo shows)."""
    where = ", ".join(tried) or "no Ethernet link with carrier"
    seconds = f"{round(timeout, 1):g} s"
    if target is None:
        return f"no AoE target answered on {where} within {seconds}"
    return f"AoE target {target} did not answer within {seconds} on {where}; targets that answered: {describe_answers(answers)}"


def no_device_message(device: Path, *, timeout: float, interfaces: Sequence[str], answers: Sequence[AoeTarget]) -> str:
    """The target answered our probe but the kernel driver never made its device."""
    return (
        f"{device} did not appear within {timeout:g} s (aoe driver on {', '.join(interfaces)}); "
        f"targets that answered the wire probe: {describe_answers(answers)}"
    )
