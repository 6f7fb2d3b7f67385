"""The nbd generic netlink messages, byte for byte against the kernel's numbers (include/uapi/linux/nbd-netlink.h).

The host kernel has no nbd module: the attach itself is proven in the QEMU boot suite; here the
messages are decoded by hand (not by genetlink.py) and compared to the constants in facts.md, and
genetlink.py looks up a family the host has (nlctrl, the controller itself).
"""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from kiwi_overlay.nbd import genetlink, kernel, protocol
from kiwi_overlay.nbd.protocol import BlockSizes, ExportInfo, NbdError
from kiwi_overlay.nbd.supervisor import kernel_block_size

NLA_TYPE_MASK = 0x3FFF
CONFIG = kernel.Config(
    size=1 << 30, block_size=4096, server_flags=0x0103, io_timeout=30.0, dead_conn_timeout=120.0, backend="kiwi-overlay nbd://h/x"
)


def attributes(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of every netlink attribute in DATA, as the kernel's nla_for_each_attr walks them."""
    found = []
    while data:
        length, kind = struct.unpack("=HH", data[:4])
        assert 4 <= length <= len(data)
        found.append((kind & NLA_TYPE_MASK, data[4:length]))
        data = data[(length + 3) & ~3 :]
    return found


def encoded(body: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """(command, version, attributes) of an encoded genetlink message body."""
    command, version, _ = struct.unpack("=BBH", body[:4])
    return command, version, attributes(body[4:])


def u32(value: bytes) -> int:
    return int(struct.unpack("=I", value)[0])


def u64(value: bytes) -> int:
    return int(struct.unpack("=Q", value)[0])


def test_connect_carries_every_attribute_with_the_kernels_numbers() -> None:
    command, version, attrs = encoded(kernel.build(kernel.CMD_CONNECT, index=3, fds=[5, 7], config=CONFIG))
    assert (command, version) == (1, 1)
    by_type = dict(attrs)
    assert u32(by_type[1]) == 3  # INDEX
    assert u64(by_type[2]) == 1 << 30  # SIZE_BYTES
    assert u64(by_type[3]) == 4096  # BLOCK_SIZE_BYTES
    assert u64(by_type[4]) == 30  # TIMEOUT
    assert u64(by_type[5]) == 0x0103  # SERVER_FLAGS
    assert 6 not in by_type  # CLIENT_FLAGS: no destroy/disconnect-on-close for a root device
    assert u64(by_type[8]) == 120  # DEAD_CONN_TIMEOUT
    assert by_type[10].rstrip(b"\0") == b"kiwi-overlay nbd://h/x"  # BACKEND_IDENTIFIER
    items = attributes(by_type[7])  # SOCKETS
    assert [kind for kind, _ in items] == [1, 1]  # SOCK_ITEM
    assert [[(kind, u32(fd)) for kind, fd in attributes(item)] for _, item in items] == [[(1, 5)], [(1, 7)]]  # SOCK_FD


def test_connect_without_index_lets_the_kernel_choose() -> None:
    _, _, attrs = encoded(kernel.build(kernel.CMD_CONNECT, fds=[4], config=CONFIG))
    assert 1 not in dict(attrs)


def test_connect_without_io_timeout_keeps_the_kernel_default() -> None:
    config = kernel.Config(size=512, block_size=512, server_flags=1, io_timeout=None, dead_conn_timeout=60, backend="b")
    _, _, attrs = encoded(kernel.build(kernel.CMD_CONNECT, fds=[4], config=config))
    assert 4 not in dict(attrs)


def test_reconfigure_has_index_backend_and_new_sockets() -> None:
    # Linux refuses RECONFIGURE of a device connected with a backend identifier unless it names the same one.
    command, _, attrs = encoded(kernel.build(kernel.CMD_RECONFIGURE, index=2, fds=[9], backend="kiwi-overlay nbd://h/x"))
    assert command == 3
    assert [kind for kind, _ in attrs] == [1, 10, 7]
    assert u32(dict(attrs)[1]) == 2
    assert dict(attrs)[10].rstrip(b"\0") == b"kiwi-overlay nbd://h/x"
    (item,) = attributes(dict(attrs)[7])
    assert attributes(item[1]) == [(1, struct.pack("=I", 9))]


@pytest.mark.parametrize(("command", "number"), [(kernel.CMD_DISCONNECT, 2), (kernel.CMD_STATUS, 5)])
def test_disconnect_and_status_name_the_device(command: int, number: int) -> None:
    sent, _, attrs = encoded(kernel.build(command, index=11))
    assert sent == number
    assert [(kind, u32(value)) for kind, value in attrs] == [(1, 11)]


def test_genetlink_decodes_what_it_encodes() -> None:
    decoded = genetlink.parse(kernel.build(kernel.CMD_CONNECT, index=1, fds=[5, 6], config=CONFIG))
    assert decoded.command == kernel.CMD_CONNECT
    assert genetlink.unsigned(decoded.get(kernel.ATTR_SIZE_BYTES) or b"") == 1 << 30
    assert decoded.get(kernel.ATTR_BACKEND_IDENTIFIER) == b"kiwi-overlay nbd://h/x\0"
    items = genetlink.attributes(decoded.get(kernel.ATTR_SOCKETS) or b"")
    assert [genetlink.unsigned(dict(genetlink.attributes(item))[kernel.SOCK_FD]) for _, item in items] == [5, 6]


def test_link_dead_notifications_are_picked_by_device() -> None:
    messages = [
        genetlink.parse(kernel.build(command, index=index))
        for command, index in ((kernel.CMD_LINK_DEAD, 4), (kernel.CMD_STATUS, 5), (kernel.CMD_LINK_DEAD, 0))
    ]
    assert kernel.dead_link_indexes(messages) == [4, 0]


def test_genetlink_looks_up_a_family_and_its_multicast_groups() -> None:
    # nlctrl, the generic netlink controller, exists in every kernel: id 0x10, group "notify".
    link = genetlink.GenericNetlink("nlctrl")
    try:
        assert link.family_id == genetlink.GENL_ID_CTRL
        assert "notify" in link.groups
        link.subscribe("notify")
    finally:
        link.close()


def test_genetlink_reports_a_missing_family_as_enoent() -> None:
    with pytest.raises(genetlink.NetlinkError) as raised:
        genetlink.GenericNetlink("no-such-family")
    assert raised.value.code == errno.ENOENT


def test_the_constants_are_the_kernels() -> None:
    assert (kernel.CMD_CONNECT, kernel.CMD_DISCONNECT, kernel.CMD_RECONFIGURE, kernel.CMD_LINK_DEAD, kernel.CMD_STATUS) == (1, 2, 3, 4, 5)
    assert (kernel.ATTR_INDEX, kernel.ATTR_SOCKETS, kernel.ATTR_DEAD_CONN_TIMEOUT, kernel.ATTR_BACKEND_IDENTIFIER) == (1, 7, 8, 10)
    assert (kernel.NBD_SET_SOCK, kernel.NBD_DO_IT, kernel.NBD_CLEAR_SOCK, kernel.NBD_DISCONNECT) == (0xAB00, 0xAB03, 0xAB04, 0xAB08)
    assert (kernel.NBD_SET_BLKSIZE, kernel.NBD_SET_SIZE_BLOCKS, kernel.NBD_SET_TIMEOUT, kernel.NBD_SET_FLAGS) == (
        0xAB01,
        0xAB07,
        0xAB09,
        0xAB0A,
    )
    assert (kernel.FAMILY, kernel.MULTICAST_GROUP) == ("nbd", "nbd_mc_group")


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [(None, 512), (BlockSizes(1, 4096, 1 << 25), 512), (BlockSizes(512, 4096, 1 << 25), 512), (BlockSizes(4096, 4096, 1 << 25), 4096)],
)
def test_kernel_block_size_is_the_servers_minimum(sizes: BlockSizes | None, expected: int) -> None:
    info = ExportInfo(name="x", size=1 << 20, flags=protocol.FLAG_HAS_FLAGS, block_sizes=sizes)
    assert kernel_block_size(info, peer="h:1") == expected


def test_kernel_block_size_beyond_a_page_is_refused() -> None:
    info = ExportInfo(name="x", size=1 << 20, flags=1, block_sizes=BlockSizes(65536, 65536, 1 << 25))
    with pytest.raises(NbdError, match="needs 65536-byte blocks"):
        kernel_block_size(info, peer="h:1")


@pytest.mark.parametrize("device", ["/dev/sda", "/dev/nbd", "/dev/nbdx1"])
def test_device_index_refuses_other_devices(device: str) -> None:
    with pytest.raises(NbdError, match="not an NBD device"):
        kernel.device_index(Path(device))


def test_device_index() -> None:
    assert kernel.device_index(Path("/dev/nbd12")) == 12
    assert kernel.device_path(12) == Path("/dev/nbd12")


def test_reconfigure_can_carry_a_new_dead_connection_timeout() -> None:
    # rd.root.overlay.nbd.lost=fail:S ends the wait for a reconnect with a dead-connection timeout of 0.
    _, _, attrs = encoded(kernel.build(kernel.CMD_RECONFIGURE, index=2, backend="b", dead_conn_timeout=0))
    assert [kind for kind, _ in attrs] == [1, 10, 8]
    assert u64(dict(attrs)[8]) == 0
