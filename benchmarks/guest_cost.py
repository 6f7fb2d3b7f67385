"""2b. What kiwi-overlay's processes are made of, inside the guest: interpreter starts, imports, mount(8).

One boot of kiwi-overlay's no-systemd initrd with one more archive after it: guest_probe.sh as the
rdinit, before dracut's init, and guest_probe.py. It times the initrd's interpreter starting (the
boot's first start, then three more), the imports of each boot step in a fresh interpreter (three
rounds), the frozen dataclasses those imports make, and mount(8) of a tmpfs (three times).
These are the parts item 2's processes are made of, before any of their work.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.boot_time import BOOT_TIMEOUT, KIWI, Initrds, failure
from benchmarks.stats import median
from tests.boot.qemu import BootResult, Guest, boot, cpio_archive

PROBE_INIT = Path(__file__).with_name("guest_probe.sh")
PROBE_PROGRAM = Path(__file__).with_name("guest_probe.py")
# The kernel reads an archive that follows a compressed one from a 4-byte boundary on.
ALIGNMENT = 4
# Parts on the mount step's way, in its import order: (mark, what is imported there).
IMPORTS = (
    ("dataclasses", "dataclasses (with inspect, ast, dis, tokenize, re, enum, functools)"),
    ("pathlib", "pathlib (with fnmatch, urllib.parse, ipaddress)"),
    ("plan", "the plan: config.parse, boot (the plan's frozen dataclasses, the ip= grammar)"),
    ("network", "the network bring-up: net.bringup, net.links"),
    ("pyroute2", "pyroute2's message classes (with logging, multiprocessing, platform, typing)"),
    ("nbd", "NBD: nbd, nbd.kernel, nbd.connect, nbd.supervisor"),
    ("overlay", "the mounts: overlay"),
)
IMPORT_MARKS = tuple(f"import-{name}" for name, _ in IMPORTS)


@dataclass(frozen=True)
class Measured:
    result: BootResult

    def median(self, name: str) -> float | None:
        return median([float(value) for value in self.result.values(name)])

    def total(self, names: tuple[str, ...]) -> float | None:
        """The sum of the medians of NAMES; None when one of them is missing."""
        values = [self.median(name) for name in names]
        return None if None in values else sum(value for value in values if value is not None)


def probe_initrd(initrd: Path, *, scratch: Path) -> Path:
    """INITRD with the probe's archive after it (rdinit=/kiwi-overlay-probe)."""
    tree = scratch / "probe-tree"
    tree.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROBE_INIT, tree / "kiwi-overlay-probe")
    (tree / "kiwi-overlay-probe").chmod(0o755)
    shutil.copy(PROBE_PROGRAM, tree / "kiwi-overlay-probe.py")
    archive = cpio_archive(tree, output=scratch / "probe.cpio").read_bytes()
    image = initrd.read_bytes()
    combined = scratch / "kiwi-overlay-probe.img"
    combined.write_bytes(image + b"\0" * (-len(image) % ALIGNMENT) + archive)
    return combined


def measure(*, initrds: Initrds, scratch: Path) -> Measured:
    initrd = probe_initrd(initrds.get(KIWI, systemd=False), scratch=scratch / "guest-cost")
    result = boot(Guest(initrd=initrd, cmdline="rdinit=/kiwi-overlay-probe"), name="ko-bn-guest-cost", timeout=BOOT_TIMEOUT)
    if result.mark("probe-done") is None:
        raise RuntimeError(failure(result) or f"the probe did not finish (console: {result.log.name})")
    return Measured(result)


def startup_cost(measured: Measured) -> float | None:
    """The interpreter starts and imports of a no-systemd boot's two processes: the cmdline hook's, the mount step's."""
    return measured.total(("interpreter-first", "interpreter", "import-cmdline", *IMPORT_MARKS))


def table(measured: Measured) -> str:
    def cell(name: str) -> str:
        value = measured.median(name)
        return "n/m" if value is None else f"{value:.2f} s"

    rows = [
        (
            "interpreter start (`-c pass`), the boot's first: the cmdline hook's (TCG translates the interpreter's code)",
            cell("interpreter-first"),
        ),
        ("interpreter start, later ones: the mount step's, the watch's", cell("interpreter")),
        ("imports of the cmdline hook (cli, dracut_cmdline, config.claim)", cell("import-cmdline")),
        *((f"imports of the mount step: {what}", cell(f"import-{name}")) for name, what in IMPORTS),
    ]
    imports = measured.total(IMPORT_MARKS)
    rows.append(("**imports of the mount step, in all**", "n/m" if imports is None else f"**{imports:.2f} s**"))
    classes, creation = measured.median("dataclass-classes"), measured.median("dataclass-creation")
    if classes is not None and creation is not None:
        made = f"… of which: making its {classes:.0f} frozen dataclasses (in the plan, network, NBD and mount rows)"
        rows.append((made, f"{creation:.2f} s"))
    rows.append(("mount(8) of a tmpfs, the program (the mount step runs it for each of its three mounts)", cell("mount8")))
    lines = ["| part | seconds (median) |", "|---|---|", *(f"| {part} | {value} |" for part, value in rows)]
    cost = startup_cost(measured)
    if cost is not None:
        lines += [
            "",
            f"A no-systemd boot's two kiwi-overlay processes spend {cost:.2f} s on interpreter starts and imports alone "
            "(the first two rows, the cmdline hook's imports and the mount step's), before any of their work.",
        ]
    return "\n".join(lines)
