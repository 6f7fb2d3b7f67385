"""The `kiwi-overlay` command's arguments: build_parser(), one subparser per subcommand (kiwi_overlay.cli runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiwi_overlay import cli

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    _Commands = argparse._SubParsersAction[argparse.ArgumentParser]  # the subcommands of `kiwi-overlay COMMAND`


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    from kiwi_overlay.config.plan import RUN_DIR, SYSROOT

    _add_cmdline_option(parser)
    parser.add_argument("--sysroot", type=Path, default=SYSROOT, metavar="DIR", help=f"where the root goes (default {SYSROOT})")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, metavar="DIR", help=f"where the layers go (default {RUN_DIR})")


def _add_dracut_commands(commands: _Commands) -> None:
    hook = commands.add_parser("dracut-cmdline", help="dracut cmdline hook: exit 0 for an overlay root, 1 for another root, 2 on failure")
    _add_cmdline_option(hook)
    hook.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help="write etc/cmdline.d and run/initramfs under DIR")
    hook.set_defaults(func=cli.cmd_dracut_cmdline)
    module = commands.add_parser("dracut-module", help="write the dracut module directory")
    module.add_argument("--output", type=Path, default=Path("55kiwi-overlay"), metavar="DIR", help="the module directory (55kiwi-overlay)")
    record = module.add_mutually_exclusive_group()
    record.add_argument("--command", type=Path, metavar="PATH", help="the kiwi-overlay dracut runs (default: this one)")
    record.add_argument("--no-command", action="store_true", help="record none: dracut looks in /usr/bin, /usr/local/bin, PATH")
    module.set_defaults(func=cli.cmd_dracut_module)
    python = commands.add_parser("dracut-python", help="dracut install(): put Python into an initrd, print the ELF files to install")
    python.add_argument("--initdir", type=Path, required=True, metavar="DIR", help="the initrd tree dracut builds")
    python.set_defaults(func=cli.cmd_dracut_python)


def _add_nbd_parser(commands: _Commands) -> None:
    from pathlib import Path

    nbd = commands.add_parser("nbd", help="NBD client: list exports, show one, attach or detach a device")
    nbd.set_defaults(func=cli.cmd_nbd)
    sub = nbd.add_subparsers(dest="nbd_command", required=True, metavar="ACTION")
    for name, text in (
        ("list", "export names on a server"),
        ("info", "size, flags and block sizes of an export"),
        ("attach", "attach an export as /dev/nbdN and print the device"),
    ):
        action = sub.add_parser(name, help=text)
        action.add_argument(
            "uri", metavar="HOST[:PORT]" if name == "list" else "URI", help="nbd://HOST[:PORT]/EXPORT, nbds://..., or HOST:EXPORT"
        )
        action.add_argument(
            "--timeout", type=float, default=30.0 if name != "attach" else 120.0, metavar="S", help="seconds to wait for the server"
        )
        action.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA bundle for nbds:// (default: the system's)")
        action.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate (with --tls-key)")
        action.add_argument("--tls-key", type=Path, metavar="FILE", help="client key")
        action.add_argument("--debug", action="store_true", help="print every step")
        if name in ("list", "info"):
            action.add_argument("--json", action="store_true", help="JSON" + (" with descriptions" if name == "list" else ""))
        else:
            action.add_argument("--device", type=Path, metavar="/dev/nbdN", help="use this device (default: one the kernel picks)")
            action.add_argument("--connections", type=int, default=1, metavar="N", help="connections when the server allows several")
            action.add_argument("--ioctl", action="store_true", help="the old ioctl interface even where netlink exists")
            action.add_argument(
                "--lost", default="wait", metavar="POLICY", help="wait, fail:SECONDS or reboot:SECONDS (as rd.root.overlay.nbd.lost)"
            )
    detach = sub.add_parser("detach", help="disconnect a device attached by kiwi-overlay")
    detach.add_argument("device", nargs="?", type=Path, metavar="/dev/nbdN")
    detach.add_argument("--all", action="store_true", help="every device kiwi-overlay attached (the shutdown hook)")
    detach.add_argument("--debug", action="store_true", help="print every step")


def _add_cmdline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cmdline", metavar="STRING", help="use this kernel command line instead of /etc/cmdline.d and /proc/cmdline")


def _add_explain(commands: _Commands) -> None:
    explain = commands.add_parser("explain", help="print the boot plan for a kernel command line")
    _add_cmdline_option(explain)
    explain.add_argument("--json", action="store_true", help="stable JSON instead of text")
    explain.set_defaults(func=cli.cmd_explain)


def _add_aoe(commands: _Commands) -> None:
    aoe = commands.add_parser("aoe", help="ATA over Ethernet targets").add_subparsers(dest="aoe_command", required=True, metavar="COMMAND")
    aoe_discover = aoe.add_parser("discover", help="list the AoE targets that answer a broadcast query (exit 1: none)")
    aoe_discover.add_argument(
        "--interface", action="append", metavar="IF", help="ask on IF (repeatable; default: every Ethernet link that is up)"
    )
    aoe_discover.add_argument("--timeout", type=float, default=2.0, metavar="S", help="collect answers for S seconds (default 2)")
    aoe_discover.add_argument("--json", action="store_true", help="JSON list with every field")
    aoe_discover.set_defaults(func=cli.cmd_aoe_discover)


def _add_verity(commands: _Commands) -> None:
    verity = commands.add_parser("verity", help="dm-verity for the read image").add_subparsers(
        dest="verity_command", required=True, metavar="ACTION"
    )
    verity_format = verity.add_parser("format", help="append veritysetup's hash tree to IMAGE, print rd.root.overlay.verity=ROOTHASH")
    verity_format.add_argument("image", type=Path, metavar="IMAGE", help="the read image (squashfs, erofs, ext4, ...), changed in place")
    verity_format.set_defaults(func=cli.cmd_verity_format)


def _add_net(commands: _Commands) -> None:
    net = commands.add_parser("net", help="network bring-up").add_subparsers(dest="net_command", required=True, metavar="ACTION")
    net_up = net.add_parser("up", help="configure the network as ip= (or a network root) says, unless it is already up")
    _add_cmdline_option(net_up)
    net_up.add_argument("--timeout", type=float, metavar="S", help="seconds (default: rd.root.overlay.timeout)")
    net_up.add_argument("--lease-dir", metavar="DIR", help="where lease-IFACE.json goes (default /run/kiwi-overlay)")
    net_up.add_argument("--resolv-conf", metavar="FILE", help="the resolv.conf to write name servers to (default /etc/resolv.conf)")
    net_up.set_defaults(func=cli.cmd_net_up)


def _add_prepare(commands: _Commands) -> None:
    for name, text in (("prepare", "attach the read device and mount the layers, not the root"), ("mount", "prepare, then mount the root")):
        command = commands.add_parser(name, help=text)
        _add_layout_options(command)
        command.set_defaults(func=cli.cmd_prepare)


def _add_status(commands: _Commands) -> None:
    from kiwi_overlay.config.plan import RUN_DIR

    status = commands.add_parser("status", help="the running overlay root: layers, device, server, connection, fill level (exit 1: none)")
    status.add_argument("--run-dir", type=Path, default=RUN_DIR, metavar="DIR", help=f"where the layers are (default {RUN_DIR})")
    status.add_argument("--json", action="store_true", help="JSON with every field")
    status.set_defaults(func=cli.cmd_status)


def _add_watch(commands: _Commands) -> None:
    watch = commands.add_parser("watch", help="warn on the kernel log at 80, 90, 95 %% fill of DIRECTORY's filesystem (runs until killed)")
    watch.add_argument("directory", type=Path, metavar="DIRECTORY", help="e.g. /run/overlay/overlayfs, the write layer")
    watch.add_argument("--interval", type=float, default=5.0, metavar="S", help="seconds between checks (default 5)")
    watch.set_defaults(func=cli.cmd_watch)


def _add_generate(commands: _Commands) -> None:
    generator = commands.add_parser("generate", help="systemd generator: units that mount an overlay root")
    generator.add_argument("normal_dir", type=Path, metavar="NORMAL_DIR")
    generator.add_argument("early_dir", type=Path, nargs="?", help=argparse.SUPPRESS)
    generator.add_argument("late_dir", nargs="?", help=argparse.SUPPRESS)
    _add_layout_options(generator)
    generator.set_defaults(func=cli.cmd_generate)


def _add_shutdown(commands: _Commands) -> None:
    stop = commands.add_parser("shutdown", help="shutdown hook: leave the write layer clean, detach the NBD devices")
    stop.add_argument("--run-dir", type=Path, action="append", default=[], metavar="DIR", help="where the layers are (repeatable)")
    stop.add_argument("--nbd-state-dir", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    stop.set_defaults(func=cli.cmd_shutdown)


# Each subcommand's name(s) and what adds its parser, in the order --help lists them.
_SUBCOMMANDS: tuple[tuple[tuple[str, ...], Callable[[_Commands], None]], ...] = (
    (("explain",), _add_explain),
    (("aoe",), _add_aoe),
    (("verity",), _add_verity),
    (("net",), _add_net),
    (("prepare", "mount"), _add_prepare),
    (("status",), _add_status),
    (("watch",), _add_watch),
    (("generate",), _add_generate),
    (("shutdown",), _add_shutdown),
    (("dracut-cmdline", "dracut-module", "dracut-python"), _add_dracut_commands),
    (("nbd",), _add_nbd_parser),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; with COMMAND (a subcommand's name), of that one alone.

    The hooks run one subcommand each, against the boot's clock: building every parser costs
    about 50 ms natively and a second in a TCG guest. A word that names no subcommand (--help,
    a typo) gets them all, so the usage and the error list every choice.
    """
    parser = argparse.ArgumentParser(prog="kiwi-overlay", description="Boot from a network or local block device with an overlay root.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    known = any(command in names for names, _ in _SUBCOMMANDS)
    for names, add in _SUBCOMMANDS:
        if not known or command in names:
            add(commands)
    return parser
