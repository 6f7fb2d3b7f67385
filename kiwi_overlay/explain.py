"""`kiwi-overlay explain`: the plan as stable JSON or as text for people."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from kiwi_overlay.config.plan import AoeRoot, DhcpRoot, NbdRoot, Network, Plan, Root
from kiwi_overlay.layout import mounts
from kiwi_overlay.net.grammar import IpConfig


def _device(root: Root) -> str:
    """The root's block device, or what it will be once attached."""
    if root.device is not None:
        return str(root.device)
    if isinstance(root, NbdRoot):
        return f"(NBD device attached to {root.uri})"
    if isinstance(root, DhcpRoot):
        return "(the device of the root the DHCP root-path names)"
    assert isinstance(root, AoeRoot)
    return f"(the AoE target found on {root.interface})"


def _read_source(plan: Plan, root: Root) -> str:
    """The read layer's block device: the root's device, or its partition (rd.root.overlay.partition)."""
    if plan.partition is None:
        return _device(root)
    return f"(partition {plan.partition.text} of {_device(root)})"


def _read_layer(plan: Plan, root: Root) -> str:
    """What the read layer is mounted from: the verity device over the read source, with rd.root.overlay.verity."""
    if plan.verity:
        from kiwi_overlay.verity import MAPPER

        return str(MAPPER)
    return _read_source(plan, root)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _ip_line(config: IpConfig, bootif: str | None, bootdev: str | None) -> str:
    if config.interface:
        where = config.interface
    elif bootdev:
        where = f"{bootdev} (bootdev=)"
    elif bootif:
        where = f"the interface with MAC {bootif} (BOOTIF)"
    else:
        where = "every Ethernet interface, the first lease wins"
    if config.method == "off":
        return f"{where}: left alone (ip={config.text})"
    if config.method == "static":
        what = f"{config.address}/{config.prefix}" + (f" via {config.gateway}" if config.gateway else "")
    else:
        what = {
            "dhcp": "DHCP",
            "auto6": "IPv6 autoconfiguration (router advertisements)",
            "dhcp6": "DHCPv6, only when the initrd's own network stack does it (kiwi-overlay has no DHCPv6 client)",
        }[config.method]
    extras = [f"MTU {config.mtu}"] * bool(config.mtu) + [f"MAC {config.mac}"] * bool(config.mac)
    extras += [f"DNS {', '.join(config.dns)}"] * bool(config.dns) + [f"host name {config.hostname}"] * bool(config.hostname)
    return f"{where}: {what}" + (f" ({'; '.join(extras)})" if extras else "")


def _network_lines(net: Network) -> list[str]:
    lines = [f"interface {rule.name} is the one with MAC {rule.mac} (ifname=)" for rule in net.interface_names]
    lines += [
        f"bond {bond.name} of {', '.join(bond.ports)}"
        + (f" ({', '.join(f'{name}={value}' for name, value in bond.options)})" if bond.options else "")
        + (f", MTU {bond.mtu}" if bond.mtu else "")
        for bond in net.bonds
    ]
    lines += [f"bridge {bridge.name} of {', '.join(bridge.ports)}" for bridge in net.bridges]
    lines += [f"VLAN {vlan.vid} on {vlan.parent} as {vlan.name}" for vlan in net.vlans]
    lines += [_ip_line(config, net.bootif, net.bootdev) for config in net.configs]
    lines += [
        f"route {route.destination}"
        + (f" via {route.gateway}" if route.gateway else "")
        + (f" dev {route.interface}" if route.interface else "")
        for route in net.routes
    ]
    if net.nameservers:
        lines.append(f"name servers: {', '.join(net.nameservers)}")
    if not net.peerdns:
        lines.append("name servers from DHCP are not used (rd.peerdns=0)")
    lines += [f"team={team}: refused (no teamd; use bond=)" for team in net.team]
    lines.append("nothing is changed when the network is already up (a route to the root server exists)")
    return lines


