"""The kernel command line, read and queried with dracut's semantics.

dracut joins /etc/cmdline.d/*.conf, /etc/cmdline and /proc/cmdline (in that order) and
splits the result with the kernel's own `next_arg` rules; `getarg` answers with the last
occurrence of a key. This module reproduces both so that kiwi-overlay and the shell hooks
never disagree about what the user asked for.
"""

from __future__ import annotations

import os

# Not typing.TYPE_CHECKING: importing typing costs boot time; mypy honours this constant too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike

    StrPath = str | PathLike[str]

# Digits as dracut's shell tests see them: str.isdigit() and int() also take '²' and '٣'.
_ASCII_DIGITS = frozenset("0123456789")
# The kernel's isspace(): \t \n \v \f \r, space, and Latin-1 NBSP (0xa0).
_SPACE = frozenset(b"\t\n\v\f\r \xa0")
# What bash's `read` strips from both ends of a line (the default IFS).
_IFS = " \t\n"


def _next_arg(args: bytes) -> tuple[bytes, bytes | None, bytes]:
    """Split off one `param[=value]`, as the kernel's next_arg() does.

    Returns (param, value or None, rest). Quotes group spaces and are dropped at the
    start of the parameter or value and at the end of the argument; they cannot be escaped.
    """
    quoted = args.startswith(b'"')
    if quoted:
        args = args[1:]
    in_quote = quoted
    equals = 0
    end = 0
    while end < len(args):
        char = args[end]
        if char in _SPACE and not in_quote:
            break
        # Like the C code, an '=' at offset 0 is indistinguishable from "none yet".
        if equals == 0 and char == ord("="):
            equals = end
        if char == ord('"'):
            in_quote = not in_quote
        end += 1
    arg = bytearray(args[:end])
    value_start = None
    if equals:
        value_start = equals + 1
        if value_start < len(arg) and arg[value_start] == ord('"'):
            value_start += 1
            if arg[-1] == ord('"'):
                arg[-1] = 0
    if quoted and end > 0 and arg[-1] == ord('"'):
        arg[-1] = 0
    rest = args[end + 1 :] if end < len(args) else b""
    while rest and rest[0] in _SPACE:
        rest = rest[1:]
    # C strings stop at the first NUL: the terminators written above end the value.
    if value_start is None:
        return bytes(arg).split(b"\0", 1)[0], None, rest
    param = bytes(arg[:equals]).split(b"\0", 1)[0]
    return param, bytes(arg[value_start:]).split(b"\0", 1)[0], rest


def split(text: str) -> tuple[tuple[str, str | None], ...]:
    """All `(key, value)` pairs of a command line in order; value None for a bare flag."""
    # getarg sees `$(getcmdline)`: command substitution drops trailing newlines, even quoted ones.
    data = text.rstrip("\n").encode("utf-8", "surrogateescape")
    pairs = []
    while True:
        param, value, data = _next_arg(data)
        pairs.append(
            (
                param.decode("utf-8", "surrogateescape"),
                None if value is None else value.decode("utf-8", "surrogateescape"),
            )
        )
        if not data:
            break
    return tuple(pairs)


def _read_lines(path: StrPath) -> str:
    """A file's lines as dracut's `while read -r line || [ -n "$line" ]` loop joins them."""
    with open(path, "rb") as file:
        text = file.read().decode("utf-8", "surrogateescape")
    *lines, last = text.split("\n")
    # read strips IFS whitespace; an unterminated last line counts only when something is left.
    stripped = [line.strip(_IFS) for line in lines]
    if last.strip(_IFS):
        stripped.append(last.strip(_IFS))
    return "".join(" " + line for line in stripped)


def _conf_files(directory: str) -> list[str]:
    """The *.conf files of DIRECTORY in the order of the shell's glob (bytes, C locale), which skips dot files."""
    try:
        names = [name for name in os.listdir(directory) if name.endswith(".conf") and not name.startswith(".")]
    except OSError:
        return []
    return [os.path.join(directory, name) for name in sorted(names, key=os.fsencode)]


def gather(root: StrPath = "/") -> str:
    """The command line dracut's getcmdline() would build under ROOT.

    os.path rather than pathlib: the cmdline hook imports this module, and pathlib (with re and
    urllib.parse) would take a third of that hook's time in a TCG guest.
    """
    etc_d = "".join(_read_lines(path) for path in _conf_files(os.path.join(root, "etc/cmdline.d")))
    etc, proc = (os.path.join(root, name) for name in ("etc/cmdline", "proc/cmdline"))
    return f"{etc_d} {_read_lines(etc) if os.path.exists(etc) else ''} {_read_lines(proc) if os.path.exists(proc) else ''}"


def whole_number(text: str, *, low: int, high: int) -> int | None:
    """TEXT as a number from LOW to HIGH when it is ASCII digits only, else None (never a huge int)."""
    if not text or not _ASCII_DIGITS.issuperset(text) or len(text.lstrip("0")) > len(str(high)):
        return None
    number = int(text)
    return number if low <= number <= high else None


def decimal_number(text: str, *, high: float) -> float | None:
    """TEXT as a positive number below HIGH when it is ASCII digits with an optional fraction (30, 0.5), else None.

    float() alone would also take '٣', '1_0', 'inf', 'nan' and '1e999'.
    """
    whole, _, fraction = text.partition(".")
    if not (whole or fraction) or len(text) > 32 or not _ASCII_DIGITS.issuperset(whole + fraction):
        return None
    number = float(text)
    return number if 0 < number < high else None


class KernelCmdline:
    """A command line, immutable; queries follow dracut's getarg/getargbool/getargs.

    Not a dataclass: the cmdline hook imports this module, and dataclasses (which imports
    inspect) would be half of that hook's time in a TCG guest.
    """

    __slots__ = ("text",)
    text: str

    def __init__(self, text: str) -> None:
        object.__setattr__(self, "text", text)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"KernelCmdline is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KernelCmdline) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"KernelCmdline(text={self.text!r})"

    @classmethod
    def from_system(cls, root: StrPath = "/") -> KernelCmdline:
        return cls(gather(root))

    @property
    def pairs(self) -> tuple[tuple[str, str | None], ...]:
        return split(self.text)

    def getarg(self, key: str) -> str | None:
        """The value of the last KEY; "" for a bare flag; None when absent."""
        found: str | None = None
        for param, value in self.pairs:
            if param == key:
                found = "" if value is None else value
        return found

    def getargbool(self, key: str, default: bool = False) -> bool:
        """False for 0/no/off; true for anything else present, bare flags included."""
        value = self.getarg(key)
        if value is None:
            return default
        return value not in ("0", "no", "off")

    def getargs(self, key: str) -> tuple[str, ...]:
        """Every value of KEY in order (a bare flag yields the key itself, as dracut's does)."""
        return tuple(param if value is None else value for param, value in self.pairs if param == key)

    def has(self, key: str) -> bool:
        return self.getarg(key) is not None
