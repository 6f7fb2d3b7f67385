"""The boot plan: every kiwi-overlay option of the kernel command line, parsed and checked.

    plan.py     the frozen dataclasses of the plan (roots, write layer, network, partition) and RUN_DIR, SYSROOT
    claim.py    what the cmdline stage decides unchecked: is_overlay_root(), the root's transport
    parse.py    the command line into a Plan: parse_plan()
    roots.py    root=overlay:... (NBD servers and URIs, AoE, local devices) and a DHCP root-path
    values.py   the grammars of single values: sizes, seconds, hosts, interface names, block devices

Parsing does no I/O. The result is a frozen `Plan` that `kiwi-overlay explain` prints and
the effects (network, attach, mounts) consume.
"""
