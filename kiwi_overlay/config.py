"""The boot plan: every kiwi-overlay option of the kernel command line, parsed and checked.

Parsing does no I/O. The result is a frozen `Plan` that `kiwi-overlay explain` prints and
the effects (network, attach, mounts) consume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from kiwi_overlay.cmdline import KernelCmdline, decimal_number, whole_number
from kiwi_overlay.errors import OptionError
from kiwi_overlay.foreign import foreign_option_notes
from kiwi_overlay.net.grammar import (
    Bond,
    Bridge,
    InterfaceName,
    IpConfig,
    StaticRoute,
    Vlan,
    parse_bond,
    parse_bootif_option,
    parse_bridge,
    parse_ifname,
    parse_ip_configs,
    parse_nameserver,
    parse_route,
    parse_vlan,
)

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

NBD_DEFAULT_PORT = 10809
DEFAULT_TIMEOUT = 120.0
DEFAULT_TMPFS_SIZE = "50%"
RUN_DIR = Path("/run/overlay")
SYSROOT = Path("/sysroot")

# dracut's by-* directories for the local root forms, and whether '/' and ' ' are escaped.
_LOCAL_FORMS: dict[str, tuple[str, bool]] = {
    "UUID": ("/dev/disk/by-uuid/", False),
    "PARTUUID": ("/dev/disk/by-partuuid/", False),
    "LABEL": ("/dev/disk/by-label/", True),
    "PARTLABEL": ("/dev/disk/by-partlabel/", True),
    "UNIXNODE": ("/dev/", False),
    "MAPPER": ("/dev/mapper/", False),
}
_WRITE_FORMS = ("UUID", "PARTUUID", "LABEL", "PARTLABEL")
_AOE_TARGET = re.compile(r"e([0-9]{1,5})\.([0-9]{1,3})")
_IFNAME = re.compile(r"[^/\s:]{1,15}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")
# ASCII digits only ([0-9], not \d): '٣g' must not pass the check and then fail the mount.
_SIZE = re.compile(r"([0-9]{1,19})([kmgt]?)", re.IGNORECASE)
_PERCENT = re.compile(r"([0-9]{1,3})%")
_MAX_TMPFS_BYTES = 1 << 62
_SECONDS = re.compile(r"[0-9]{1,7}(\.[0-9]{1,3})?")
# A comma that starts another URI in root=overlay:nbd://A/x,nbd://B/x
_URI_LIST = re.compile(r",(?=nbds?://)")
MAX_NBD_SERVERS = 8
MAX_LOST_SECONDS = 86400


@dataclass(frozen=True)
class NbdServer:
    host: str
    port: int
    export: str

    @property
    def address(self) -> str:
        """HOST:PORT, with an IPv6 host in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class LostPolicy:
    """rd.root.overlay.nbd.lost: what happens after SECONDS without any server."""

    action: Literal["wait", "fail", "reboot"]
    seconds: float | None  # None for wait


WAIT_FOREVER = LostPolicy(action="wait", seconds=None)


@dataclass(frozen=True)
class NbdRoot:
    servers: tuple[NbdServer, ...]  # serving the same image: attach through the first that answers, reconnect to any
    tls: bool
    connections: int
    io_timeout: float | None
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    lost: LostPolicy = WAIT_FOREVER
    transport: Literal["nbd"] = "nbd"

    @property
    def device(self) -> None:
        """The kernel picks the /dev/nbdN at attach time."""
        return None

    # The first server: where the network bring-up looks for a route, what messages name the root by.
    @property
    def host(self) -> str:
        return self.servers[0].host

    @property
    def port(self) -> int:
        return self.servers[0].port

    @property
    def export(self) -> str:
        return self.servers[0].export

    @property
    def address(self) -> str:
        return self.servers[0].address

    @property
    def uri(self) -> str:
        return self.server_uri(self.servers[0])

    def server_uri(self, server: NbdServer) -> str:
        return f"{'nbds' if self.tls else 'nbd'}://{server.address}/{server.export}"

    def through(self, server: NbdServer) -> NbdRoot:
        """This root reached through SERVER only (what a single connection attempt uses)."""
        return replace(self, servers=(server,))


