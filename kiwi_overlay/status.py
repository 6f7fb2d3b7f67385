"""`kiwi-overlay status`: the running overlay root: its layers, the read device, the server, the fill level."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from kiwi_overlay.config.plan import RUN_DIR
from kiwi_overlay.layout import Layout


def _mounts() -> dict[str, tuple[str, str, str]]:
    """mount point -> (source, type, options); the last mount on a point wins (it is the visible one)."""
    import psutil

    return {part.mountpoint: (part.device, part.fstype, part.opts) for part in psutil.disk_partitions(all=True)}


def _fill(directory: Path) -> dict[str, Any] | None:
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    size = stat.f_blocks * stat.f_frsize
    used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    usable = used + stat.f_bavail * stat.f_frsize
    return {"size": size, "used": used, "percent": round(100.0 * used / usable, 1) if usable else 0.0}


def _nbd_records(state_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(state_dir.glob("nbd*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = record.get("pid")
        record["supervisor_running"] = isinstance(pid, int) and Path(f"/proc/{pid}").exists()
        records.append(record)
    return records


def collect(*, run_dir: Path = RUN_DIR, state_dir: Path | None = None) -> dict[str, Any]:
    """Everything `status` prints, as JSON-ready data; "overlay": False when RUN_DIR holds no overlay root."""
    from kiwi_overlay.nbd import STATE_DIR

    layout = Layout(run_dir, Path("/"))
    mounts = _mounts()
    layers = {
        name: {"path": str(path), "source": mounts[str(path)][0], "type": mounts[str(path)][1], "options": mounts[str(path)][2]}
        for name, path in (("tmpfs", layout.run_dir), ("read", layout.rootfsbase), ("write", layout.overlayfs))
        if str(path) in mounts
    }
    root = mounts.get("/")
    if "read" not in layers:
        return {"overlay": False, "run_dir": str(run_dir)}
    write_on = "write" if "write" in layers else "tmpfs"
    return {
        "overlay": True,
        "root": {"type": root[1], "options": root[2]} if root else None,
        "layers": layers,
        "read_device": layers["read"]["source"],
        "write_layer": {"on": layers[write_on]["source"], "type": layers[write_on]["type"], "fill": _fill(layout.overlayfs)},
        "nbd": _nbd_records(state_dir or STATE_DIR),
    }


def _size(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"


def describe(status: dict[str, Any]) -> str:
    if not status["overlay"]:
        return f"no overlay root: nothing is mounted at {status['run_dir']}/rootfsbase"
    lines = []
    if status["root"]:
        lines.append(f"root:        {status['root']['type']} ({status['root']['options']})")
    for name, layer in status["layers"].items():
        lines.append(f"{name + ' layer:':<13}{layer['path']} <- {layer['source']} [{layer['type']}; {layer['options']}]")
    write = status["write_layer"]
    if write["fill"]:
        fill = write["fill"]
        lines.append(
            f"write fill:  {fill['percent']:g} % ({_size(fill['used'])} of {_size(fill['size'])} on {write['type']} {write['on']})"
        )
    for record in status["nbd"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["since"])) if record.get("since") else "?"
        supervisor = f"pid {record.get('pid')}" + ("" if record["supervisor_running"] else ", not running")
        lines.append(f"device:      {record.get('device')} (NBD, supervisor {supervisor})")
        lines.append(f"server:      {record.get('server', record.get('uri'))}, of {', '.join(record.get('servers', [record.get('uri')]))}")
        lines.append(f"connection:  {record.get('connection', 'unknown')} since {since}")
    if not status["nbd"]:
        lines.append(f"device:      {status['read_device']}")
    return "\n".join(lines)
