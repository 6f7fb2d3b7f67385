"""A hostile AoE target for the tests: answers every Query Config on IFACE with malformed responses.

Usage (inside the target's network namespace): python aoe_responder.py IFACE
Each malformed answer claims its own shelf (10 and up), so one that a parser accepts shows up
as an extra target. One well-formed answer (e7.7) proves the frames reach the client at all.
Prints "ready" once bound and "answered" after each query; runs until killed.
"""

import socket
import struct
import sys

ETHERTYPE_AOE = 0x88A2
PACKET_OUTGOING = 4
FAKE_MAC = bytes.fromhex("0200000000bb")
CONFIG = struct.pack("!HHBBH", 8, 0x4019, 2, 0x10, 0)


def answer(client: bytes, ver_flags: int, shelf: int, slot: int, command: int, tag: int, source: bytes = FAKE_MAC) -> bytes:
    frame = client + source + struct.pack("!HBBHBBI", ETHERTYPE_AOE, ver_flags, 0, shelf, slot, command, tag) + CONFIG
    return frame.ljust(60, b"\0")


def malformed(client: bytes, tag: int) -> list[bytes]:
    return [
        answer(client, 0x28, 10, 1, 1, tag),  # version 2
        answer(client, 0x10, 11, 1, 1, tag),  # no response flag: a query, not an answer
        answer(client, 0x1C, 12, 1, 1, tag),  # error flag
        answer(client, 0x18, 13, 1, 1, tag ^ 1),  # not the client's tag
        answer(client, 0x18, 14, 1, 1, tag)[:28],  # cut inside the config part
        answer(client, 0x18, 15, 1, 2, tag),  # command 2 (mask), not config
        answer(client, 0x18, 0xFFFF, 1, 1, tag),  # broadcast shelf
        answer(client, 0x18, 16, 0xFF, 1, tag),  # broadcast slot
        answer(client, 0x18, 17, 1, 1, tag, source=bytes.fromhex("0300000000bb")),  # multicast source
        answer(client, 0x08, 18, 1, 1, 0),  # vblade's start-up announcement: version 0, tag 0
    ]


def main() -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((sys.argv[1], ETHERTYPE_AOE))
    print("ready", flush=True)
    while True:
        try:
            frame, address = sock.recvfrom(2048)
        except OSError:
            return  # the interface went away with its namespace or its QEMU
        if address[2] == PACKET_OUTGOING or len(frame) < 24:
            continue
        ver_flags, _, _, _, command, tag = struct.unpack_from("!BBHBBI", frame, 14)
        if ver_flags & 0x08 or command != 1:
            continue
        client = frame[6:12]
        for reply in [*malformed(client, tag), answer(client, 0x18, 7, 7, 1, tag)]:
            sock.send(reply)
        print("answered", flush=True)


if __name__ == "__main__":
    main()