@dataclass(frozen=True)
class AoeRoot:
    target: str | None  # "e0.1", or None: discover on `interface`
    interface: str | None
    interfaces: tuple[str, ...]  # rd.root.overlay.aoe.interfaces; empty: decided at boot
    transport: Literal["aoe"] = "aoe"

    @property
    def device(self) -> Path | None:
        return Path("/dev/etherd") / self.target if self.target else None


@dataclass(frozen=True)
class LocalRoot:
    spec: str  # as given after "overlay:", e.g. "LABEL=root"
    device: Path
    transport: Literal["local"] = "local"


@dataclass(frozen=True)
class DhcpRoot:
    """root=dhcp: the root is named by the DHCP server's root-path option (17), known after the lease."""

    cmdline: str  # the command line, for the options of the root the server names
    transport: Literal["dhcp"] = "dhcp"

    @property
    def device(self) -> None:
        return None


Root = NbdRoot | AoeRoot | LocalRoot | DhcpRoot


def _bytes(size: re.Match[str]) -> int:
    """The byte count of a _SIZE match."""
    return int(size[1]) << (10 * " kmgt".index(size[2].lower() or " "))


@dataclass(frozen=True)
class WriteLayer:
    kind: Literal["tmpfs", "device", "none"]
    size: str  # tmpfs size= option: "50%" or a byte count with optional k/m/g/t suffix
    device: Path | None  # the write device, when kind is "device" or asked for but overridden
    reset: bool
    fallback_tmpfs: bool
    fsck: bool  # check a write device with its filesystem's tool before mounting it

    @property
    def size_bytes(self) -> int | None:
        match = _SIZE.fullmatch(self.size)
        return _bytes(match) if match else None


@dataclass(frozen=True)
class Network:
    needed: bool  # links must be up before the root can be attached
    needs_ip: bool  # ... and carry an IP configuration
    ip: tuple[str, ...]  # every ip= as given; ("dhcp",) implied without one when an address is needed
    implied_dhcp: bool
    configs: tuple[IpConfig, ...]  # ip (implied dhcp included), parsed
    interface_names: tuple[InterfaceName, ...]  # ifname=
    bootif: str | None  # BOOTIF= MAC: the NIC that PXE booted from
    nameservers: tuple[str, ...]  # nameserver=
    routes: tuple[StaticRoute, ...]  # rd.route=
    bonds: tuple[Bond, ...]  # bond=
    bridges: tuple[Bridge, ...]  # bridge=
    vlans: tuple[Vlan, ...]  # vlan= (created last: a VLAN may sit on a bond or bridge)
    bootdev: str | None  # bootdev=: the interface ip= without a name uses
    peerdns: bool  # rd.peerdns=0: name servers from DHCP are not used
    team: tuple[str, ...]  # team=: refused when kiwi-overlay configures the network (no teamd)


@dataclass(frozen=True)
class Partition:
    """rd.root.overlay.partition: the partition of the attached device that holds the read layer."""

    by: Literal["number", "PARTLABEL", "PARTUUID", "LABEL", "UUID"]
    value: str  # the number, label or UUID

    @property
    def text(self) -> str:
        return self.value if self.by == "number" else f"{self.by}={self.value}"


@dataclass(frozen=True)
class Plan:
    root: Root | None
    write: WriteLayer
    network: Network
    readonly: bool
    rootfstype: str | None
    rootflags: str | None
    timeout: float
    debug: bool
    partition: Partition | None = None
    ram: bool = False  # rd.root.overlay.ram: the read layer copied into RAM, the device detached
    notes: tuple[str, ...] = ()  # one line per option of dracut's own modules that kiwi-overlay does not read
    verity: str | None = None  # rd.root.overlay.verity: the dm-verity root hash (lowercase hex) the read layer must match