def _lost_line(root: NbdRoot) -> str:
    lost = root.lost
    if lost.action == "wait":
        return "server lost: I/O waits until a server answers again (rd.root.overlay.nbd.lost=wait)"
    what = "I/O on the root fails" if lost.action == "fail" else "the machine reboots"
    return f"server lost: {what} after {lost.seconds:g} s without a server (rd.root.overlay.nbd.lost={lost.action}:{lost.seconds:g})"


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data; `{"root": None}` when the command line is not for kiwi-overlay."""
    if plan.root is None:
        return {"root": None}
    root = _plain(asdict(plan.root))
    root["device"] = _plain(plan.root.device)
    if isinstance(plan.root, NbdRoot):
        # The first server's fields stay where they were before several servers could be named.
        root |= {"host": plan.root.host, "port": plan.root.port, "export": plan.root.export, "uri": plan.root.uri}
    write = _plain(asdict(plan.write))
    write["size_bytes"] = plan.write.size_bytes
    return {
        "root": root,
        "write": write,
        "network": _plain(asdict(plan.network)),
        "readonly": plan.readonly,
        "rootfstype": plan.rootfstype,
        "rootflags": plan.rootflags,
        "timeout": plan.timeout,
        "debug": plan.debug,
        "partition": _plain(asdict(plan.partition)) if plan.partition else None,
        "ram": plan.ram,
        "verity": plan.verity,
        "notes": list(plan.notes),
        "mounts": [_plain(asdict(step)) for step in mounts(plan, _read_layer(plan, plan.root))],
    }


def describe(plan: Plan) -> str:
    """The plan in a few lines of text."""
    root = plan.root
    if root is None:
        return "not an overlay root: root= does not start with overlay:, kiwi-overlay does nothing"
    lines = []
    if isinstance(root, NbdRoot):
        lines.append(f"read layer:  NBD export {root.export!r} on {root.address}" + (" over TLS" if root.tls else ""))
        if len(root.servers) > 1:
            others = ", ".join(f"{server.export!r} on {server.address}" for server in root.servers[1:])
            same = "size and verity root hash" if plan.verity and plan.partition is None else "size"
            lines.append(f"             or, in this order, {others}: the first that answers; a reconnect goes to any with the same {same}")
        lines.append(f"             {root.connections} connection(s)" + (f", I/O timeout {root.io_timeout:g} s" if root.io_timeout else ""))
        lines.append(f"             {_lost_line(root)}")
        if root.tls:
            lines.append(f"             TLS: server verified with {root.tls_ca or 'the system CAs (an initrd has none unless installed)'}")
            if root.tls_cert:
                lines.append(f"             TLS: client certificate {root.tls_cert}, key {root.tls_key}")
    elif isinstance(root, AoeRoot):
        if root.target:
            lines.append(f"read layer:  AoE target {root.target} ({root.device})")
        else:
            lines.append(f"read layer:  the one AoE target that answers on {root.interface}")
        if root.interfaces:
            lines.append(f"             AoE interfaces: {', '.join(root.interfaces)}")
    elif isinstance(root, DhcpRoot):
        lines.append("read layer:  the root the DHCP server's root-path (option 17) names: overlay:..., nbd://, nbds:// or nbd:")
    else:
        lines.append(f"read layer:  {root.device} ({root.spec})")
    if plan.partition is not None:
        lines.append(f"             on its partition {plan.partition.text} (rd.root.overlay.partition)")
    if plan.verity:
        lines.append(f"             verified by dm-verity: root hash {plan.verity} (hash tree appended to the image);")
        lines.append("             a changed block reads as an I/O error, a changed filesystem superblock stops the boot")
    lines.append(f"             filesystem {plan.rootfstype or 'detected from the device'}; wait up to {plan.timeout:g} s")
    if plan.ram:
        detached = " then detached" if isinstance(root, (NbdRoot, AoeRoot)) else ""
        lines.append(f"             copied into RAM (rd.root.overlay.ram), the device{detached}")
    write = plan.write
    if write.kind == "none":
        lines.append("write layer: none (rd.root.overlay.readonly): / is read-only")
    elif write.kind == "device":
        lines.append(
            f"write layer: {write.device}"
            + (" (reset first)" if write.reset else "")
            + (", tmpfs if it fails" if write.fallback_tmpfs else "")
            + ("" if write.fsck else ", not checked (rd.root.overlay.write.fsck=0)")
        )
    else:
        note = f" (rd.root.overlay.temporary overrides {write.device})" if write.device else ""
        lines.append(f"write layer: tmpfs of {write.size}{note}")
    if write.kind != "none":
        lines.append("             kiwi-overlay-watch warns on the console and in the journal at 80, 90 and 95 % full")
    net = plan.network
    if not net.needed:
        lines.append("network:     not needed")
    elif not net.needs_ip:
        lines.append("network:     links up, no IP configuration (AoE is layer 2)")
    else:
        lines.append(f"network:     {' '.join('ip=' + ip for ip in net.ip)}" + (" (implied)" if net.implied_dhcp else ""))
        lines.extend("             " + line for line in _network_lines(net))
    lines.append("mounts:")
    for step in mounts(plan, _read_layer(plan, root)):
        options = ",".join(step.options) or "defaults"
        lines.append(f"  {step.target}  <- {step.source}  [{step.fstype or 'auto'}; {options}]  {step.purpose}")
    lines.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(lines)
