"""Item 2b's guest side: the imports of kiwi-overlay's boot processes, step by step, in a fresh interpreter.

Run by guest_probe.sh inside the initrd with the initrd's interpreter and flags. Each step imports
what a step of the boot imports on top of the steps before it, in the mount step's order; the
cmdline hook's imports come first, as its process has them alone. Prints `[UPTIME] KO-MARK
import-STEP=SECONDS` lines, and the frozen dataclasses created on the way (count, seconds).
"""

import time

STEPS = (
    ("cmdline", "import kiwi_overlay.cli, kiwi_overlay.dracut_cmdline, kiwi_overlay.config.claim"),
    ("dataclasses", "import dataclasses"),
    ("pathlib", "import pathlib"),
    ("plan", "import kiwi_overlay.config.parse, kiwi_overlay.boot"),
    ("network", "import kiwi_overlay.net.bringup, kiwi_overlay.net.links"),
    (
        "pyroute2",
        "from kiwi_overlay.netlink import pyroute\n"
        "pyroute.ifinfmsg, pyroute.ifaddrmsg, pyroute.rtmsg, pyroute.genlmsg, pyroute.NetlinkError",
    ),
    ("nbd", "import kiwi_overlay.nbd, kiwi_overlay.nbd.kernel, kiwi_overlay.nbd.connect, kiwi_overlay.nbd.supervisor"),
    ("overlay", "import kiwi_overlay.overlay"),
)


def mark(name: str, value: str) -> None:
    with open("/proc/uptime") as uptime:
        print(f"[{uptime.read().split()[0]}] KO-MARK {name}={value}", flush=True)


def time_dataclass_creation(created: list[float]) -> None:
    """From now on, count into CREATED the frozen dataclasses made and the seconds spent making them.

    Timed where dataclass() makes each class: a private function of the standard library, a benchmark's view only.
    """
    import dataclasses

    make = dataclasses._process_class  # type: ignore[attr-defined]

    def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        try:
            return make(*args, **kwargs)
        finally:
            created[0] += 1
            created[1] += time.perf_counter() - began

    dataclasses._process_class = timed  # type: ignore[attr-defined]


def main() -> None:
    created = [0.0, 0.0]  # frozen dataclasses made, seconds spent making them
    for name, code in STEPS:
        start = time.perf_counter()
        exec(code, {})
        mark(f"import-{name}", f"{time.perf_counter() - start:.4f}")
        if name == "dataclasses":
            time_dataclass_creation(created)
    mark("dataclass-classes", f"{created[0]:.0f}")
    mark("dataclass-creation", f"{created[1]:.4f}")


main()
