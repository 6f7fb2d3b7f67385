"""The grammars of single option values: sizes, seconds, host names, interface names, block devices.

Each check raises OptionError: one line naming the option, the value and a valid example.
"""

from __future__ import annotations

import re
from pathlib import Path

from kiwi_overlay.cmdline import KernelCmdline, decimal_number, whole_number
from kiwi_overlay.config.claim import LOCAL_FORMS
from kiwi_overlay.errors import OptionError

_IFNAME = re.compile(r"[^/\s:]+")
_IFNAMSIZ = 16  # the kernel's limit for an interface name, its terminating NUL included
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")
# ASCII digits only ([0-9], not \d): '٣g' must not pass the check and then fail the mount.
_SIZE = re.compile(r"([0-9]{1,19})([kmgt]?)", re.IGNORECASE)


def is_interface_name(name: str) -> bool:
    """A name the kernel takes for a network interface: 1-15 bytes, no '/', ':' or white space, not . or .."""
    fits = len(name.encode("utf-8", "surrogateescape")) < _IFNAMSIZ
    return fits and bool(_IFNAME.fullmatch(name)) and name not in (".", "..")


class OptionErrors:
    """Builds the OptionError for one option value, so helpers only say what is wrong."""

    def __init__(self, option: str, value: str, example: str) -> None:
        self.option, self.value, self.example = option, value, example

    def __call__(self, problem: str) -> OptionError:
        return OptionError(self.option, self.value, problem, self.example)


def positive_number(cmdline: KernelCmdline, option: str, default: float | None, example: str) -> float | None:
    value = cmdline.getarg(option)
    if value is None:
        return default
    number = decimal_number(value, high=1e9)
    if number is None:
        raise OptionError(option, value, "must be a positive number of seconds below 1000000000", f"{option}={example}")
    return number


def byte_size(text: str) -> int | None:
    """The byte count of a size with an optional k, m, g or t suffix ("2g"); None for anything else."""
    size = _SIZE.fullmatch(text)
    return int(size[1]) << (10 * " kmgt".index(size[2].lower() or " ")) if size else None


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(whole_number(part, low=0, high=255) is not None for part in parts)


def check_host(host: str, fail: OptionErrors) -> str:
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else ""
        if ":" not in inner or not re.fullmatch(r"[0-9A-Fa-f:.]+(%[^\s\]]+)?", inner):
            raise fail(f"{host!r} is not a bracketed IPv6 address")
        return inner
    numeric = re.fullmatch(r"[0-9.]+", host)
    if not _HOSTNAME.fullmatch(host) or (numeric and not _is_ipv4(host)):
        raise fail(f"{host!r} is not a host name or IPv4 address")
    return host


def escape_by_name(name: str) -> str:
    """Escape a label the way udev names /dev/disk/by-label links (as dracut does)."""
    return name.replace("/", "\\x2f").replace(" ", "\\x20")


def device_from_spec(
    spec: str, *, option: str, example: str, shown: str | None = None, forms: tuple[str, ...] = tuple(LOCAL_FORMS)
) -> Path:
    """The block device path for `UUID=...`-style SPEC, or SPEC itself when it is a /dev path.

    Errors name OPTION and SHOWN (the whole value as the user wrote it; SPEC by default).
    """
    fail = OptionErrors(option, spec if shown is None else shown, example)
    if spec.startswith("/dev/"):
        if ".." in spec.split("/"):
            raise fail("a /dev path without .. is needed (it must name a device under /dev)")
        return Path(spec)
    key, sep, name = spec.partition("=")
    if not sep or key not in forms:
        raise fail(f"needs a /dev path or one of {', '.join(f + '=' for f in forms)}")
    if not name:
        raise fail(f"{key}= needs a value")
    directory, escaped = LOCAL_FORMS[key]
    # UNIXNODE may name a nested node (mapper/x); the others are single path components.
    if ".." in name.split("/") or name == "." or (not escaped and key != "UNIXNODE" and "/" in name):
        raise fail(f"{name!r} is not a valid {key}")
    return Path(directory + (escape_by_name(name) if escaped else name))