def _positive_number(cmdline: KernelCmdline, option: str, default: float | None, example: str) -> float | None:
    value = cmdline.getarg(option)
    if value is None:
        return default
    number = decimal_number(value, high=1e9)
    if number is None:
        raise OptionError(option, value, "must be a positive number of seconds below 1000000000", f"{option}={example}")
    return number


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(whole_number(part, low=0, high=255) is not None for part in parts)


class _Fail:
    """Builds the OptionError for one option value, so helpers only say what is wrong."""

    def __init__(self, option: str, value: str, example: str) -> None:
        self.option, self.value, self.example = option, value, example

    def __call__(self, problem: str) -> OptionError:
        return OptionError(self.option, self.value, problem, self.example)


def _check_host(host: str, fail: _Fail) -> str:
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else ""
        if ":" not in inner or not re.fullmatch(r"[0-9A-Fa-f:.]+(%[^\s\]]+)?", inner):
            raise fail(f"{host!r} is not a bracketed IPv6 address")
        return inner
    numeric = re.fullmatch(r"[0-9.]+", host)
    if not _HOSTNAME.fullmatch(host) or (numeric and not _is_ipv4(host)):
        raise fail(f"{host!r} is not a host name or IPv4 address")
    return host


def _split_host_port(hostport: str, fail: _Fail) -> tuple[str, int]:
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port = hostport[: close + 1], hostport[close + 1 :]
        if port and not port.startswith(":"):
            raise fail(f"{hostport!r} is not [IPv6]:PORT")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
    if not port and not hostport.endswith(":"):
        return _check_host(host, fail), NBD_DEFAULT_PORT
    number = whole_number(port, low=1, high=65535)
    if number is None:
        raise fail(f"port {port[:20]!r} is not a number from 1 to 65535")
    return _check_host(host, fail), number


def parse_nbd_address(address: str, *, option: str = "URI", shown: str | None = None) -> tuple[str, int, str, bool]:
    """(host, port, export, tls) from `nbd://H[:P]/EXPORT`, `nbds://...` or KIWI's `H:EXPORT`.

    Errors name OPTION and SHOWN (the whole value as the user wrote it; ADDRESS by default).
    """
    example = "root=overlay:nbd=192.168.1.1:rootfs" if option == "root" else "nbd://192.168.1.1:10809/rootfs"
    fail = _Fail(option, address if shown is None else shown, example)
    scheme, sep, rest = address.partition("://")
    if sep:
        if scheme not in ("nbd", "nbds"):
            raise fail(f"unknown scheme {scheme!r} (nbd:// or nbds://)")
        hostport, slash, export = rest.partition("/")
        if not slash or not hostport:
            raise fail("needs nbd://HOST[:PORT]/EXPORT")
        from urllib.parse import unquote

        host, port = _split_host_port(hostport, fail)
        return host, port, unquote(export), scheme == "nbds"
    if address.startswith("["):
        close = address.find("]")
        host, colon, export = address[: close + 1], address[close + 1 : close + 2], address[close + 2 :]
    else:
        host, colon, export = address.partition(":")
    if colon != ":" or not export:
        raise fail("needs HOST:EXPORT (the export name is missing)")
    return _check_host(host, fail), NBD_DEFAULT_PORT, export, False


def parse_nbd_servers(address: str, *, option: str = "URI", shown: str | None = None) -> tuple[tuple[NbdServer, ...], bool]:
    """The servers and TLS of `HOST1,HOST2:EXPORT` or `URI1,URI2` (one server: any parse_nbd_address form).

    URIs are split only where a comma starts another nbd:// or nbds:// (an export name may hold commas);
    all of them use TLS or none.
    """
    example = "root=overlay:nbd=10.0.0.1,10.0.0.2:rootfs" if option == "root" else "nbd://10.0.0.1/rootfs,nbd://10.0.0.2/rootfs"
    fail = _Fail(option, address if shown is None else shown, example)
    if "://" in address:
        parsed = [parse_nbd_address(uri, option=option, shown=shown or address) for uri in _URI_LIST.split(address)]
    else:
        colon = _export_colon(address)
        if colon < 0:
            parsed = [parse_nbd_address(address, option=option, shown=shown)]
        else:
            export = address[colon:]
            parsed = [parse_nbd_address(host + export, option=option, shown=shown or address) for host in address[:colon].split(",")]
    if len({tls for *_, tls in parsed}) > 1:
        raise fail("nbd:// and nbds:// mixed: all servers use TLS or none")
    servers = [NbdServer(host, port, export) for host, port, export, _ in parsed]
    if len(servers) > MAX_NBD_SERVERS:
        raise fail(f"{len(servers)} servers; at most {MAX_NBD_SERVERS}")
    if len(set(servers)) < len(servers):
        raise fail("a server is named twice")
    return tuple(servers), parsed[0][3]


