"""NBD: the client protocol, the kernel attach, and the supervisor that keeps the device connected.

attach_root() forks the `@kiwi-overlay-nbd` supervisor, which negotiates (with retries), attaches
the kernel device and stays to reconnect; it returns once the device is up. Each attached device
is recorded as STATE_DIR/nbdN.json so that detach_all() (the shutdown hook) finds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from pathlib import Path

from kiwi_overlay.config.plan import WAIT_FOREVER, LostPolicy, NbdRoot
from kiwi_overlay.nbd.protocol import NbdError

STATE_DIR = Path("/run/kiwi-overlay/nbd")
# Where the shutdown hook finds it: dracut's /shutdown moves the old root's /run to /oldsys/run first.
SHUTDOWN_STATE_DIR = Path("/oldsys") / STATE_DIR.relative_to("/")
# Beyond the negotiation timeout: loading the module and the kernel attach itself.
ATTACH_MARGIN = 30.0

__all__ = ["STATE_DIR", "NbdError", "attach_root", "detach", "detach_all", "root_from_uri"]


def root_from_uri(
    uri: str,
    *,
    connections: int = 1,
    io_timeout: float | None = None,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    lost: LostPolicy = WAIT_FOREVER,
) -> NbdRoot:
    """An NbdRoot for `nbd://HOST[:PORT]/EXPORT`, `nbds://...` or `HOST:EXPORT`; several servers separated by commas."""
    from kiwi_overlay.config.roots import parse_nbd_servers

    servers, tls = parse_nbd_servers(uri)
    return NbdRoot(
        servers=servers,
        tls=tls or any((tls_ca, tls_cert, tls_key)),
        connections=connections,
        io_timeout=io_timeout,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        lost=lost,
    )


def attach_root(
    root: NbdRoot,
    *,
    timeout: float,
    device: Path | None = None,
    state_dir: Path | None = None,
    kmsg: bool = True,
    ioctl: bool = False,
    verity: str | None = None,
) -> Path:
    """Attach ROOT's export as a block device (the kernel's choice, or DEVICE) and supervise it; returns /dev/nbdN.

    Waits up to TIMEOUT seconds for the server. Raises NbdError (one line); nothing stays attached then.
    VERITY: the root hash of the export's dm-verity layout; a reconnect takes only a server whose image has it.
    """
    from kiwi_overlay import log
    from kiwi_overlay.nbd import kernel, supervisor

    request = supervisor.Request(
        root=root,
        timeout=timeout,
        device=kernel.device_index(device) if device is not None else None,
        state_dir=state_dir or STATE_DIR,
        log_to_kmsg=kmsg,
        ioctl=ioctl,
        verity=verity,
    )
    log.debug(f"starting the NBD supervisor for {root.uri}")
    pid, report = supervisor.start(request)
    with open(report, encoding="utf-8", errors="replace") as lines:
        try:
            ready, _, _ = select.select([lines], [], [], timeout + ATTACH_MARGIN)
            line = lines.readline().strip() if ready else ""
        except BaseException:
            _end(pid)
            raise
    status, _, detail = line.partition(" ")
    if status == "ok":
        return Path(detail)
    exit_code = _end(pid)
    if status == "error":
        raise NbdError(detail)
    if ready:
        raise NbdError(f"{root.uri}: the NBD supervisor exited without a result (status {exit_code})")
    raise NbdError(f"{root.uri}: the NBD supervisor did not report within {timeout + ATTACH_MARGIN:g} s")


def _end(pid: int) -> int:
    """Kill the supervisor PID that did not attach, and reap it; its exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _records(state_dir: Path) -> list[dict[str, object]]:
    records = []
    for path in sorted(state_dir.glob("nbd*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return records


def _is_supervisor(pid: int) -> bool:
    from kiwi_overlay.nbd.supervisor import PROCESS_NAME

    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == PROCESS_NAME.encode()
    except OSError:
        return False


def _stop_supervisor(pid: int) -> None:
    if not _is_supervisor(pid):
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(500):
        if not _is_supervisor(pid):
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)


def detach(device: Path, *, state_dir: Path | None = None) -> None:
    """Disconnect DEVICE (/dev/nbdN) and stop its supervisor."""
    from kiwi_overlay.nbd import kernel

    state_dir = state_dir or STATE_DIR
    index = kernel.device_index(device)
    record_path = state_dir / f"nbd{index}.json"
    record = next((r for r in _records(state_dir) if r.get("index") == index), None)
    pid = record.get("pid") if record else None
    if isinstance(pid, int) and record and record.get("mode") == "ioctl":
        # Its NBD_DO_IT is the connection: on SIGTERM it has the kernel send NBD_CMD_DISC, then ends.
        _stop_supervisor(pid)
    if kernel.connected(index):
        # Netlink: the kernel sends no LINK_DEAD for a disconnect it was asked for, and the
        # supervisor still carries the TLS traffic of NBD_CMD_DISC: it goes after.
        _disconnect(device, index)
    if isinstance(pid, int):
        _stop_supervisor(pid)
    record_path.unlink(missing_ok=True)


def _disconnect(device: Path, index: int) -> None:
    from kiwi_overlay.nbd import kernel

    try:
        link = kernel.Netlink()
    except kernel.Unsupported:
        try:
            kernel.ioctl_disconnect(device)
        except OSError as error:
            raise NbdError(f"{device}: cannot disconnect ({error.strerror})") from None
        return
    try:
        kernel.disconnect(link, index)
    finally:
        link.close()


def detach_all(*, state_dir: Path | None = None) -> None:
    """Detach every device attach_root() recorded (the shutdown hook); reports the first failure after trying all.

    Without STATE_DIR: the records in STATE_DIR, or in SHUTDOWN_STATE_DIR inside the shutdown initramfs.
    """
    state_dirs = [state_dir] if state_dir else [STATE_DIR, SHUTDOWN_STATE_DIR]
    failures = []
    for directory in state_dirs:
        for record in _records(directory):
            try:
                detach(Path(str(record["device"])), state_dir=directory)
            except (NbdError, KeyError) as error:
                failures.append(str(error))
    if failures:
        raise NbdError("; ".join(failures))
