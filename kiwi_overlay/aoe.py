"""ATA over Ethernet: target discovery on the wire, and attach through the kernel's aoe driver.

Discovery speaks AoE v1 itself over AF_PACKET raw sockets (Query Config broadcast, then an
ATA IDENTIFY per answer for the size), so the boot knows which targets answer where before it
loads the driver, and a timeout can say what did answer. The attach loads `aoe` restricted to
the boot interfaces, triggers the driver's discovery with backoff, waits for the block device
on kernel uevents (pyudev, no udevd needed), then lifts the restriction (see unrestrict_driver).

Frame layout (after the 14-byte Ethernet header): ver/flags u8, error u8, shelf be16, slot u8,
command u8, tag be32; Config: buffers be16, firmware be16, sectors-per-command u8,
aoever<<4|ccmd u8, string length be16; ATA: aflags u8, feature/error u8, sector count u8,
command/status u8, lba 6 bytes (little-endian), 2 reserved, data.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from kiwi_overlay import log
from kiwi_overlay.errors import KiwiOverlayError, OptionError

if TYPE_CHECKING:
    from kiwi_overlay.config.plan import AoeRoot

ETHERTYPE_AOE = 0x88A2
BROADCAST_MAC = b"\xff" * 6
BROADCAST_SHELF = 0xFFFF
BROADCAST_SLOT = 0xFF
VERSION_1 = 0x10
FLAG_RESPONSE = 0x08
FLAG_ERROR = 0x04
COMMAND_ATA = 0
COMMAND_CONFIG = 1
ATA_IDENTIFY = 0xEC
ATA_STATUS_ERROR = 0x01
ETHERD = Path("/dev/etherd")
SYS_MODULE = Path("/sys/module/aoe")

_ETHERNET = struct.Struct("!6s6sH")
_HEADER = struct.Struct("!BBHBBI")
_CONFIG = struct.Struct("!HHBBH")
_ATA = struct.Struct("!BBBB6s2x")
_CONFIG_LENGTH = _ETHERNET.size + _HEADER.size + _CONFIG.size
_IDENTIFY_LENGTH = _ETHERNET.size + _HEADER.size + _ATA.size + 512
_MIN_FRAME = 60  # Ethernet minimum without the FCS
_PACKET_OUTGOING = 4  # sll_pkttype of frames this host sent
# After the wanted target answered: listen this much longer, so every interface that carries it
# (and its IDENTIFY answer) is heard.
_WANT_GRACE = 0.05
# A spoofer on the segment can answer for any number of targets: a discovery keeps (and sends an
# IDENTIFY to) this many, plus the one the boot asked for; a message lists a few and counts the rest.
MAX_ANSWERS = 64
_LISTED_ANSWERS = 8
# Frames read from one socket before the loop looks at the clock and the other sockets again.
_DRAIN_BATCH = 256


@dataclass(frozen=True)
class AoeTarget:
    shelf: int
    slot: int
    interface: str
    mac: str
    firmware: int
    buffers: int
    sectors: int | None  # from ATA IDENTIFY; None when it did not answer in time

    @property
    def name(self) -> str:
        return f"e{self.shelf}.{self.slot}"

    @property
    def size_bytes(self) -> int | None:
        return None if self.sectors is None else self.sectors * 512


def parse_target(name: str) -> tuple[int, int]:
    """(shelf, slot) of "e0.1"; config/roots.py has already checked the form."""
    shelf, _, slot = name.removeprefix("e").partition(".")
    return int(shelf), int(slot)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in mac)


def human_size(size: int | None) -> str:
    """1.5G, 48M, 512B (binary units, as lsblk prints); "-" when unknown."""
    if size is None:
        return "-"
    units = "BKMGTPE"
    exponent = 0
    while exponent < len(units) - 1 and size >= 1024 ** (exponent + 1):
        exponent += 1
    return f"{size / 1024**exponent:.1f}".removesuffix(".0") + units[exponent]


# Frames ---------------------------------------------------------------------------------------


def _pad(frame: bytes) -> bytes:
    return frame.ljust(_MIN_FRAME, b"\0")


def query_config_frame(source: bytes, *, tag: int) -> bytes:
    """A broadcast Query Config (read): every target on the segment answers with its config."""
    return _pad(
        _ETHERNET.pack(BROADCAST_MAC, source, ETHERTYPE_AOE)
        + _HEADER.pack(VERSION_1, 0, BROADCAST_SHELF, BROADCAST_SLOT, COMMAND_CONFIG, tag)
        + _CONFIG.pack(0, 0, 0, 0, 0)
    )


def identify_frame(source: bytes, destination: bytes, *, shelf: int, slot: int, tag: int) -> bytes:
    """ATA IDENTIFY DEVICE for one sector of answer, sent to the target's MAC."""
    return _pad(
        _ETHERNET.pack(destination, source, ETHERTYPE_AOE)
        + _HEADER.pack(VERSION_1, 0, shelf, slot, COMMAND_ATA, tag)
        + _ATA.pack(0, 0, 1, ATA_IDENTIFY, bytes(6))
    )


