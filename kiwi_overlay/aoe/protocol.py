"""AoE v1 frames: the Query Config broadcast and ATA IDENTIFY built, the targets' answers parsed (no I/O).

Frame layout (after the 14-byte Ethernet header): ver/flags u8, error u8, shelf be16, slot u8,
command u8, tag be32; Config: buffers be16, firmware be16, sectors-per-command u8,
aoever<<4|ccmd u8, string length be16; ATA: aflags u8, feature/error u8, sector count u8,
command/status u8, lba 6 bytes (little-endian), 2 reserved, data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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

_ETHERNET = struct.Struct("!6s6sH")
_HEADER = struct.Struct("!BBHBBI")
_CONFIG = struct.Struct("!HHBBH")
_ATA = struct.Struct("!BBBB6s2x")
_CONFIG_LENGTH = _ETHERNET.size + _HEADER.size + _CONFIG.size
_IDENTIFY_LENGTH = _ETHERNET.size + _HEADER.size + _ATA.size + 512
_MIN_FRAME = 60  # Ethernet minimum without the FCS


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
class Response:
    mac: bytes
    shelf: int
    slot: int
    command: int
    tag: int
    body: bytes  # after the AoE header


def parse_response(frame: bytes) -> Response | None:
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
    return Response(source, shelf, slot, command, tag, frame[_ETHERNET.size + _HEADER.size :])


def parse_config_response(frame: bytes, *, tag: int, interface: str) -> AoeTarget | None:
    """The target answering our Query Config (TAG) in FRAME, or None if FRAME is anything else."""
    response = parse_response(frame)
    if response is None or response.command != COMMAND_CONFIG or response.tag != tag or len(frame) < _CONFIG_LENGTH:
        return None
    buffers, firmware, _, _, _ = _CONFIG.unpack_from(response.body)
    return AoeTarget(response.shelf, response.slot, interface, format_mac(response.mac), firmware, buffers, None)


def parse_identify_response(frame: bytes, *, tag: int) -> int | None:
    """The sector count in FRAME's answer to our IDENTIFY (TAG): LBA48 words 100-103, else LBA28 words 60-61."""
    response = parse_response(frame)
    if response is None or response.command != COMMAND_ATA or response.tag != tag or len(frame) < _IDENTIFY_LENGTH:
        return None
    _, _, _, status, _ = _ATA.unpack_from(response.body)
    if status & ATA_STATUS_ERROR:
        return None
    words = struct.unpack_from("<256H", response.body, _ATA.size)
    lba48 = bool(words[83] & 0x0400)
    sectors = words[100] | words[101] << 16 | words[102] << 32 | words[103] << 48 if lba48 else words[60] | words[61] << 16
    return sectors or None
