"""The `kiwi-overlay` command: one subcommand per step the initrd (or a person) runs.

Subcommands import what they need when they run: the boot path pays only for its own step.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kiwi_overlay.errors import KiwiOverlayError

if TYPE_CHECKING:
    from kiwi_overlay.config import Plan


def load_plan(args: argparse.Namespace) -> Plan:
    """The plan for --cmdline, or for this machine's command line; turns on rd.kiwi.debug logging."""
    from kiwi_overlay import log
    from kiwi_overlay.cmdline import KernelCmdline
    from kiwi_overlay.config import parse_plan

    plan = parse_plan(KernelCmdline(args.cmdline) if args.cmdline is not None else KernelCmdline.from_system())
    log.configure(debug=plan.debug)
    return plan


def cmd_explain(args: argparse.Namespace) -> int:
    from kiwi_overlay.explain import describe, plan_dict

    plan = load_plan(args)
    if args.json:
        import json

        print(json.dumps(plan_dict(plan), indent=2, sort_keys=True))
    else:
        print(describe(plan))
    return 0


def cmd_nbd(args: argparse.Namespace) -> int:
    from kiwi_overlay.nbd.command import run_nbd_command

    return run_nbd_command(args)


def _add_nbd_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pathlib import Path

    nbd = commands.add_parser("nbd", help="NBD client: list exports, show one, attach or detach a device")
    nbd.set_defaults(func=cmd_nbd)
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
    detach = sub.add_parser("detach", help="disconnect a device attached by kiwi-overlay")
    detach.add_argument("device", nargs="?", type=Path, metavar="/dev/nbdN")
    detach.add_argument("--all", action="store_true", help="every device kiwi-overlay attached (the shutdown hook)")
    detach.add_argument("--debug", action="store_true", help="print every step")


def _add_cmdline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cmdline", metavar="STRING", help="use this kernel command line instead of /etc/cmdline.d and /proc/cmdline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiwi-overlay", description="Boot from a network or local block device with an overlay root.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser("explain", help="print the boot plan for a kernel command line")
    _add_cmdline_option(explain)
    explain.add_argument("--json", action="store_true", help="stable JSON instead of text")
    explain.set_defaults(func=cmd_explain)
    _add_nbd_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KiwiOverlayError as error:
        print(f"kiwi-overlay: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
