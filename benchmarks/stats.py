"""Figures for the tables: medians, percentiles, ratios, and the machine they were measured on."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (0.99 = p99) of VALUES."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def seconds(value: float | None, digits: int = 1) -> str:
    return "n/m" if value is None else f"{value:.{digits}f} s"


def millis(value: float | None) -> str:
    return "n/m" if value is None else f"{value * 1000:.1f} ms"


def ratio(value: float | None, reference: float | None) -> str:
    """VALUE / REFERENCE as `1.05×`; below 1 is faster (times) or smaller (sizes)."""
    if value is None or not reference:
        return "n/m"
    return f"{value / reference:.2f}×"


def spread(values: Sequence[float], unit: str = "s", digits: int = 1) -> str:
    """`min-max unit, n runs` for a table cell."""
    if not values:
        return "0 runs"
    runs = f"{len(values)} run{'s' if len(values) > 1 else ''}"
    return f"{min(values):.{digits}f}-{max(values):.{digits}f} {unit}, {runs}"


def _command(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    return (result.stdout or result.stderr).splitlines()[0].strip() if (result.stdout or result.stderr) else "?"


def machine() -> dict[str, str]:
    """Where and when: nproc, CPU model, kernel, load average, tool versions, the UTC time."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor() or "?",
    )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "load average": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "python": platform.python_version(),
        "qemu": _command(["qemu-system-x86_64", "--version"]),
        "nbd-server": _command(["nbd-server", "-V"]),
    }
