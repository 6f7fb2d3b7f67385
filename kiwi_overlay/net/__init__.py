"""The network for a root server, in dracut's syntax, configured over netlink (kiwi_overlay.netlink).

    grammar.py   ip=, ifname=, BOOTIF=, nameserver=, rd.route=, vlan=, bond=, bridge= parsed into frozen dataclasses
    links.py     Ethernet links up and carrier, by kernel link events (shared with AoE)
    virtual.py   bonds, bridges and VLANs created before any address
    bringup.py   "already up" by a route lookup; otherwise links, addresses, routes, DNS as ip= says
    dhcp.py      DHCPv4 leases from a small standard-library client (no pyroute2), configured for a boot

Nothing here is imported until a step needs it: the netlink messages (kiwi_overlay.netlink,
pyroute2's) are loaded only when kiwi-overlay configures the network itself.
"""
