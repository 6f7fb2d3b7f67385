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


def cmd_dracut_cmdline(args: argparse.Namespace) -> int:
    from kiwi_overlay.dracut_cmdline import prepare

    return 0 if prepare(load_plan(args), root=args.root) else 1


def cmd_dracut_module(args: argparse.Namespace) -> int:
    from kiwi_overlay.dracut_module import emit

    emit(args.output, python=args.python or Path(sys.executable))
    return 0


def cmd_dracut_python(args: argparse.Namespace) -> int:
    from kiwi_overlay.pyclosure import Closure, install_tree

    closure = Closure.parse(args.closure.read_text(), source=args.closure)
    for path in install_tree(closure, initdir=args.initdir):
        print(path)
    return 0


def _add_dracut_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hook = commands.add_parser("dracut-cmdline", help="dracut cmdline hook: exit 0 for an overlay root, 1 for another root, 2 if invalid")
    _add_cmdline_option(hook)
    hook.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help="write etc/cmdline.d and run/initramfs under DIR")
    hook.set_defaults(func=cmd_dracut_cmdline)
    module = commands.add_parser("dracut-module", help="write the dracut module directory")
    module.add_argument("--output", type=Path, default=Path("55kiwi-overlay"), metavar="DIR", help="the module directory (55kiwi-overlay)")
    module.add_argument("--python", type=Path, metavar="PATH", help="the Python for the initrd (default: this one)")
    module.set_defaults(func=cmd_dracut_module)
    python = commands.add_parser("dracut-python", help="dracut install(): put Python into an initrd, print the ELF files to install")
    python.add_argument("--initdir", type=Path, required=True, metavar="DIR", help="the initrd tree dracut builds")
    python.add_argument("--closure", type=Path, required=True, metavar="FILE", help="the module's python-closure.txt")
    python.set_defaults(func=cmd_dracut_python)


def _add_cmdline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cmdline", metavar="STRING", help="use this kernel command line instead of /etc/cmdline.d and /proc/cmdline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiwi-overlay", description="Boot from a network or local block device with an overlay root.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser("explain", help="print the boot plan for a kernel command line")
    _add_cmdline_option(explain)
    explain.add_argument("--json", action="store_true", help="stable JSON instead of text")
    explain.set_defaults(func=cmd_explain)
    _add_dracut_commands(commands)
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
