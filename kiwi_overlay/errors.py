"""The error every user-facing failure is reported as: one line, naming what to fix."""


class KiwiOverlayError(Exception):
    """A failure the user can act on; `str()` is the whole message."""


class OptionError(KiwiOverlayError):
    """A kernel command line option (or CLI argument) whose value cannot be used."""

    def __init__(self, option: str, value: str, problem: str, example: str) -> None:
        self.option = option
        self.value = value
        super().__init__(f"{option}={value}: {problem}; e.g. {example}")
