"""The kernel side of NBD: the generic netlink family "nbd" (genetlink.py), and the old ioctls."""

from __future__ import annotations

import errno
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.nbd import genetlink
from kiwi_overlay.nbd.genetlink import U32, U64, Attribute, Message
from kiwi_overlay.nbd.protocol import NbdError

FAMILY = "nbd"
MULTICAST_GROUP = "nbd_mc_group"

CMD_CONNECT = 1
CMD_DISCONNECT = 2
CMD_RECONFIGURE = 3
CMD_LINK_DEAD = 4
CMD_STATUS = 5

# include/uapi/linux/nbd-netlink.h
ATTR_INDEX = 1
ATTR_SIZE_BYTES = 2
ATTR_BLOCK_SIZE_BYTES = 3
ATTR_TIMEOUT = 4
ATTR_SERVER_FLAGS = 5
ATTR_CLIENT_FLAGS = 6
ATTR_SOCKETS = 7
ATTR_DEAD_CONN_TIMEOUT = 8
ATTR_DEVICE_LIST = 9
ATTR_BACKEND_IDENTIFIER = 10
SOCK_ITEM = 1
SOCK_FD = 1
DEVICE_ITEM = 1
DEVICE_INDEX = 1
DEVICE_CONNECTED = 2

# ioctl numbers (linux/nbd.h: _IO(0xab, n)).
NBD_SET_SOCK = 0xAB00
NBD_SET_BLKSIZE = 0xAB01
NBD_SET_SIZE = 0xAB02
NBD_DO_IT = 0xAB03
NBD_CLEAR_SOCK = 0xAB04
NBD_CLEAR_QUE = 0xAB05
NBD_SET_SIZE_BLOCKS = 0xAB07
NBD_DISCONNECT = 0xAB08
NBD_SET_TIMEOUT = 0xAB09
NBD_SET_FLAGS = 0xAB0A

DEV = Path("/dev")
MODULE = Path("/sys/module/nbd")
MODULE_INIT_TIMEOUT = 30.0
SYS_BLOCK = Path("/sys/block")


@dataclass(frozen=True)
class Config:
    """What the kernel needs to know about one export."""

    size: int
    block_size: int
    server_flags: int
    io_timeout: float | None
    dead_conn_timeout: float
    backend: str


def kernel_seconds(seconds: float) -> int:
    """SECONDS as the kernel's whole seconds, rounded up: 0 would mean no timeout at all."""
    return max(1, math.ceil(seconds))


def build(
    command: int,
    *,
    index: int | None = None,
    fds: Sequence[int] = (),
    config: Config | None = None,
    backend: str | None = None,
    dead_conn_timeout: float | None = None,
) -> bytes:
    """An nbd genetlink message body: CONNECT (with CONFIG), RECONFIGURE (with BACKEND), DISCONNECT or STATUS."""
    attrs: list[Attribute] = []
    if index is not None:
        attrs.append((ATTR_INDEX, U32(index)))
    if config is not None:
        attrs += [
            (ATTR_SIZE_BYTES, U64(config.size)),
            (ATTR_BLOCK_SIZE_BYTES, U64(config.block_size)),
            (ATTR_SERVER_FLAGS, U64(config.server_flags)),
            (ATTR_DEAD_CONN_TIMEOUT, U64(kernel_seconds(config.dead_conn_timeout))),
            (ATTR_BACKEND_IDENTIFIER, config.backend),
        ]
        if config.io_timeout is not None:
            attrs.append((ATTR_TIMEOUT, U64(kernel_seconds(config.io_timeout))))
    if backend is not None:
        attrs.append((ATTR_BACKEND_IDENTIFIER, backend))
    if dead_conn_timeout is not None:
        attrs.append((ATTR_DEAD_CONN_TIMEOUT, U64(round(dead_conn_timeout))))
    if fds:
        attrs.append((ATTR_SOCKETS, [(SOCK_ITEM, [(SOCK_FD, U32(fd))]) for fd in fds]))
    return genetlink.payload(command, attrs)


class Netlink:
    """A socket bound to the nbd family; loads the nbd module when the family is missing."""

    def __init__(self, *, load_module: bool = True) -> None:
        try:
            try:
                self.socket = genetlink.GenericNetlink(FAMILY)
            except genetlink.NetlinkError as error:
                if error.code != errno.ENOENT or not load_module:
                    raise
                load_nbd_module()
                self.socket = genetlink.GenericNetlink(FAMILY)
        except genetlink.NetlinkError as error:
            if error.code == errno.ENOENT:
                raise Unsupported("the kernel has no nbd generic netlink family") from None
            raise NbdError(f"nbd netlink: {os.strerror(error.code)}") from None

    def request(self, body: bytes, *, what: str) -> list[Message]:
        try:
            return self.socket.send(body)
        except genetlink.NetlinkError as error:
            raise NbdError(f"{what}: {os.strerror(error.code)}", reply=error.code) from None

    def subscribe(self) -> None:
        self.socket.subscribe(MULTICAST_GROUP)

    def events(self) -> list[Message]:
        """The next batch of multicast messages (blocks)."""
        return self.socket.events()

    def close(self) -> None:
        self.socket.close()


class Unsupported(KiwiOverlayError):
    """The kernel lacks the nbd netlink interface (old kernel or no module)."""


