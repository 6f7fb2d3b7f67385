"""One kiwi-overlay storm client process (benchmarks/storm.py): `python -m benchmarks.storm_client FIFO URI`.

Imports what the boot's NBD step imports, opens FIFO, prints `ready`, reads FIFO until the storm
is released, then negotiates as the boot does (connect.with_retry + open_export) and disconnects.
"""

from __future__ import annotations

import sys
import time

from kiwi_overlay.nbd import connect, protocol, root_from_uri


def main(release: str, uri: str) -> int:
    root = root_from_uri(uri)
    with open(release) as fifo:
        print("ready", flush=True)
        fifo.read()  # until the storm's writer closes
    sock, info = connect.with_retry(lambda deadline: connect.open_export(root, deadline=deadline, context=None), root=root, timeout=120)
    done = time.monotonic()
    try:
        protocol.disconnect(protocol.Wire(sock, peer=root.address, deadline=time.monotonic() + 10))
    finally:
        sock.close()
    print(f"negotiated, {info.size} bytes, at monotonic {done:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
