"""The frozen dataclasses of the boot plan: what `kiwi-overlay explain` prints and the effects consume."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from kiwi_overlay.config.values import byte_size
from kiwi_overlay.net.grammar import Bond, Bridge, InterfaceName, IpConfig, StaticRoute, Vlan

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

# The fixed places of every plan: kiwi-overlay's run directory and dracut's new root.
RUN_DIR = Path("/run/overlay")
SYSROOT = Path("/sysroot")


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
        return byte_size(self.size)


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