def load_nbd_module() -> None:
    """modprobe nbd, unless it is loaded or built in; a failure is final (no ioctl fallback either).

    A load in progress (the cmdline hook starts one early) is waited for: until then the module
    has no netlink family and modprobe returns at once.
    """
    from kiwi_overlay.run import run

    if not MODULE.exists():
        result = run(["modprobe", "nbd"], check=False, capture=True)
        if result.returncode != 0:
            reason = (result.stderr or "").strip().splitlines()
            raise NbdError(f"cannot load the nbd kernel module ({reason[-1] if reason else 'modprobe failed'})")
    deadline = time.monotonic() + MODULE_INIT_TIMEOUT
    while _initstate() not in ("live", None) and time.monotonic() < deadline:
        time.sleep(0.01)


def _initstate() -> str | None:
    """The module's state (coming, live, going); None when built in or absent."""
    try:
        return (MODULE / "initstate").read_text().strip()
    except OSError:
        return None


def device_path(index: int) -> Path:
    return DEV / f"nbd{index}"


def device_index(device: Path) -> int:
    name = device.name
    if not name.startswith("nbd") or not name[3:].isdigit():
        raise NbdError(f"{device}: not an NBD device (/dev/nbdN)")
    return int(name[3:])


def connect(link: Netlink, fds: Sequence[int], config: Config, *, index: int | None) -> int:
    """NBD_CMD_CONNECT; returns the device index the kernel used (INDEX, or one it chose)."""
    target = f"/dev/nbd{index}" if index is not None else "a free /dev/nbdN"
    replies = link.request(build(CMD_CONNECT, index=index, fds=fds, config=config), what=f"attaching {target}")
    for reply in replies:
        chosen = reply.get(ATTR_INDEX)
        if chosen is not None:
            return genetlink.unsigned(chosen)
    if index is None:
        raise NbdError("attaching a free /dev/nbdN: the kernel did not say which device it used")
    return index


def reconfigure(link: Netlink, index: int, fds: Sequence[int], *, backend: str, dead_conn_timeout: float | None = None) -> None:
    """New sockets for dead ones, and a new dead-connection timeout; refused unless BACKEND is the one given at CONNECT."""
    link.request(
        build(CMD_RECONFIGURE, index=index, fds=fds, backend=backend, dead_conn_timeout=dead_conn_timeout),
        what=f"reconnecting /dev/nbd{index}",
    )


def disconnect(link: Netlink, index: int) -> None:
    link.request(build(CMD_DISCONNECT, index=index), what=f"detaching /dev/nbd{index}")


def status(link: Netlink, index: int) -> bool:
    """Whether /dev/nbdINDEX is connected (NBD_CMD_STATUS)."""
    for reply in link.request(build(CMD_STATUS, index=index), what=f"status of /dev/nbd{index}"):
        for _, item in genetlink.attributes(reply.get(ATTR_DEVICE_LIST) or b""):
            fields = dict(genetlink.attributes(item))
            if DEVICE_INDEX in fields and genetlink.unsigned(fields[DEVICE_INDEX]) == index:
                return bool(genetlink.unsigned(fields.get(DEVICE_CONNECTED, b"\0")))
    return False


def dead_link_indexes(messages: Sequence[Message]) -> list[int]:
    """The device indexes of NBD_CMD_LINK_DEAD notifications among MESSAGES."""
    return [genetlink.unsigned(index) for msg in messages if msg.command == CMD_LINK_DEAD and (index := msg.get(ATTR_INDEX)) is not None]


# The ioctl interface, for kernels without the netlink family.


def ioctl_free_device() -> int:
    """The lowest /dev/nbdN that is not connected (no pid in sysfs)."""
    for path in sorted(SYS_BLOCK.glob("nbd*"), key=lambda p: int(p.name[3:]) if p.name[3:].isdigit() else 1 << 30):
        if path.name[3:].isdigit() and not (path / "pid").exists():
            return int(path.name[3:])
    raise NbdError("no free /dev/nbdN (all connected, or the nbd module is not loaded)")


def ioctl_configure(device_fd: int, sock_fd: int, config: Config) -> None:
    """SET_BLKSIZE, SET_SIZE_BLOCKS, SET_TIMEOUT, SET_FLAGS, SET_SOCK: everything before DO_IT."""
    import fcntl

    fcntl.ioctl(device_fd, NBD_CLEAR_SOCK)
    fcntl.ioctl(device_fd, NBD_SET_BLKSIZE, config.block_size)
    fcntl.ioctl(device_fd, NBD_SET_SIZE_BLOCKS, config.size // config.block_size)
    if config.io_timeout is not None:
        fcntl.ioctl(device_fd, NBD_SET_TIMEOUT, kernel_seconds(config.io_timeout))
    fcntl.ioctl(device_fd, NBD_SET_FLAGS, config.server_flags)
    fcntl.ioctl(device_fd, NBD_SET_SOCK, sock_fd)


def ioctl_disconnect(device: Path) -> None:
    import fcntl

    fd = os.open(device, os.O_RDWR)
    try:
        fcntl.ioctl(fd, NBD_DISCONNECT)
        fcntl.ioctl(fd, NBD_CLEAR_SOCK)
    finally:
        os.close(fd)


def connected(index: int) -> bool:
    return (SYS_BLOCK / f"nbd{index}" / "pid").exists()
