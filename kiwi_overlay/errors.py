"""The error every user-facing failure is reported as: one line, naming what to fix."""

# An error shows this much of a value: one console line, even for a value of thousands of characters.
_VALUE_SHOWN = 200


def printable(text: str) -> str:
    """TEXT with control characters (C0, DEL, C1) and bytes that are not UTF-8 written as \\xNN.

    Command line values and server answers are echoed in errors: a newline or an ESC in them must
    not start a line or a terminal sequence on the console.
    """
    return "".join(
        f"\\x{ord(char) & 0xFF:02x}" if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or 0xDC80 <= ord(char) <= 0xDCFF else char
        for char in text
    )


class KiwiOverlayError(Exception):
    """A failure the user can act on; `str()` is the whole message."""


class OptionError(KiwiOverlayError):
    """A kernel command line option (or CLI argument) whose value cannot be used."""

    def __init__(self, option: str, value: str, problem: str, example: str) -> None:
        self.option = option
        self.value = value
        shown = value if len(value) <= _VALUE_SHOWN else value[:_VALUE_SHOWN] + "..."
        super().__init__(printable(f"{option}={shown}: {problem}; e.g. {example}"))