def _export_colon(address: str) -> int:
    """Where the export starts in `HOST1,[IPV6]:EXPORT`: the first ':' outside brackets; -1 without one."""
    inside = False
    for index, char in enumerate(address):
        if char in "[]":
            inside = char == "["
        elif char == ":" and not inside:
            return index
    return -1


def parse_lost_policy(value: str | None, *, option: str = "rd.root.overlay.nbd.lost") -> LostPolicy:
    """`wait`, `fail:SECONDS` or `reboot:SECONDS` (None: wait)."""
    if value is None or value == "wait":
        return WAIT_FOREVER
    action, colon, seconds = value.partition(":")
    if action not in ("fail", "reboot") or not colon or not _SECONDS.fullmatch(seconds) or not 1 <= float(seconds) <= MAX_LOST_SECONDS:
        raise OptionError(option, value, f"must be wait, fail:SECONDS or reboot:SECONDS (1 to {MAX_LOST_SECONDS})", f"{option}=reboot:300")
    return LostPolicy(action="fail" if action == "fail" else "reboot", seconds=float(seconds))


def _parse_nbd(cmdline: KernelCmdline, root: str, address: str) -> NbdRoot:
    servers, tls = parse_nbd_servers(address, option="root", shown=root)
    connections_text = cmdline.getarg("rd.root.overlay.nbd.connections")
    connections = 1
    if connections_text is not None:
        number = whole_number(connections_text, low=1, high=16)
        if number is None:
            raise OptionError(
                "rd.root.overlay.nbd.connections",
                connections_text,
                "must be a whole number from 1 to 16",
                "rd.root.overlay.nbd.connections=4",
            )
        connections = number
    tls_files = {}
    for name in ("ca", "cert", "key"):
        option = f"rd.root.overlay.nbd.tls.{name}"
        text = cmdline.getarg(option)
        if text is not None and not text.startswith("/"):
            raise OptionError(option, text, "must be an absolute path of a file in the initrd", f"{option}=/etc/kiwi-overlay/{name}.pem")
        tls_files[name] = Path(text) if text else None
    if (tls_files["cert"] is None) != (tls_files["key"] is None):
        given = "cert" if tls_files["cert"] else "key"
        raise OptionError(
            f"rd.root.overlay.nbd.tls.{given}",
            str(tls_files[given]),
            "a client certificate needs both .cert and .key",
            "rd.root.overlay.nbd.tls.cert=/etc/c.pem rd.root.overlay.nbd.tls.key=/etc/k.pem",
        )
    return NbdRoot(
        servers=servers,
        tls=tls or any(tls_files.values()),
        connections=connections,
        io_timeout=_positive_number(cmdline, "rd.root.overlay.nbd.timeout", None, "30"),
        tls_ca=tls_files["ca"],
        tls_cert=tls_files["cert"],
        tls_key=tls_files["key"],
        lost=parse_lost_policy(cmdline.getarg("rd.root.overlay.nbd.lost")),
    )


