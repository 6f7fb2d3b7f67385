"""3. NBD negotiation on loopback against nbd-server: kiwi-overlay vs nbd-client.

nbd-client on a host without the nbd module negotiates (fixed newstyle, NBD_OPT_GO) and then
fails to find the nbd netlink family: timed to that point, as a whole process. kiwi-overlay as a
whole process (`kiwi-overlay nbd info`: interpreter, imports, GO, NBD_CMD_DISC) and in-process
(connect.open_export + disconnect on a warm interpreter). nbd-client is not run on a host that has
the nbd module: there it would attach a device.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.stats import median, millis, percentile, ratio
from kiwi_overlay.nbd import connect, protocol, root_from_uri
from tests.boot.servers import NbdServer

KIWI_OVERLAY = Path(sys.executable).parent / "kiwi-overlay"


@dataclass(frozen=True)
class Timings:
    label: str
    values: tuple[float, ...]
    note: str = ""


def _process(argv: list[str], *, expect: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    elapsed = time.perf_counter() - started
    if expect not in result.stdout + result.stderr:
        raise RuntimeError(f"{argv[0]}: {expect!r} not in its output: {(result.stdout + result.stderr).strip()}")
    return elapsed


def in_process(uri: str) -> float:
    """One negotiation (connect, greeting, GO) and NBD_CMD_DISC in this process."""
    root = root_from_uri(uri)
    started = time.perf_counter()
    sock, _info = connect.open_export(root, deadline=time.monotonic() + 10, context=None)
    try:
        protocol.disconnect(protocol.Wire(sock, peer=root.address, deadline=time.monotonic() + 10))
    finally:
        sock.close()
    return time.perf_counter() - started


def measure(*, runs: int, image: Path) -> list[Timings]:
    with NbdServer(image) as server:
        uri = f"nbd://127.0.0.1:{server.port}/{server.name}"
        measured: list[Timings] = []
        if Path("/sys/module/nbd").exists():
            measured.append(Timings("nbd-client (process)", (), "not measured: this host has the nbd module"))
        else:
            argv = ["nbd-client", "127.0.0.1", str(server.port), "-N", server.name, "/dev/nbd0"]
            timings = tuple(_process(argv, expect="Negotiation:") for _ in range(runs))
            measured.append(Timings("nbd-client (process, to its netlink failure)", timings))
        argv = [str(KIWI_OVERLAY), "nbd", "info", uri]
        measured.append(Timings("kiwi-overlay nbd info (process)", tuple(_process(argv, expect="size:") for _ in range(runs))))
        python = [sys.executable, "-c", "print('size:')"]
        timings = tuple(_process(python, expect="size:") for _ in range(runs))
        measured.append(Timings("python3 -c '' (the bare interpreter, for scale)", timings))
        in_process(uri)  # warm: imports and the first connection's setup are not the figure
        measured.append(Timings("kiwi-overlay connect.open_export (in-process)", tuple(in_process(uri) for _ in range(runs))))
    return measured


def table(measured: list[Timings]) -> str:
    reference = median(measured[0].values)
    rows = ["| client | median | p90 | min | runs | / nbd-client |", "|---|---|---|---|---|---|"]
    for timing in measured:
        if not timing.values:
            rows.append(f"| {timing.label} | {timing.note} | | | 0 | |")
            continue
        values = timing.values
        rows.append(
            f"| {timing.label} | **{millis(median(values))}** | {millis(percentile(values, 0.9))} | {millis(min(values))} "
            f"| {len(values)} | {ratio(median(values), reference)} |"
        )
    return "\n".join(rows)
