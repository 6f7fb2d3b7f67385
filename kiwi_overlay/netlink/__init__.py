"""Netlink for the boot: pyroute2's message classes over sockets of the standard library.

    pyroute.py   pyroute2's ifinfmsg, ifaddrmsg, rtmsg, genlmsg and NetlinkError, without its package initializer
    core.py      the socket: a request and its answers up to the acknowledgement, notifications
    route.py     rtnetlink: links (up, name, MTU, MAC, master, bond/bridge/VLAN), addresses, routes
    generic.py   generic netlink: a family and its multicast groups by name (the nbd family)

Neither asyncio nor pyroute2's own sockets are imported: see core.py.
"""
