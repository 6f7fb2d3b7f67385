"""The `kiwi-overlay` command: one subcommand per step the initrd (or a person) runs.

Subcommands import what they need when they run: the boot path pays only for its own step.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
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


def cmd_prepare(args: argparse.Namespace) -> int:
    import signal

    from kiwi_overlay.boot import prepare_root

    # systemd's TimeoutStartSec ends the service with SIGTERM: unwind, so the undo unmounts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    plan = load_plan(args)
    prepare_root(plan, run_dir=args.run_dir.absolute(), sysroot=args.sysroot.absolute(), mount_root=args.command == "mount")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from kiwi_overlay.cmdline import KernelCmdline
    from kiwi_overlay.generator import generate

    cmdline = KernelCmdline(args.cmdline) if args.cmdline is not None else KernelCmdline.from_system()
    generate(cmdline, args.normal_dir, run_dir=args.run_dir.absolute(), sysroot=args.sysroot.absolute())
    return 0


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    from kiwi_overlay.config import RUN_DIR, SYSROOT

    _add_cmdline_option(parser)
    parser.add_argument("--sysroot", type=Path, default=SYSROOT, metavar="DIR", help=f"where the root goes (default {SYSROOT})")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, metavar="DIR", help=f"where the layers go (default {RUN_DIR})")


def _add_cmdline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cmdline", metavar="STRING", help="use this kernel command line instead of /etc/cmdline.d and /proc/cmdline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiwi-overlay", description="Boot from a network or local block device with an overlay root.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser("explain", help="print the boot plan for a kernel command line")
    _add_cmdline_option(explain)
    explain.add_argument("--json", action="store_true", help="stable JSON instead of text")
    explain.set_defaults(func=cmd_explain)

    for name, text in (("prepare", "attach the read device and mount the layers, not the root"), ("mount", "prepare, then mount the root")):
        command = commands.add_parser(name, help=text)
        _add_layout_options(command)
        command.set_defaults(func=cmd_prepare)
    generator = commands.add_parser("generate", help="systemd generator: units that mount an overlay root")
    generator.add_argument("normal_dir", type=Path, metavar="NORMAL_DIR")
    generator.add_argument("early_dir", nargs="?", help=argparse.SUPPRESS)
    generator.add_argument("late_dir", nargs="?", help=argparse.SUPPRESS)
    _add_layout_options(generator)
    generator.set_defaults(func=cmd_generate)
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