@dataclass(frozen=True)
class _Response:
    mac: bytes
    shelf: int
    slot: int
    command: int
    tag: int
    body: bytes  # after the AoE header


def _response(frame: bytes) -> _Response | None:
    """The AoE response in FRAME, or None for anything that is not a clean v1 answer from a target."""
    if len(frame) < _ETHERNET.size + _HEADER.size:
        return None
    _, source, ethertype = _ETHERNET.unpack_from(frame)
    ver_flags, _, shelf, slot, command, tag = _HEADER.unpack_from(frame, _ETHERNET.size)
    if (
        ethertype != ETHERTYPE_AOE
        or ver_flags & 0xF0 != VERSION_1
        or not ver_flags & FLAG_RESPONSE
        or ver_flags & FLAG_ERROR
        or source[0] & 0x01  # a broadcast or multicast source is no target
        or shelf == BROADCAST_SHELF
        or slot == BROADCAST_SLOT
    ):
        return None
    return _Response(source, shelf, slot, command, tag, frame[_ETHERNET.size + _HEADER.size :])


def parse_config_response(frame: bytes, *, tag: int, interface: str) -> AoeTarget | None:
    """The target answering our Query Config (TAG) in FRAME, or None if FRAME is anything else."""
    response = _response(frame)
    if response is None or response.command != COMMAND_CONFIG or response.tag != tag or len(frame) < _CONFIG_LENGTH:
        return None
    buffers, firmware, _, _, _ = _CONFIG.unpack_from(response.body)
    return AoeTarget(response.shelf, response.slot, interface, format_mac(response.mac), firmware, buffers, None)


def parse_identify_response(frame: bytes, *, tag: int) -> int | None:
    """The sector count in FRAME's answer to our IDENTIFY (TAG): LBA48 words 100-103, else LBA28 words 60-61."""
    response = _response(frame)
    if response is None or response.command != COMMAND_ATA or response.tag != tag or len(frame) < _IDENTIFY_LENGTH:
        return None
    _, _, _, status, _ = _ATA.unpack_from(response.body)
    if status & ATA_STATUS_ERROR:
        return None
    words = struct.unpack_from("<256H", response.body, _ATA.size)
    lba48 = bool(words[83] & 0x0400)
    sectors = words[100] | words[101] << 16 | words[102] << 32 | words[103] << 48 if lba48 else words[60] | words[61] << 16
    return sectors or None


# Discovery on the wire ------------------------------------------------------------------------


