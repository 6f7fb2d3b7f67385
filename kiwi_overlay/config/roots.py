"""root=overlay:...: the NBD (servers, URIs, TLS files, lost policy), AoE and local root forms, and a DHCP root-path."""

from __future__ import annotations

import re
from pathlib import Path

from kiwi_overlay.cmdline import KernelCmdline, whole_number
from kiwi_overlay.config.claim import LOCAL_FORMS, root_transport
from kiwi_overlay.config.plan import WAIT_FOREVER, AoeRoot, DhcpRoot, LocalRoot, LostPolicy, NbdRoot, NbdServer, Root
from kiwi_overlay.config.values import OptionErrors, check_host, device_from_spec, is_interface_name, positive_number
from kiwi_overlay.errors import OptionError

NBD_DEFAULT_PORT = 10809
MAX_NBD_SERVERS = 8
MAX_LOST_SECONDS = 86400
_AOE_TARGET = re.compile(r"e([0-9]{1,5})\.([0-9]{1,3})")
_SECONDS = re.compile(r"[0-9]{1,7}(\.[0-9]{1,3})?")
# A comma that starts another URI in root=overlay:nbd://A/x,nbd://B/x
_URI_LIST = re.compile(r",(?=nbds?://)")


def _split_host_port(hostport: str, fail: OptionErrors) -> tuple[str, int]:
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port = hostport[: close + 1], hostport[close + 1 :]
        if port and not port.startswith(":"):
            raise fail(f"{hostport!r} is not [IPv6]:PORT")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
    if not port and not hostport.endswith(":"):
        return check_host(host, fail), NBD_DEFAULT_PORT
    number = whole_number(port, low=1, high=65535)
    if number is None:
        raise fail(f"port {port[:20]!r} is not a number from 1 to 65535")
    return check_host(host, fail), number


def parse_nbd_address(address: str, *, option: str = "URI", shown: str | None = None) -> tuple[str, int, str, bool]:
    """(host, port, export, tls) from `nbd://H[:P]/EXPORT`, `nbds://...` or KIWI's `H:EXPORT`.

    Errors name OPTION and SHOWN (the whole value as the user wrote it; ADDRESS by default).
    """
    example = "root=overlay:nbd=192.168.1.1:rootfs" if option == "root" else "nbd://192.168.1.1:10809/rootfs"
    fail = OptionErrors(option, address if shown is None else shown, example)
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
    return check_host(host, fail), NBD_DEFAULT_PORT, export, False


def parse_nbd_servers(address: str, *, option: str = "URI", shown: str | None = None) -> tuple[tuple[NbdServer, ...], bool]:
    """The servers and TLS of `HOST1,HOST2:EXPORT` or `URI1,URI2` (one server: any parse_nbd_address form).

    URIs are split only where a comma starts another nbd:// or nbds:// (an export name may hold commas);
    all of them use TLS or none.
    """
    example = "root=overlay:nbd=10.0.0.1,10.0.0.2:rootfs" if option == "root" else "nbd://10.0.0.1/rootfs,nbd://10.0.0.2/rootfs"
    fail = OptionErrors(option, address if shown is None else shown, example)
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
        io_timeout=positive_number(cmdline, "rd.root.overlay.nbd.timeout", None, "30"),
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
        bad = [name for name in interfaces if not is_interface_name(name)]
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
    if not is_interface_name(value):
        raise OptionError("root", root, "needs an AoE target eSHELF.SLOT or an interface name", "root=overlay:aoe=e0.1")
    return AoeRoot(target=None, interface=value, interfaces=interfaces or (value,))


def root_from_root_path(root_path: str, cmdline_text: str) -> NbdRoot | AoeRoot | LocalRoot:
    """The root a DHCP root-path names: `overlay:...` (any root=overlay: form), `nbd://`/`nbds://`, or dracut's `nbd:`."""
    from kiwi_overlay.foreign import nbd_uri_from_dracut

    fail = OptionErrors("root", "dhcp", "a root-path of overlay:nbd=192.168.1.1:rootfs or nbd://192.168.1.1/rootfs")
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
        root = parse_root(KernelCmdline(cmdline_text), spec)
    except OptionError as error:
        raise fail(f"the DHCP root-path {root_path!r}: {error}") from None
    assert not isinstance(root, DhcpRoot)
    return root


def parse_root(cmdline: KernelCmdline, root: str) -> Root:
    spec = root.removeprefix("overlay:")
    value = spec.partition("=")[2]
    transport = root_transport(root)
    if transport == "nbd":
        return _parse_nbd(cmdline, root, spec if "://" in spec else value)
    if transport == "aoe":
        return _parse_aoe(cmdline, root, value)
    if transport == "local":
        return LocalRoot(spec=spec, device=device_from_spec(spec, option="root", example="root=overlay:LABEL=root", shown=root))
    raise OptionError(
        "root",
        root,
        "unknown overlay root; use nbd=, nbd://, nbds://, aoe=, or " + ", ".join(f + "=" for f in LOCAL_FORMS),
        "root=overlay:nbd=192.168.1.1:rootfs",
    )
