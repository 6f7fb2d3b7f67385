"""A minimal read-only NBD server that writes the name of every transmission command it gets to a file.

Usage: python3 nbd_recorder.py PORT IMAGE RECORD
Serves IMAGE as export "rootfs" on 127.0.0.1:PORT (fixed newstyle, NBD_OPT_GO), one client at a
time; appends "read", "flush", "disc", ... to RECORD, one per line; touches RECORD.ready once it
listens. Standalone (stdlib only): test_nbd_guest.py runs it inside the guest, where it shows
whether a detach let the kernel send NBD_CMD_DISC.
"""

import socket
import struct
import sys
from pathlib import Path

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
OPT_GO, REP_ACK, REP_INFO, REP_ERR_UNSUP = 7, 1, 3, 2**31 + 1
FLAG_HAS_FLAGS, FLAG_READ_ONLY, FLAG_SEND_FLUSH = 1, 2, 4
COMMANDS = {0: "read", 1: "write", 2: "disc", 3: "flush"}


def recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError
        data += chunk
    return data


def negotiate(conn: socket.socket, size: int) -> None:
    conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
    recv_exact(conn, 4)
    while True:
        _, option, length = struct.unpack(">QII", recv_exact(conn, 16))
        recv_exact(conn, length)
        if option != OPT_GO:
            conn.sendall(struct.pack(">QIII", REPLY_MAGIC, option, REP_ERR_UNSUP, 0))
            continue
        info = struct.pack(">HQH", 0, size, FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH)
        conn.sendall(struct.pack(">QIII", REPLY_MAGIC, option, REP_INFO, len(info)) + info)
        conn.sendall(struct.pack(">QIII", REPLY_MAGIC, option, REP_ACK, 0))
        return


def serve(conn: socket.socket, image: Path, record: Path) -> None:
    data = image.read_bytes()
    negotiate(conn, len(data))
    while True:
        _, _, command, handle, offset, length = struct.unpack(">IHHQQI", recv_exact(conn, 28))
        with record.open("a") as log:
            log.write(COMMANDS.get(command, str(command)) + "\n")
        if command == 2:
            return
        error = 0 if command in (0, 3) else 22  # EINVAL for writes to this read-only export
        payload = data[offset : offset + length] if command == 0 and not error else b""
        conn.sendall(struct.pack(">IIQ", 0x67446698, error, handle) + payload)


def main() -> None:
    port, image, record = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4)
    record.with_name(record.name + ".ready").touch()
    while True:
        conn, _ = listener.accept()
        try:
            serve(conn, image, record)
        except ConnectionError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