def _open(interface: str) -> socket.socket:
    # Protocol 0 at creation receives nothing; the bind subscribes to AoE on this interface only.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((interface, ETHERTYPE_AOE))
    except OSError as error:
        sock.close()
        if error.errno == errno.ENODEV:
            raise KiwiOverlayError(f"network interface {interface} not found") from None
        raise KiwiOverlayError(f"AoE discovery on {interface}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def _send(sock: socket.socket, interface: str, frame: bytes) -> None:
    try:
        sock.send(frame)
    except OSError as error:
        if error.errno == errno.ENETDOWN:
            raise KiwiOverlayError(f"network interface {interface} is down") from None
        raise KiwiOverlayError(f"AoE discovery on {interface}: {error.strerror}") from None


class _Probe:
    """One discovery: a raw socket per interface, the answers so far, the IDENTIFY requests in flight."""

    def __init__(self, interfaces: Iterable[str]) -> None:
        self.query_tag = int.from_bytes(os.urandom(4)) >> 1
        self.sockets: dict[int, tuple[str, socket.socket, bytes]] = {}
        self.found: dict[tuple[int, int, str, str], AoeTarget] = {}
        self.identify_tags: dict[int, tuple[int, int, str, str]] = {}
        try:
            for interface in dict.fromkeys(interfaces):
                sock = _open(interface)
                self.sockets[sock.fileno()] = (interface, sock, sock.getsockname()[4])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for _, sock, _ in self.sockets.values():
            sock.close()

    def query(self) -> None:
        for interface, sock, mac in self.sockets.values():
            _send(sock, interface, query_config_frame(mac, tag=self.query_tag))

    def receive(self, fileno: int, *, want: tuple[int, int] | None, deadline: float) -> None:
        interface, sock, mac = self.sockets[fileno]
        for frame, address in _drain(sock, deadline=deadline):
            if address[0] != interface or address[2] == _PACKET_OUTGOING:
                continue
            target = parse_config_response(frame, tag=self.query_tag, interface=interface)
            if target is None:
                self._record_size(frame)
                continue
            key = (target.shelf, target.slot, interface, target.mac)
            if key in self.found or (len(self.found) >= MAX_ANSWERS and (target.shelf, target.slot) != want):
                continue
            self.found[key] = target
            tag = (self.query_tag + 1 + len(self.identify_tags)) & 0xFFFFFFFF
            self.identify_tags[tag] = key
            peer = bytes.fromhex(target.mac.replace(":", ""))
            _send(sock, interface, identify_frame(mac, peer, shelf=target.shelf, slot=target.slot, tag=tag))

    def _record_size(self, frame: bytes) -> None:
        response = _response(frame)
        key = self.identify_tags.get(response.tag) if response else None
        if response is None or key is None or (response.shelf, response.slot, format_mac(response.mac)) != (key[0], key[1], key[3]):
            return
        sectors = parse_identify_response(frame, tag=response.tag)
        if sectors is not None:
            self.found[key] = replace(self.found[key], sectors=sectors)

    def answered(self, want: tuple[int, int]) -> bool:
        return any(key[:2] == want for key in self.found)


def discover(interfaces: Sequence[str], *, timeout: float, want: tuple[int, int] | None = None) -> list[AoeTarget]:
    """The AoE targets that answer a broadcast Query Config on INTERFACES within TIMEOUT seconds.

    The query is repeated with backoff (a frame may be lost, a target may start late) and every
    answer gets an ATA IDENTIFY for its size. With WANT (shelf, slot), returns as soon as that
    target answered (plus a short grace). One entry per (shelf, slot, interface, MAC), sorted.
    """
    if not interfaces:
        return []
    if os.geteuid() != 0:
        raise KiwiOverlayError("AoE discovery needs root (raw Ethernet sockets)")
    started = time.monotonic()
    deadline = started + timeout
    probe = _Probe(interfaces)
    try:
        next_query, interval = started, 0.25
        while True:
            now = time.monotonic()
            if now >= next_query:
                probe.query()
                next_query, interval = now + interval, min(interval * 2, 2.0)
            if want is not None and probe.answered(want):
                deadline = min(deadline, now + _WANT_GRACE)
            if now >= deadline:
                break
            readable, _, _ = select.select(list(probe.sockets), [], [], min(next_query, deadline) - now)
            for fileno in readable:
                probe.receive(fileno, want=want, deadline=deadline)
    finally:
        probe.close()
    log.debug(f"AoE discovery on {', '.join(interfaces)}: {len(probe.found)} answer(s) in {time.monotonic() - started:.3f} s")
    return sorted(probe.found.values(), key=_order)


def _drain(sock: socket.socket, *, deadline: float) -> Iterable[tuple[bytes, tuple[str, int, int, int, bytes]]]:
    """What SOCK has queued, up to a batch and never past DEADLINE: a sender that never pauses cannot keep us here."""
    for _ in range(_DRAIN_BATCH):
        if time.monotonic() >= deadline:
            return
        try:
            yield sock.recvfrom(2048)
        except BlockingIOError:
            return


# Messages -------------------------------------------------------------------------------------


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


# The boot: find the target, then attach it through the driver ---------------------------------


@dataclass(frozen=True)
class Located:
    target: str  # "e0.1"
    interfaces: tuple[str, ...]  # the interfaces it answered on
    answers: tuple[AoeTarget, ...]  # everything that answered the last probe


def _link_state(names: Iterable[str], ready: Sequence[str]) -> list[str]:
    """NAMES for a message, each marked when it had no carrier or did not exist."""
    return [name if name in ready else f"{name} ({'no carrier' if Path('/sys/class/net', name).exists() else 'missing'})" for name in names]


def locate(root: AoeRoot, *, deadline: float) -> Located:
    """Bring the AoE links up and probe the wire until ROOT's target answers or DEADLINE (monotonic) passes.

    Probes and carrier waits alternate in growing windows, so a link that gets carrier late, or an
    interface whose driver is still loading, is waited for rather than refused.
    """
    from kiwi_overlay.net.links import links_up

    want = parse_target(root.target) if root.target else None
    named = list(dict.fromkeys(([root.interface] if root.interface else []) + list(root.interfaces)))  # empty: every Ethernet link
    started = time.monotonic()
    window = 0.5
    heard: dict[AoeTarget, None] = {}
    probe: list[str] = []
    tried = named
    while (remaining := deadline - time.monotonic()) > 0:
        present = [name for name in named if Path("/sys/class/net", name).exists()]
        if named and not present:
            time.sleep(min(window, remaining))  # their drivers may still be loading
            ready: tuple[str, ...] = ()
        else:
            # Wait for carrier only while there is nothing to probe; later rounds pick up links that got it since.
            ready = links_up(present or None, timeout=0.0 if probe else min(window, remaining))
        tried = _link_state(named or ready, ready)
        probe = [name for name in ([root.interface] if root.interface else ready) if name in ready]
        if probe:
            # At least a short probe even when carrier came at the deadline: the error should say what answers.
            answers = discover(probe, timeout=max(min(window, deadline - time.monotonic()), 0.1), want=want)
            heard.update(dict.fromkeys(answers[: max(MAX_ANSWERS - len(heard), 0)]))
            matching = [target for target in answers if want is None or (target.shelf, target.slot) == want]
            if len({target.name for target in matching}) > 1:
                raise several_targets_error(root.interface or "", matching)
            if matching:
                return Located(matching[0].name, tuple(dict.fromkeys(t.interface for t in matching)), tuple(sorted(heard, key=_order)))
        window = min(window * 2, 4.0)
    raise KiwiOverlayError(not_found_message(root.target, timeout=deadline - started, tried=tried, answers=sorted(heard, key=_order)))


def _order(target: AoeTarget) -> tuple[int, int, str, str]:
    return (target.shelf, target.slot, target.interface, target.mac)


def _write(path: Path, text: str) -> None:
    # One write(2): the driver acts on each write, and a retried partial write would act twice.
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as error:
        raise KiwiOverlayError(f"{path}: {error.strerror}") from None


def load_driver(interfaces: Sequence[str]) -> Callable[[], object]:
    """Load `aoe` restricted to INTERFACES (or restrict the loaded one); returns the undo."""
    from kiwi_overlay.run import run

    names = " ".join(interfaces)
    if SYS_MODULE.is_dir():
        previous = (SYS_MODULE / "parameters" / "aoe_iflist").read_text().strip()
        log.debug(f"aoe already loaded (interfaces {previous!r}): restricting to {names!r}")
        _write(ETHERD / "interfaces", names)
        return partial(_write, ETHERD / "interfaces", previous)
    # Quoted for the kernel's parameter parser: the list is space separated.
    run(["modprobe", "aoe", f'aoe_iflist="{names}"'])
    return partial(run, ["modprobe", "-r", "aoe"], check=False)


def unrestrict_driver() -> None:
    """Let the driver use every interface again, now that the target is attached.

    The driver matches each received frame against its list by interface name, and udev in the
    real root may rename the boot interface (Debian 13: eth0 to ens2): with the list kept, every
    reply to the root is dropped and its I/O stalls. An empty write empties the list (the sysfs
    parameter cannot: sysfs ignores empty writes, and a newline would be a list that matches nothing).
    """
    _write(ETHERD / "interfaces", "")
    log.debug("aoe driver no longer restricted to the boot interfaces")


def discover_and_wait(device: Path, *, deadline: float) -> bool:
    """Trigger the driver's discovery with backoff until DEVICE is a block device or DEADLINE passes.

    Waits on kernel uevents (no udevd needed); devtmpfs makes the node. Local until the shared
    devices.wait_for_device can take a discovery callback.
    """
    import pyudev

    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
    monitor.filter_by("block")
    monitor.start()
    next_discover, interval = time.monotonic(), 0.5
    while True:
        try:
            if stat.S_ISBLK(device.stat().st_mode):
                return True
        except FileNotFoundError:
            pass
        now = time.monotonic()
        if now >= deadline:
            return False
        if now >= next_discover:
            _write(ETHERD / "discover", "1")
            next_discover, interval = now + interval, min(interval * 2, 8.0)
        monitor.poll(timeout=min(next_discover, deadline) - now)


def attach_root(root: AoeRoot, *, timeout: float) -> Path:
    """The block device of ROOT's target (/dev/etherd/eS.S), attached through the aoe driver within TIMEOUT."""
    started = time.monotonic()
    deadline = started + timeout
    located = locate(root, deadline=deadline)
    interfaces = root.interfaces or located.interfaces
    device = ETHERD / located.target
    log.info(f"AoE target {located.target} answers on {', '.join(located.interfaces)}; aoe driver on {', '.join(interfaces)}")
    undo = load_driver(interfaces)
    try:
        if not discover_and_wait(device, deadline=deadline):
            raise KiwiOverlayError(no_device_message(device, timeout=timeout, interfaces=interfaces, answers=located.answers))
    except BaseException:
        undo()
        raise
    unrestrict_driver()
    log.debug(f"{device} ready after {time.monotonic() - started:.2f} s")
    return device


def forget(device: Path) -> None:
    """Make the driver drop DEVICE (/dev/etherd/eS.S): nothing of the boot uses the target any more."""
    _write(ETHERD / "flush", device.name)
    log.debug(f"aoe driver flushed {device.name}")
