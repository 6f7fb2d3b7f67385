"""Generic netlink: a family's number and multicast groups from the controller, then its own messages."""

from __future__ import annotations

from typing import Any

from kiwi_overlay.netlink import pyroute
from kiwi_overlay.netlink.core import NetlinkSocket, decoded

NETLINK_GENERIC = 16  # not in Python's socket module
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3


class GenericSocket(NetlinkSocket):
    """A NETLINK_GENERIC socket bound to one family (bind): requests and notifications in MESSAGE_CLASS."""

    def __init__(self) -> None:
        super().__init__(NETLINK_GENERIC)
        self.family = 0
        self.groups: dict[str, int] = {}
        self.message_class: type[Any] = pyroute.genlmsg

    def bind(self, name: str, message_class: type[Any]) -> None:
        """Look up family NAME (NetlinkError ENOENT: the kernel has no such family)."""
        msg = pyroute.ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", name)]
        (reply,) = self.request(msg, msg_type=GENL_ID_CTRL)
        self.family = reply.get_attr("CTRL_ATTR_FAMILY_ID")
        groups = reply.get_attr("CTRL_ATTR_MCAST_GROUPS") or ()
        self.groups = {group.get_attr("CTRL_ATTR_MCAST_GRP_NAME"): group.get_attr("CTRL_ATTR_MCAST_GRP_ID") for group in groups}
        self.message_class = message_class

    def send(self, msg: Any) -> list[Any]:
        """A request to the family, acknowledged; its answers."""
        return self.request(msg, msg_type=self.family)

    def subscribe(self, group: str) -> None:
        self.add_membership(self.groups[group])

    def notifications(self) -> list[Any]:
        """The family's next notifications (blocks)."""
        return [decoded(self.message_class, data) for kind, data in self.receive() if kind == self.family]
