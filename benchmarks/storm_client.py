"""One kiwi-overlay storm client process (benchmarks/storm.py): `python -m benchmarks.storm_client RELEASE DONE URI`.

Imports what the boot's NBD step imports, opens the FIFO RELEASE, prints `ready`, reads it until the
storm is released, then negotiates as the boot does (connect.with_retry + open_export), disconnects
and prints when it had negotiated. Then it lives on, as the boot's NBD supervisor does, until the
FIFO DONE ends with the storm: 200 interpreters ending on the host's few cores while others still
negotiate would charge their teardown to the later clients, which no machine of a real storm shares.
"""

from __future__ import annotations

import sys
import time

from kiwi_overlay.nbd import connect, protocol, root_from_uri


def main(release: str, done: str, uri: str) -> int:
    root = root_from_uri(uri)
    with open(release) as fifo:
        print("ready", flush=True)
        fifo.read()  # until the storm's writer closes
    sock, info = connect.with_retry(lambda deadline: connect.open_export(root, deadline=deadline, context=None), root=root, timeout=120)
    negotiated = time.monotonic()
    try:
        protocol.disconnect(protocol.Wire(sock, peer=root.address, deadline=time.monotonic() + 10))
    finally:
        sock.close()
    print(f"negotiated, {info.size} bytes, at monotonic {negotiated:.6f}", flush=True)
    with open(done) as fifo:
        fifo.read()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
