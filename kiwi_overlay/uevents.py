"""The kernel's own uevents, read from its netlink broadcast: no udevd, no libudev.

The kernel makes a device's node in devtmpfs before it sends the device's "add" uevent, so a
waiter that looks for the node after each uevent never misses it. A plain socket, where pyudev
would load libudev through ctypes.util.find_library: that runs ldconfig, a process at boot and
a 1 MB binary in the initrd.
"""

from __future__ import annotations

import errno
import socket
import time

from kiwi_overlay import log

# linux/netlink.h: the protocol, and the group of the kernel's own messages (udevd re-sends on 2).
NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1
# Where no uevents can be had, next() returns this often.
POLL_INTERVAL = 0.5
# A uevent is at most UEVENT_BUFFER_SIZE (2048) bytes of variables plus its "ACTION@DEVPATH" header.
_MESSAGE_SIZE = 8192


# The subsystem next() gives when events are gone (the socket's buffer overflowed, or there is no
# socket): anything may have happened.
LOST = ""


def subsystem(message: bytes) -> str | None:
    """The SUBSYSTEM of the uevent in a kernel message ("ACTION@DEVPATH\\0KEY=VALUE\\0..."); None for anything else."""
    header, _, body = message.partition(b"\0")
    if b"@" not in header:
        return None
    for field in body.split(b"\0"):
        key, _, value = field.partition(b"=")
        if key == b"SUBSYSTEM":
            return value.decode("utf-8", "surrogateescape")
    return None


class KernelUevents:
    """The uevents the kernel sends from now on, for `with`.

    Where a sandbox denies the netlink socket (said on the log), next() wakes its caller every
    POLL_INTERVAL seconds with LOST instead, so waiting degrades to looking on an interval.
    """

    def __init__(self) -> None:
        self._socket: socket.socket | None = None
        try:
            listener = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT)
        except OSError as error:
            log.info(f"no kernel uevents ({error.strerror}): looking every {POLL_INTERVAL:g} s instead")
            return
        try:
            listener.bind((0, KERNEL_GROUP))
        except BaseException:
            listener.close()
            raise
        self._socket = listener

    def __enter__(self) -> KernelUevents:
        return self

    def __exit__(self, *_: object) -> None:
        if self._socket is not None:
            self._socket.close()

    def next(self, *, timeout: float) -> str | None:
        """The subsystem of the next uevent within TIMEOUT seconds (LOST after an overflow), None when none came."""
        if self._socket is None:
            time.sleep(min(max(timeout, 0.0), POLL_INTERVAL))
            return LOST
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self._socket.settimeout(remaining)
            try:
                message, (sender, _) = self._socket.recvfrom(_MESSAGE_SIZE)
            except TimeoutError:
                return None
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    return LOST
                raise
            found = subsystem(message) if sender == 0 else None  # 0: the kernel, not a process
            if found is not None:
                return found
        return None
