"""The `kiwi-overlay` command: one subcommand per step the initrd (or a person) runs.

Subcommands import what they need when they run: the boot path pays only for its own step. The
argument parser (kiwi_overlay.arguments) is built only for a subcommand with arguments to parse.
"""

from __future__ import annotations

import os
import sys

from kiwi_overlay.errors import KiwiOverlayError, printable

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from kiwi_overlay.config.plan import Plan

# systemd's (and dracut's) mark of an initrd.
INITRD_RELEASE = "/etc/initrd-release"
# dracut's cmdline hook runs this, with no options, on every boot's critical path: no argparse,
# no parser, none of their imports (pathlib and re among them), two thirds of its time in a TCG guest.
CMDLINE_HOOK = ["dracut-cmdline"]


def load_plan(args: argparse.Namespace) -> Plan:
    """The plan for --cmdline, or for this machine's command line; turns on rd.kiwi.debug logging."""
    from kiwi_overlay import log
    from kiwi_overlay.cmdline import KernelCmdline
    from kiwi_overlay.config.parse import parse_plan

    plan = parse_plan(KernelCmdline(args.cmdline) if args.cmdline is not None else KernelCmdline.from_system())
    log.configure(debug=plan.debug)
    # A hook (this machine's command line), debugging: what its interpreter cost before any work.
    if args.cmdline is None:
        log.started(args.command, work="plan")
    return plan


def cmd_explain(args: argparse.Namespace) -> int:
    from kiwi_overlay.explain import describe, plan_dict

    plan = load_plan(args)
    # Values that are not UTF-8 (the kernel splits at byte 0xA0) are shown escaped, not a crash.
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    if args.json:
        import json

        print(json.dumps(plan_dict(plan), indent=2, sort_keys=True))
    else:
        print(describe(plan))
    return 0


def cmd_verity_format(args: argparse.Namespace) -> int:
    """Append the hash tree to IMAGE; print the root hash and the kernel option that names it."""
    from kiwi_overlay.verity import format_image

    root_hash = format_image(args.image)
    print(f"rd.root.overlay.verity={root_hash}")
    return 0


def cmd_aoe_discover(args: argparse.Namespace) -> int:
    """One line per target (`e0.1 IFACE MAC SIZE`) or JSON; exit 1 when none answered."""
    from kiwi_overlay.aoe.discovery import discover
    from kiwi_overlay.aoe.messages import human_size

    interfaces = args.interface
    if not interfaces:
        from kiwi_overlay.net.links import ethernet_links

        interfaces = [link.name for link in ethernet_links() if link.up]
        if not interfaces:
            raise KiwiOverlayError("no Ethernet link is up; name one with --interface")
    targets = discover(interfaces, timeout=args.timeout)
    if args.json:
        import json
        from dataclasses import asdict

        print(json.dumps([asdict(t) | {"name": t.name, "size_bytes": t.size_bytes} for t in targets], indent=2, sort_keys=True))
    for target in [] if args.json else targets:
        print(f"{target.name} {target.interface} {target.mac} {human_size(target.size_bytes)}")
    if not targets:
        print(f"kiwi-overlay: no AoE target answered on {', '.join(interfaces)} within {args.timeout:g} s", file=sys.stderr)
    return 0 if targets else 1


