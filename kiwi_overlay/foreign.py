"""Options of dracut's own root modules (overlayfs, overlay-root, nbd, dmsquash-live) next to an overlay root.

kiwi-overlay does not read them; rather than ignore them silently it says, in one line each, what
its own equivalent is. Pure: the lines are part of the plan, printed by `explain` and at boot.
"""

from __future__ import annotations

from itertools import pairwise

from kiwi_overlay.cmdline import KernelCmdline

_DEVICE_FORMS = ("LABEL=", "UUID=", "PARTUUID=", "PARTLABEL=", "/dev/")
_NOT_READ = "is dracut's {module} module's option, which kiwi-overlay does not read"


def _shown(key: str, value: str | None) -> str:
    return key if value is None else f"{key}={value}"


def _rd_overlay(value: str | None) -> str:
    """The kiwi-overlay equivalent of dracut-ng's rd.overlay[=...]."""
    if value is not None and value.startswith("tmpfs:"):
        options = dict(option.partition("=")[::2] for option in value.removeprefix("tmpfs:").split(",") if option)
        if options.get("size"):
            return f"use rd.root.overlay.size={options['size']} (the tmpfs write layer)"
    if value is not None and value.startswith(_DEVICE_FORMS):
        return f"use rd.root.overlay.write={value.partition(':')[0] if value.startswith(_DEVICE_FORMS[:4]) else value}"
    return "not needed: kiwi-overlay's root always has an overlay (a tmpfs, or rd.root.overlay.write=DEVICE)"


def nbd_uri_from_dracut(value: str) -> tuple[str, str | None] | None:
    """(kiwi-overlay root, rootfstype or None) for dracut's `nbd:SERVER:PORT[/EXPORT]|EXPORT[:FSTYPE[:FLAGS[:NBDOPTS]]]`."""
    rest = value.removeprefix("nbd:")
    if rest.startswith("["):
        server, _, rest = rest.partition("]:")
        server += "]"
    else:
        server, _, rest = rest.partition(":")
    fields = rest.split(":")
    if not server or not fields[0]:
        return None
    port, _, export = fields[0].partition("/")
    if not port.isdigit():  # an export name instead of a port: the standard port
        port, export = "10809", fields[0]
    options = fields[3].split(",") if len(fields) > 3 else []
    for flag, name in pairwise(options):
        if flag in ("-name", "-N"):
            export = name
    fstype = fields[1] if len(fields) > 1 and fields[1] not in ("", "auto") else None
    return f"root=overlay:nbd://{server}:{port}/{export}", fstype


def _nbd_equivalent(value: str) -> str:
    converted = nbd_uri_from_dracut(value)
    if converted is None:
        return "use root=overlay:nbd://SERVER:PORT/EXPORT"
    root, fstype = converted
    return "use " + root + (f" rootfstype={fstype}" if fstype else "")


def foreign_option_notes(cmdline: KernelCmdline) -> tuple[str, ...]:
    """One line per option of dracut's own root modules on CMDLINE, naming the kiwi-overlay equivalent."""
    notes = []
    roots = [value for key, value in cmdline.pairs if key == "root"]
    for key, value in cmdline.pairs:
        if key == "rd.overlay":
            equivalent = _rd_overlay(value)
            module = "overlayfs"
        elif key == "rd.overlay.reset":
            equivalent, module = "use rd.root.overlay.reset", "overlayfs"
        elif key == "rd.overlay.readonly":
            equivalent = "the closest is rd.root.overlay.temporary (writes go to RAM, the write device stays untouched)"
            module = "overlayfs"
        elif key.startswith("rd.overlay."):
            equivalent, module = "it has no equivalent (kiwi-overlay's options are rd.root.overlay.*, see docs/cmdline.md)", "overlayfs"
        elif key == "rootovl":
            equivalent, module = "not needed: kiwi-overlay's root always has a write layer (a tmpfs: rd.root.overlay.size=)", "overlay-root"
        elif key == "rd.live.ram":
            equivalent, module = "use rd.root.overlay.ram", "dmsquash-live"
        elif key in ("root", "netroot") and value is not None and value.startswith("nbd:") and (key == "netroot" or value != roots[-1]):
            equivalent, module = _nbd_equivalent(value), "nbd"
        else:
            continue
        notes.append(f"{_shown(key, value)} {_NOT_READ.format(module=module)}; {equivalent}")
    return tuple(notes)
