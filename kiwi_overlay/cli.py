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


def cmd_net_up(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kiwi_overlay.net import LEASE_DIR, RESOLV_CONF, bring_up

    plan = load_plan(args)
    bring_up(
        plan,
        timeout=args.timeout or plan.timeout,
        lease_dir=Path(args.lease_dir) if args.lease_dir else LEASE_DIR,
        resolv_conf=Path(args.resolv_conf) if args.resolv_conf else RESOLV_CONF,
    )
    return 0


def _add_cmdline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cmdline", metavar="STRING", help="use this kernel command line instead of /etc/cmdline.d and /proc/cmdline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiwi-overlay", description="Boot from a network or local block device with an overlay root.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser("explain", help="print the boot plan for a kernel command line")
    _add_cmdline_option(explain)
    explain.add_argument("--json", action="store_true", help="stable JSON instead of text")
    explain.set_defaults(func=cmd_explain)

    net = commands.add_parser("net", help="network bring-up").add_subparsers(dest="net_command", required=True, metavar="ACTION")
    net_up = net.add_parser("up", help="configure the network as ip= says, unless the root server is already reachable")
    _add_cmdline_option(net_up)
    net_up.add_argument("--timeout", type=float, metavar="S", help="seconds (default: rd.root.overlay.timeout)")
    net_up.add_argument("--lease-dir", metavar="DIR", help="where lease-IFACE.json goes (default /run/kiwi-overlay)")
    net_up.add_argument("--resolv-conf", metavar="FILE", help="the resolv.conf to write name servers to (default /etc/resolv.conf)")
    net_up.set_defaults(func=cmd_net_up)
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
