"""The `kiwi-overlay` command: one subcommand per step the initrd (or a person) runs.

Subcommands import what they need when they run: the boot path pays only for its own step.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kiwi_overlay.errors import KiwiOverlayError, printable

# systemd's (and dracut's) mark of an initrd.
INITRD_RELEASE = Path("/etc/initrd-release")
# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from kiwi_overlay.config.plan import Plan

    _Commands = argparse._SubParsersAction[argparse.ArgumentParser]  # the subcommands of `kiwi-overlay COMMAND`


def load_plan(args: argparse.Namespace) -> Plan:
    """The plan for --cmdline, or for this machine's command line; turns on rd.kiwi.debug logging."""
    from kiwi_overlay import log
    from kiwi_overlay.cmdline import KernelCmdline
    from kiwi_overlay.config.parse import parse_plan

    plan = parse_plan(KernelCmdline(args.cmdline) if args.cmdline is not None else KernelCmdline.from_system())
    log.configure(debug=plan.debug)
    # A hook (this machine's command line), debugging: what its interpreter cost before any work.
    if log.debugging() and args.cmdline is None and (age := log.process_age()) is not None:
        log.debug(f"{args.command}: interpreter started {age:.2f} s before this message (imports and plan)")
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

    from kiwi_overlay.boot import prepare_root

    # systemd's TimeoutStartSec ends the service with SIGTERM: unwind, so the undo unmounts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    plan = load_plan(args)
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
    if args.cmdline is None and INITRD_RELEASE.exists():  # the initrd's own boot: the cmdline hook's work too
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


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    from kiwi_overlay.config.plan import RUN_DIR, SYSROOT

    _add_cmdline_option(parser)
    parser.add_argument("--sysroot", type=Path, default=SYSROOT, metavar="DIR", help=f"where the root goes (default {SYSROOT})")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, metavar="DIR", help=f"where the layers go (default {RUN_DIR})")


def cmd_dracut_cmdline(args: argparse.Namespace) -> int:
    from kiwi_overlay.dracut_cmdline import load_modules_early, prepare

    plan = load_plan(args)
    if not prepare(plan, root=args.root):
        return 1
    if args.cmdline is None:  # this machine's own boot, not a command line given to look at
        load_modules_early(plan)
    return 0


def cmd_dracut_module(args: argparse.Namespace) -> int:
    from kiwi_overlay.dracut_module import emit, running_command

    emit(args.output, command=None if args.no_command else (args.command or running_command()))
    return 0


def cmd_dracut_python(args: argparse.Namespace) -> int:
    from kiwi_overlay.pyclosure import install_tree, trace

    for path in install_tree(trace(python=Path(sys.executable)), initdir=args.initdir):
        print(path)
    return 0


def _add_dracut_commands(commands: _Commands) -> None:
    hook = commands.add_parser("dracut-cmdline", help="dracut cmdline hook: exit 0 for an overlay root, 1 for another root, 2 if invalid")
    _add_cmdline_option(hook)
    hook.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help="write etc/cmdline.d and run/initramfs under DIR")
    hook.set_defaults(func=cmd_dracut_cmdline)
    module = commands.add_parser("dracut-module", help="write the dracut module directory")
    module.add_argument("--output", type=Path, default=Path("55kiwi-overlay"), metavar="DIR", help="the module directory (55kiwi-overlay)")
    record = module.add_mutually_exclusive_group()
    record.add_argument("--command", type=Path, metavar="PATH", help="the kiwi-overlay dracut runs (default: this one)")
    record.add_argument("--no-command", action="store_true", help="record none: dracut looks in /usr/bin, /usr/local/bin, PATH")
    module.set_defaults(func=cmd_dracut_module)
    python = commands.add_parser("dracut-python", help="dracut install(): put Python into an initrd, print the ELF files to install")
    python.add_argument("--initdir", type=Path, required=True, metavar="DIR", help="the initrd tree dracut builds")
    python.set_defaults(func=cmd_dracut_python)


def cmd_nbd(args: argparse.Namespace) -> int:
    from kiwi_overlay.nbd.command import run_nbd_command

    return run_nbd_command(args)


def _add_nbd_parser(commands: _Commands) -> None:
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
    explain.set_defaults(func=cmd_explain)


