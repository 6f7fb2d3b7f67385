"""A spoofer on the AoE segment for the tests: many well-formed answers from targets that do not exist.

Usage (inside the target's network namespace): python aoe_spoofer.py IFACE COUNT [STORM_SECONDS]
Every Query Config gets COUNT answers, each from its own shelf.slot (100.0 and up) and MAC. With
STORM_SECONDS, after the first query it keeps sending those answers for that long without a
pause (a receiver that reads until its socket is empty never gets there). Prints "ready" once
bound and "identify" for each ATA IDENTIFY the client sends it; runs until killed.
"""

import contextlib
import socket
import struct
import sys
import time

ETHERTYPE_AOE = 0x88A2
PACKET_OUTGOING = 4
CONFIG = struct.pack("!HHBBH", 8, 0x4019, 2, 0x10, 0)


def answers(client: bytes, tag: int, count: int) -> list[bytes]:
    frames = []
    for number in range(count):
        shelf, slot = 100 + number // 200, number % 200
        source = bytes.fromhex("02aa") + number.to_bytes(4, "big")
        header = struct.pack("!HBBHBBI", ETHERTYPE_AOE, 0x18, 0, shelf, slot, 1, tag)
        frames.append((client + source + header + CONFIG).ljust(60, b"\0"))
    return frames


def main() -> None:
    interface, count = sys.argv[1], int(sys.argv[2])
    storm = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((interface, ETHERTYPE_AOE))
    print("ready", flush=True)
    while True:
        try:
            frame, address = sock.recvfrom(2048)
        except OSError:
            return  # the interface went away with its namespace
        if address[2] == PACKET_OUTGOING or len(frame) < 24:
            continue
        ver_flags, _, _, _, command, tag = struct.unpack_from("!BBHBBI", frame, 14)
        if ver_flags & 0x08:
            continue
        if command == 0:
            print("identify", flush=True)
            continue
        frames = answers(frame[6:12], tag, count)
        end = time.monotonic() + storm
        while True:
            for reply in frames:
                with contextlib.suppress(OSError):  # a full queue: the storm goes on
                    sock.send(reply)
            if time.monotonic() >= end:
                break


if __name__ == "__main__":
    main()