def _parse_aoe(cmdline: KernelCmdline, root: str, value: str) -> AoeRoot:
    interfaces_text = cmdline.getarg("rd.root.overlay.aoe.interfaces")
    interfaces: tuple[str, ...] = ()
    if interfaces_text is not None:
        interfaces = tuple(name for name in interfaces_text.split(",") if name)
        bad = [name for name in interfaces if not _IFNAME.fullmatch(name) or name in (".", "..")]
        if bad or not interfaces:
            raise OptionError(
                "rd.root.overlay.aoe.interfaces",
                interfaces_text,
                "needs interface names separated by commas",
                "rd.root.overlay.aoe.interfaces=eth0,eth1",
            )
    target = _AOE_TARGET.fullmatch(value)
    if target:
        shelf, slot = int(target[1]), int(target[2])
        if shelf >= 0xFFFF or slot >= 0xFF:
            raise OptionError("root", root, "shelf must be below 65535 and slot below 255", "root=overlay:aoe=e0.1")
        return AoeRoot(target=f"e{shelf}.{slot}", interface=None, interfaces=interfaces)
    # \d on purpose: anything that looks like eSHELF.SLOT, in any digits, is a target and not an interface.
    if re.match(r"e\d", value) and "." in value:
        raise OptionError("root", root, f"{value!r} is not an AoE target eSHELF.SLOT", "root=overlay:aoe=e0.1")
    if not value or not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise OptionError("root", root, "needs an AoE target eSHELF.SLOT or an interface name", "root=overlay:aoe=e0.1")
    return AoeRoot(target=None, interface=value, interfaces=interfaces or (value,))


def escape_by_name(name: str) -> str:
    """Escape a label the way udev names /dev/disk/by-label links (as dracut does)."""
    return name.replace("/", "\\x2f").replace(" ", "\\x20")


def device_from_spec(
    spec: str, *, option: str, example: str, shown: str | None = None, forms: tuple[str, ...] = tuple(_LOCAL_FORMS)
) -> Path:
    """The block device path for `UUID=...`-style SPEC, or SPEC itself when it is a /dev path.

    Errors name OPTION and SHOWN (the whole value as the user wrote it; SPEC by default).
    """
    fail = _Fail(option, spec if shown is None else shown, example)
    if spec.startswith("/dev/"):
        if ".." in spec.split("/"):
            raise fail("a /dev path without .. is needed (it must name a device under /dev)")
        return Path(spec)
    key, sep, name = spec.partition("=")
    if not sep or key not in forms:
        raise fail(f"needs a /dev path or one of {', '.join(f + '=' for f in forms)}")
    if not name:
        raise fail(f"{key}= needs a value")
    directory, escaped = _LOCAL_FORMS[key]
    # UNIXNODE may name a nested node (mapper/x); the others are single path components.
    if ".." in name.split("/") or name == "." or (not escaped and key != "UNIXNODE" and "/" in name):
        raise fail(f"{name!r} is not a valid {key}")
    return Path(directory + (escape_by_name(name) if escaped else name))


def root_from_root_path(root_path: str, cmdline_text: str) -> NbdRoot | AoeRoot | LocalRoot:
    """The root a DHCP root-path names: `overlay:...` (any root=overlay: form), `nbd://`/`nbds://`, or dracut's `nbd:`."""
    from kiwi_overlay.foreign import nbd_uri_from_dracut

    fail = _Fail("root", "dhcp", "a root-path of overlay:nbd=192.168.1.1:rootfs or nbd://192.168.1.1/rootfs")
    spec = root_path.strip()
    if spec.startswith(("nbd://", "nbds://")):
        spec = "overlay:" + spec
    elif spec.startswith("nbd:"):
        converted = nbd_uri_from_dracut(spec)
        if converted is None:
            raise fail(f"the DHCP root-path {root_path!r} is not dracut's nbd:SERVER:PORT/EXPORT")
        spec = converted[0].removeprefix("root=")
    if not spec.startswith("overlay:"):
        raise fail(f"the DHCP root-path {root_path!r} is not an overlay root (overlay:..., nbd://, nbds:// or nbd:)")
    try:
        root = _parse_root(KernelCmdline(cmdline_text), spec)
    except OptionError as error:
        raise fail(f"the DHCP root-path {root_path!r}: {error}") from None
    assert not isinstance(root, DhcpRoot)
    return root


