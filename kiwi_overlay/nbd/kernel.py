"""The kernel side of NBD: the generic netlink family "nbd" (pyroute2's messages), and the old ioctls.

The netlink messages are imported only inside the functions that talk to the kernel, never at
module level.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.nbd.protocol import NbdError

FAMILY = "nbd"
MULTICAST_GROUP = "nbd_mc_group"

CMD_CONNECT = 1
CMD_DISCONNECT = 2
CMD_RECONFIGURE = 3
CMD_LINK_DEAD = 4
CMD_STATUS = 5

ATTRIBUTES = (
    ("NBD_ATTR_UNSPEC", "none"),
    ("NBD_ATTR_INDEX", "uint32"),
    ("NBD_ATTR_SIZE_BYTES", "uint64"),
    ("NBD_ATTR_BLOCK_SIZE_BYTES", "uint64"),
    ("NBD_ATTR_TIMEOUT", "uint64"),
    ("NBD_ATTR_SERVER_FLAGS", "uint64"),
    ("NBD_ATTR_CLIENT_FLAGS", "uint64"),
    ("NBD_ATTR_SOCKETS", "sockets"),
    ("NBD_ATTR_DEAD_CONN_TIMEOUT", "uint64"),
    ("NBD_ATTR_DEVICE_LIST", "device_list"),
    ("NBD_ATTR_BACKEND_IDENTIFIER", "asciiz"),
)

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


def message_class() -> type[Any]:
    """The pyroute2 genlmsg class for the nbd family (imports pyroute2's netlink modules, not the whole package)."""
    from kiwi_overlay.netlink.pyroute import genlmsg, nla

    class nbd_msg(genlmsg):  # type: ignore[misc]
        prefix = "NBD_ATTR_"
        nla_map = ATTRIBUTES

        class sockets(nla):  # type: ignore[misc]
            nla_map = (("NBD_SOCK_ITEM_UNSPEC", "none"), ("NBD_SOCK_ITEM", "sock_item"))

            class sock_item(nla):  # type: ignore[misc]
                nla_map = (("NBD_SOCK_UNSPEC", "none"), ("NBD_SOCK_FD", "uint32"))

        class device_list(nla):  # type: ignore[misc]
            nla_map = (("NBD_DEVICE_ITEM_UNSPEC", "none"), ("NBD_DEVICE_ITEM", "device_item"))

            class device_item(nla):  # type: ignore[misc]
                nla_map = (("NBD_DEVICE_UNSPEC", "none"), ("NBD_DEVICE_INDEX", "uint32"), ("NBD_DEVICE_CONNECTED", "uint8"))

    return nbd_msg


def build(
    command: int,
    *,
    index: int | None = None,
    fds: Sequence[int] = (),
    config: Config | None = None,
    backend: str | None = None,
    dead_conn_timeout: float | None = None,
) -> Any:
    """An nbd genetlink message: CONNECT (with CONFIG), RECONFIGURE (with BACKEND), DISCONNECT or STATUS."""
    msg = message_class()()
    msg["cmd"] = command
    msg["version"] = 1
    attrs: list[tuple[str, Any]] = []
    if index is not None:
        attrs.append(("NBD_ATTR_INDEX", index))
    if config is not None:
        attrs += [
            ("NBD_ATTR_SIZE_BYTES", config.size),
            ("NBD_ATTR_BLOCK_SIZE_BYTES", config.block_size),
            ("NBD_ATTR_SERVER_FLAGS", config.server_flags),
            ("NBD_ATTR_DEAD_CONN_TIMEOUT", kernel_seconds(config.dead_conn_timeout)),
            ("NBD_ATTR_BACKEND_IDENTIFIER", config.backend),
        ]
        if config.io_timeout is not None:
            attrs.append(("NBD_ATTR_TIMEOUT", kernel_seconds(config.io_timeout)))
    if backend is not None:
        attrs.append(("NBD_ATTR_BACKEND_IDENTIFIER", backend))
    if dead_conn_timeout is not None:
        attrs.append(("NBD_ATTR_DEAD_CONN_TIMEOUT", kernel_seconds(dead_conn_timeout)))
    if fds:
        items = [("NBD_SOCK_ITEM", {"attrs": [("NBD_SOCK_FD", fd)]}) for fd in fds]
        attrs.append(("NBD_ATTR_SOCKETS", {"attrs": items}))
    msg["attrs"] = attrs
    return msg


class Netlink:
    """A socket bound to the nbd family; loads the nbd module when the family is missing."""

    def __init__(self, *, load_module: bool = True) -> None:
        from kiwi_overlay.netlink.generic import GenericSocket
        from kiwi_overlay.netlink.pyroute import NetlinkError

        self.msg_class = message_class()
        self.socket = GenericSocket()
        try:
            try:
                self.socket.bind(FAMILY, self.msg_class)
            except NetlinkError as error:
                if error.code != errno.ENOENT or not load_module:
                    raise
                load_nbd_module()
                self.socket.bind(FAMILY, self.msg_class)
        except NetlinkError as error:
            self.socket.close()
            if error.code == errno.ENOENT:
                raise Unsupported("the kernel has no nbd generic netlink family") from None
            raise NbdError(f"nbd netlink: {os.strerror(error.code)}") from None
        except BaseException:
            self.socket.close()
            raise

    def request(self, msg: Any, *, what: str) -> list[Any]:
        from kiwi_overlay.netlink.pyroute import NetlinkError

        try:
            return self.socket.send(msg)
        except NetlinkError as error:
            raise NbdError(f"{what}: {os.strerror(error.code)}", reply=error.code) from None

    def subscribe(self) -> None:
        self.socket.subscribe(MULTICAST_GROUP)

    def events(self) -> list[Any]:
        """The next batch of multicast messages (blocks)."""
        return self.socket.notifications()

    def close(self) -> None:
        self.socket.close()


class Unsupported(KiwiOverlayError):
    """The kernel lacks the nbd netlink interface (old kernel or no module)."""


def load_nbd_module() -> None:
    """modprobe nbd, unless it is loaded or built in; a failure is final (no ioctl fallback either)."""
    from kiwi_overlay.run import run

    if not Path("/sys/module/nbd").exists():
        result = run(["modprobe", "nbd"], check=False, capture=True)
        if result.returncode != 0:
            reason = (result.stderr or "").strip().splitlines()
            raise NbdError(f"cannot load the nbd kernel module ({reason[-1] if reason else 'modprobe failed'})")


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
        chosen = reply.get_attr("NBD_ATTR_INDEX")
        if chosen is not None:
            return int(chosen)
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
        devices = reply.get_attr("NBD_ATTR_DEVICE_LIST")
        for item in devices.get_attrs("NBD_DEVICE_ITEM") if devices else ():
            if item.get_attr("NBD_DEVICE_INDEX") == index:
                return bool(item.get_attr("NBD_DEVICE_CONNECTED"))
    return False


def dead_link_indexes(messages: Sequence[Any]) -> list[int]:
    """The device indexes of NBD_CMD_LINK_DEAD notifications among MESSAGES."""
    return [
        int(msg.get_attr("NBD_ATTR_INDEX"))
        for msg in messages
        if msg.get("cmd") == CMD_LINK_DEAD and msg.get_attr("NBD_ATTR_INDEX") is not None
    ]


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


def hardware_queues(index: int) -> int:
    """The blk-mq hardware queues of /dev/nbdINDEX (sysfs mq/N): the driver sends each request over the
    connection numbered like its queue, and blk-mq makes no more queues than CPUs."""
    return sum(1 for entry in (SYS_BLOCK / f"nbd{index}" / "mq").iterdir() if entry.name.isdigit())