def cmd_net_up(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kiwi_overlay.net.bringup import LEASE_DIR, RESOLV_CONF, bring_up

    plan = load_plan(args)
    bring_up(
        plan,
        timeout=args.timeout or plan.timeout,
        lease_dir=Path(args.lease_dir) if args.lease_dir else LEASE_DIR,
        resolv_conf=Path(args.resolv_conf) if args.resolv_conf else RESOLV_CONF,
        requested=True,
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    import signal

    from kiwi_overlay import log
    from kiwi_overlay.boot import prepare_root

    # systemd's TimeoutStartSec ends the service with SIGTERM: unwind, so the undo unmounts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    plan = load_plan(args)
    # The cmdline hook only claimed the root: this step is the boot's first to read every option.
    for note in plan.notes:
        log.info(note)
    prepare_root(plan, run_dir=args.run_dir.absolute(), sysroot=args.sysroot.absolute(), mount_root=args.command == "mount")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from kiwi_overlay.status import collect, describe

    status = collect(run_dir=args.run_dir)
    if args.json:
        import json

        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(describe(status))
    return 0 if status["overlay"] else 1


def cmd_watch(args: argparse.Namespace) -> int:
    from kiwi_overlay.watch import watch

    watch(args.directory, interval=args.interval)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from kiwi_overlay.cmdline import KernelCmdline
    from kiwi_overlay.generator import generate

    cmdline = KernelCmdline(args.cmdline) if args.cmdline is not None else KernelCmdline.from_system()
    # systemd-fstab-generator writes its own sysroot.mount for root=overlay:... into the normal
    # directory; the early directory takes precedence over it (as KIWI's generator does).
    unit_dir = args.early_dir or args.normal_dir
    generate(cmdline, unit_dir, run_dir=args.run_dir.absolute(), sysroot=args.sysroot.absolute())
    if args.cmdline is None and os.path.exists(INITRD_RELEASE):  # the initrd's own boot: the cmdline hook's work too
        from kiwi_overlay.dracut_cmdline import answer_ahead

        _stderr_to_kernel_log()
        answer_ahead(cmdline)
    return 0


def _stderr_to_kernel_log() -> None:
    """systemd runs generators with stderr on /dev/null: their messages belong in the kernel log."""
    from contextlib import suppress

    with suppress(OSError):  # not root, or no /dev/kmsg (a chroot): stderr it is
        sys.stderr = open("/dev/kmsg", "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 (lives as long as the process)


def cmd_shutdown(args: argparse.Namespace) -> int:
    from kiwi_overlay.shutdown import RUN_DIRS, shutdown

    shutdown(run_dirs=tuple(args.run_dir) or RUN_DIRS, nbd_state_dir=args.nbd_state_dir)
    return 0


def cmd_dracut_cmdline(args: argparse.Namespace) -> int:
    from kiwi_overlay.cmdline import KernelCmdline
    from kiwi_overlay.dracut_cmdline import hook

    return hook(cmdline=None if args.cmdline is None else KernelCmdline(args.cmdline), root=args.root)


def cmd_dracut_module(args: argparse.Namespace) -> int:
    from kiwi_overlay.dracut_module import emit, running_command

    emit(args.output, command=None if args.no_command else (args.command or running_command()))
    return 0


def cmd_dracut_python(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kiwi_overlay.pyclosure import install_tree, trace

    for path in install_tree(trace(python=Path(sys.executable)), initdir=args.initdir):
        print(path)
    return 0


def cmd_nbd(args: argparse.Namespace) -> int:
    from kiwi_overlay.nbd.command import run_nbd_command

    return run_nbd_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    run: Callable[[], int]
    if argv == CMDLINE_HOOK:
        from kiwi_overlay.dracut_cmdline import hook

        command, run = argv[0], hook
    else:
        from kiwi_overlay.arguments import build_parser

        args = build_parser(argv[0] if argv else None).parse_args(argv)
        command, run = args.command, lambda: args.func(args)
    try:
        return run()
    except KiwiOverlayError as error:
        print(f"kiwi-overlay: {printable(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        # A bug, or a system error nobody foresaw: still one line on the console and exit 2 (exit 1
        # tells the cmdline hook "not an overlay root"); the traceback goes to the debug log.
        import traceback

        from kiwi_overlay import log

        log.debug(traceback.format_exc())
        message = f"{command}: unexpected {type(error).__name__}: {error}"
        print(f"kiwi-overlay: {printable(message)[:500]} (rd.kiwi.debug logs the traceback)", file=sys.stderr)
        return 2