def _add_aoe(commands: _Commands) -> None:
    aoe = commands.add_parser("aoe", help="ATA over Ethernet targets").add_subparsers(dest="aoe_command", required=True, metavar="COMMAND")
    aoe_discover = aoe.add_parser("discover", help="list the AoE targets that answer a broadcast query (exit 1: none)")
    aoe_discover.add_argument(
        "--interface", action="append", metavar="IF", help="ask on IF (repeatable; default: every Ethernet link that is up)"
    )
    aoe_discover.add_argument("--timeout", type=float, default=2.0, metavar="S", help="collect answers for S seconds (default 2)")
    aoe_discover.add_argument("--json", action="store_true", help="JSON list with every field")
    aoe_discover.set_defaults(func=cmd_aoe_discover)


def _add_verity(commands: _Commands) -> None:
    verity = commands.add_parser("verity", help="dm-verity for the read image").add_subparsers(
        dest="verity_command", required=True, metavar="ACTION"
    )
    verity_format = verity.add_parser("format", help="append veritysetup's hash tree to IMAGE, print rd.root.overlay.verity=ROOTHASH")
    verity_format.add_argument("image", type=Path, metavar="IMAGE", help="the read image (squashfs, erofs, ext4, ...), changed in place")
    verity_format.set_defaults(func=cmd_verity_format)


def _add_net(commands: _Commands) -> None:
    net = commands.add_parser("net", help="network bring-up").add_subparsers(dest="net_command", required=True, metavar="ACTION")
    net_up = net.add_parser("up", help="configure the network as ip= (or a network root) says, unless it is already up")
    _add_cmdline_option(net_up)
    net_up.add_argument("--timeout", type=float, metavar="S", help="seconds (default: rd.root.overlay.timeout)")
    net_up.add_argument("--lease-dir", metavar="DIR", help="where lease-IFACE.json goes (default /run/kiwi-overlay)")
    net_up.add_argument("--resolv-conf", metavar="FILE", help="the resolv.conf to write name servers to (default /etc/resolv.conf)")
    net_up.set_defaults(func=cmd_net_up)


def _add_prepare(commands: _Commands) -> None:
    for name, text in (("prepare", "attach the read device and mount the layers, not the root"), ("mount", "prepare, then mount the root")):
        command = commands.add_parser(name, help=text)
        _add_layout_options(command)
        command.set_defaults(func=cmd_prepare)


def _add_status(commands: _Commands) -> None:
    from kiwi_overlay.config.plan import RUN_DIR

    status = commands.add_parser("status", help="the running overlay root: layers, device, server, connection, fill level (exit 1: none)")
    status.add_argument("--run-dir", type=Path, default=RUN_DIR, metavar="DIR", help=f"where the layers are (default {RUN_DIR})")
    status.add_argument("--json", action="store_true", help="JSON with every field")
    status.set_defaults(func=cmd_status)


def _add_watch(commands: _Commands) -> None:
    watch = commands.add_parser("watch", help="warn on the kernel log at 80, 90, 95 %% fill of DIRECTORY's filesystem (runs until killed)")
    watch.add_argument("directory", type=Path, metavar="DIRECTORY", help="e.g. /run/overlay/overlayfs, the write layer")
    watch.add_argument("--interval", type=float, default=5.0, metavar="S", help="seconds between checks (default 5)")
    watch.set_defaults(func=cmd_watch)


def _add_generate(commands: _Commands) -> None:
    generator = commands.add_parser("generate", help="systemd generator: units that mount an overlay root")
    generator.add_argument("normal_dir", type=Path, metavar="NORMAL_DIR")
    generator.add_argument("early_dir", type=Path, nargs="?", help=argparse.SUPPRESS)
    generator.add_argument("late_dir", nargs="?", help=argparse.SUPPRESS)
    _add_layout_options(generator)
    generator.set_defaults(func=cmd_generate)


def _add_shutdown(commands: _Commands) -> None:
    stop = commands.add_parser("shutdown", help="shutdown hook: leave the write layer clean, detach the NBD devices")
    stop.add_argument("--run-dir", type=Path, action="append", default=[], metavar="DIR", help="where the layers are (repeatable)")
    stop.add_argument("--nbd-state-dir", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    stop.set_defaults(func=cmd_shutdown)


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
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
        message = f"{args.command}: unexpected {type(error).__name__}: {error}"
        print(f"kiwi-overlay: {printable(message)[:500]} (rd.kiwi.debug logs the traceback)", file=sys.stderr)
        return 2