def _parse_root(cmdline: KernelCmdline, root: str) -> Root:
    spec = root.removeprefix("overlay:")
    kind, sep, value = spec.partition("=")
    if (kind == "nbd" and sep) or spec.startswith(("nbd://", "nbds://")):
        return _parse_nbd(cmdline, root, spec if "://" in spec else value)
    if kind == "aoe" and sep:
        return _parse_aoe(cmdline, root, value)
    if kind in _LOCAL_FORMS and sep:
        return LocalRoot(spec=spec, device=device_from_spec(spec, option="root", example="root=overlay:LABEL=root", shown=root))
    raise OptionError(
        "root",
        root,
        "unknown overlay root; use nbd=, nbd://, nbds://, aoe=, or " + ", ".join(f + "=" for f in _LOCAL_FORMS),
        "root=overlay:nbd=192.168.1.1:rootfs",
    )


def _parse_size(cmdline: KernelCmdline) -> str:
    value = cmdline.getarg("rd.root.overlay.size")
    if value is None:
        return DEFAULT_TMPFS_SIZE
    percent = _PERCENT.fullmatch(value)
    size = _SIZE.fullmatch(value)
    if (percent and 1 <= int(percent[1]) <= 100) or (size and 0 < _bytes(size) <= _MAX_TMPFS_BYTES):
        return value.lower()
    raise OptionError(
        "rd.root.overlay.size", value, "must be a percentage of RAM (1-100%) or a size with k, m, g or t", "rd.root.overlay.size=2g"
    )


def _parse_write(cmdline: KernelCmdline, readonly: bool) -> WriteLayer:
    size = _parse_size(cmdline)
    spec = cmdline.getarg("rd.root.overlay.write")
    device = None
    if spec is not None:
        device = device_from_spec(spec, option="rd.root.overlay.write", example="rd.root.overlay.write=LABEL=cow", forms=_WRITE_FORMS)
    fallback = cmdline.getarg("rd.root.overlay.write.fallback")
    if fallback not in (None, "tmpfs"):
        raise OptionError("rd.root.overlay.write.fallback", fallback, "the only fallback is tmpfs", "rd.root.overlay.write.fallback=tmpfs")
    if readonly:
        kind: Literal["tmpfs", "device", "none"] = "none"
    elif device and not cmdline.getargbool("rd.root.overlay.temporary"):
        kind = "device"
    else:
        kind = "tmpfs"
    return WriteLayer(
        kind=kind,
        size=size,
        device=device,
        reset=cmdline.getargbool("rd.root.overlay.reset"),
        fallback_tmpfs=fallback == "tmpfs",
        fsck=cmdline.getargbool("rd.root.overlay.write.fsck", default=True) and not cmdline.getargbool("rd.skipfsck"),
    )


def _parse_network(cmdline: KernelCmdline, root: Root | None) -> Network:
    ip = cmdline.getargs("ip")
    neednet = cmdline.getargbool("rd.neednet")
    if isinstance(root, (NbdRoot, DhcpRoot)):
        needed, needs_ip = True, True
    elif isinstance(root, AoeRoot):
        # AoE is layer 2: links up, no addresses; a DHCP wait would hang on a segment without a server.
        needed, needs_ip = True, bool(ip) or neednet
    else:
        needed, needs_ip = neednet, neednet
    # As dracut: an address needed and no ip= means DHCP on every link (the first lease wins).
    implied = needs_ip and not ip
    ip = ip or ("dhcp",) * implied
    bonds = tuple(map(parse_bond, cmdline.getargs("bond")))
    bridges = tuple(map(parse_bridge, cmdline.getargs("bridge")))
    vlans = tuple(map(parse_vlan, cmdline.getargs("vlan")))
    names = [bond.name for bond in bonds] + [bridge.name for bridge in bridges] + [vlan.name for vlan in vlans]
    for twice in {name for name in names if names.count(name) > 1}:
        raise OptionError("vlan/bond/bridge", twice, "is created twice", "bond=bond0:eth0,eth1 vlan=bond0.42:bond0")
    bootdev = cmdline.getarg("bootdev") or None
    if bootdev is not None and not _IFNAME.fullmatch(bootdev):
        raise OptionError("bootdev", bootdev, "is not an interface name", "bootdev=eth0")
    return Network(
        needed=needed,
        needs_ip=needs_ip,
        ip=ip,
        implied_dhcp=implied,
        configs=parse_ip_configs(ip),
        interface_names=tuple(map(parse_ifname, cmdline.getargs("ifname"))),
        bootif=parse_bootif_option(cmdline),
        nameservers=tuple(map(parse_nameserver, cmdline.getargs("nameserver"))),
        routes=tuple(map(parse_route, cmdline.getargs("rd.route"))),
        bonds=bonds,
        bridges=bridges,
        vlans=vlans,
        bootdev=bootdev,
        peerdns=cmdline.getargbool("rd.peerdns", default=True),
        team=cmdline.getargs("team"),
    )


