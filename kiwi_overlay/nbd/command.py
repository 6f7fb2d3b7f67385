"""`kiwi-overlay nbd list|info|attach|detach`: the command line side of kiwi_overlay.nbd."""

from __future__ import annotations

import argparse
import json

from kiwi_overlay import log, nbd
from kiwi_overlay.errors import KiwiOverlayError
from kiwi_overlay.nbd import connect


def run_nbd_command(args: argparse.Namespace) -> int:
    log.configure(debug=args.debug)
    if args.nbd_command == "detach":
        if args.all:
            nbd.detach_all()
        elif args.device:
            nbd.detach(args.device)
        else:
            raise KiwiOverlayError("nbd detach needs /dev/nbdN or --all")
        return 0
    if args.nbd_command == "list" and "://" not in args.uri:
        args.uri = f"nbd://{args.uri}/"  # HOST[:PORT], [IPv6][:PORT]
    from kiwi_overlay.config.roots import parse_lost_policy

    root = nbd.root_from_uri(
        args.uri,
        connections=getattr(args, "connections", 1),
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        lost=parse_lost_policy(getattr(args, "lost", None), option="--lost"),
    )
    if args.nbd_command == "attach":
        print(nbd.attach_root(root, timeout=args.timeout, device=args.device, ioctl=args.ioctl))
        return 0
    context = connect.tls_context(root)
    if args.nbd_command == "list":
        exports = connect.with_retry(
            lambda deadline: connect.list_exports(root, deadline=deadline, context=context), root=root, timeout=args.timeout
        )
        if args.json:
            print(json.dumps([{"name": entry.name, "description": entry.description} for entry in exports], indent=2))
        else:
            for entry in exports:
                print(entry.name)
        return 0
    info = connect.with_retry(
        lambda deadline: connect.export_info(root, deadline=deadline, context=context), root=root, timeout=args.timeout
    )
    sizes = info.block_sizes
    if args.json:
        data = {"export": info.name, "size": info.size, "flags": list(info.flag_names), "block_sizes": sizes.__dict__ if sizes else None}
        print(json.dumps(data, indent=2))
        return 0
    print(f"export: {info.name}\nsize: {info.size}\nflags: {' '.join(info.flag_names)}")
    if sizes:
        print(f"block sizes: minimum {sizes.minimum}, preferred {sizes.preferred}, maximum {sizes.maximum}")
    return 0