_PARTITION_TAGS: tuple[Literal["PARTLABEL", "PARTUUID", "LABEL", "UUID"], ...] = ("PARTLABEL", "PARTUUID", "LABEL", "UUID")


def _parse_partition(cmdline: KernelCmdline) -> Partition | None:
    text = cmdline.getarg("rd.root.overlay.partition")
    if text is None:
        return None
    if text.isdigit() and 1 <= int(text) <= 255:
        return Partition(by="number", value=str(int(text)))
    key, _, value = text.partition("=")
    for tag in _PARTITION_TAGS:
        if key == tag and value:
            return Partition(by=tag, value=value)
    raise OptionError(
        "rd.root.overlay.partition",
        text,
        "needs a partition number (1-255) or " + ", ".join(f"{tag}=" for tag in _PARTITION_TAGS) + " with a value",
        "rd.root.overlay.partition=2",
    )


def _parse_verity(cmdline: KernelCmdline) -> str | None:
    from kiwi_overlay.verity import ROOT_HASH_LENGTHS

    value = cmdline.getarg("rd.root.overlay.verity")
    if value is None:
        return None
    if len(value) not in ROOT_HASH_LENGTHS or not re.fullmatch(r"[0-9A-Fa-f]+", value):
        raise OptionError(
            "rd.root.overlay.verity",
            value,
            "needs the root hash that veritysetup format printed (64 hex digits for sha256)",
            "rd.root.overlay.verity=" + "4f" * 32,
        )
    return value.lower()


def is_overlay_root(cmdline: KernelCmdline) -> bool:
    """root=overlay:..., or root=dhcp (the DHCP server names an overlay root)."""
    root = cmdline.getarg("root")
    return root is not None and (root.startswith("overlay:") or root == "dhcp")


def parse_plan(cmdline: KernelCmdline) -> Plan:
    """The plan for CMDLINE; raises OptionError (one line) for any unusable option."""
    root_text = cmdline.getarg("root")
    root: Root | None = None
    if root_text == "dhcp":
        root = DhcpRoot(cmdline=cmdline.text)
    elif root_text and root_text.startswith("overlay:"):
        root = _parse_root(cmdline, root_text)
    readonly = cmdline.getargbool("rd.root.overlay.readonly")
    rootfstype = cmdline.getarg("rootfstype") or None
    if rootfstype is not None and not re.fullmatch(r"[a-z0-9_.]+", rootfstype):
        raise OptionError("rootfstype", rootfstype, "is not a filesystem type", "rootfstype=squashfs")
    return Plan(
        root=root,
        write=_parse_write(cmdline, readonly),
        network=_parse_network(cmdline, root),
        readonly=readonly,
        rootfstype=rootfstype,
        rootflags=cmdline.getarg("rootflags") or None,
        timeout=_positive_number(cmdline, "rd.root.overlay.timeout", DEFAULT_TIMEOUT, "120") or DEFAULT_TIMEOUT,
        debug=cmdline.getargbool("rd.kiwi.debug") or cmdline.getargbool("rd.debug"),
        partition=_parse_partition(cmdline),
        ram=cmdline.getargbool("rd.root.overlay.ram"),
        notes=foreign_option_notes(cmdline) if root is not None else (),
        verity=_parse_verity(cmdline),
    )
