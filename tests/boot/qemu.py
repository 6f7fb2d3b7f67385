"""Boot a guest in QEMU (TCG) and read what happened from its serial ports.

The console (ttyS0) carries the kernel's and the initrd's messages, kept in the boot's log. Results
go on a channel of their own, the second serial port ttyS1 (RESULT_PORT in the guest), which
printk never writes to: a kernel message can never land inside a result line (issue 14 item 12).
The harness reads it through a pipe (ResultChannel) and parses it line by line, exactly.

Marker protocol: the test root's init (tests/boot/rootfs-init.sh) writes `[UPTIME] KO-MARK NAME[=VALUE]`
(or `... KO-MARK NAME VALUE`) lines to ttyS1, UPTIME being the guest's /proc/uptime in seconds, and
a copy to the kernel log for people reading the console. Markers, in order:
    init uptime=S                   the root's init started: the root was reached
    cpu-idle=S                      the CPUs' idle time until then (/proc/uptime), all CPUs together
    root-source=DEV root-fstype=T root-options=O     the mount on /
    mounts-begin, mount LINE (one per /proc/mounts line), mounts-end
    write=ok|failed                 a small file written and synced on /
    ACTION=...                      one per ko.test=A,B action: write-16M=ok|enospc|failed,
                                    read-all=ok|failed device=DEV ... bytes=N seconds=S kernel-cpu=S (the CPUs' time
                                    in the kernel meanwhile), marker-file=created|found ...,
                                    checksum=SHA256 (of /bin/busybox, read through the layers),
                                    read-files=ok COUNT|failed FILE (every file of the root read),
                                    aoe-discover=eS.S|none, hold=SECONDS, noise-N=... (200, under printk load),
                                    fill-overlay-82|91|96=USE% warnings=N (the write layer filled in
                                    three steps, each followed by a wait for one more kiwi-overlay-watch line),
                                    synced=boot-id=ID (then writes until killed), synced-found=boot-id=ID|none,
                                    shutdown-initramfs=pivot|failed ... (then dracut's /shutdown
                                    powers off: needs Guest(disks=(initrd_disk(...),)))
    poweroff uptime=S               powering off now
A boot that never prints `init` failed before the root; its console log says why.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from kiwi_overlay.run import run
from tests.boot.guest_kernel import GuestKernel, guest_kernel

RESULTS = Path(os.environ.get("KIWI_OVERLAY_BOOT_RESULTS", Path(__file__).resolve().parents[2] / "build/boot-results"))
# Console, time stamps and failure handling every boot gets. rd.shell=0 + rd.emergency=poweroff and
# panic=1 (with -no-reboot) make a failed boot end at once instead of waiting for the time limit.
BASE_CMDLINE = "console=ttyS0,115200 printk.time=1 printk.devkmsg=on panic=1 rd.shell=0 rd.emergency=poweroff"
DEFAULT_TIMEOUT = 180.0
USER_MAC = "52:54:00:12:34:56"
RESULT_PORT = "/dev/ttyS1"  # the guest's end of the result channel
_MARK = re.compile(r"\[\s*(?P<time>\d+\.\d+)\] KO-MARK (?P<name>[^=\s]+)(?:[= ](?P<value>.*))?")
_TIMESTAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")
# The kernel's last words when a guest halts instead of powering off (systemd's emergency path
# can): QEMU then idles until the time limit, so the harness ends it.
_HALTED = "reboot: System halted"


@dataclass(frozen=True)
class Disk:
    """A virtio disk the guest finds by SERIAL (/dev/disk/by-id/virtio-SERIAL)."""

    image: Path
    serial: str
    readonly: bool = False
    format: str = "raw"


@dataclass(frozen=True)
class Guest:
    """What to boot: the guest kernel with INITRD, CMDLINE (added to BASE_CMDLINE), disks and NICs.

    USER_NET gives a NIC on QEMU user networking (DHCP, the host at 10.0.2.2); each of TAPS a NIC on
    that host tap device (AoE); each of NETDEVS a NIC on that QEMU -netdev backend (e.g. tests/boot/vlan.py's
    dgram socket, or "user" for a second user-networking NIC). NIC MACs are 52:54:00:12:34:56, then
    :57, ... in that order.
    VMLINUZ boots a kernel file of its own (with its own initrd) instead of the guest kernel tree.
    """

    initrd: Path
    cmdline: str
    disks: Sequence[Disk] = ()
    user_net: bool = True
    taps: Sequence[str] = ()
    netdevs: Sequence[str] = ()
    memory_mb: int = 1024
    cpus: int = 1
    kernel: GuestKernel | None = None
    vmlinuz: Path | None = None  # a kernel file of its own (a KIWI image's .kernel) instead of KERNEL's
    monitor: Path | None = None  # a Unix socket for QEMU's human monitor (monitor_command); none without

    def argv(self, *, results: ResultChannel | None = None) -> list[str]:
        """QEMU's command line; ttyS1 goes to RESULTS (to nowhere without one)."""
        kernel_file = self.vmlinuz or (self.kernel or guest_kernel()).boot_file
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", str(self.cpus), "-m", str(self.memory_mb)]
        monitor = f"unix:{self.monitor},server=on,wait=off" if self.monitor else "none"
        argv += ["-nodefaults", "-no-user-config", "-display", "none", "-monitor", monitor, "-serial", "stdio"]
        argv += results.serial_argv() if results else ["-serial", "null"]
        argv += ["-no-reboot"]
        argv += ["-kernel", str(kernel_file), "-initrd", str(self.initrd), "-append", f"{BASE_CMDLINE} {self.cmdline}"]
        for number, disk in enumerate(self.disks):
            readonly = "on" if disk.readonly else "off"
            argv += ["-drive", f"file={disk.image},if=none,id=disk{number},format={disk.format},readonly={readonly},cache=unsafe"]
            argv += ["-device", f"virtio-blk-pci,drive=disk{number},serial={disk.serial}"]
        backends = (["user"] if self.user_net else []) + [f"tap,ifname={tap},script=no,downscript=no" for tap in self.taps]
        backends += self.netdevs
        for number, backend in enumerate(backends):
            argv += ["-netdev", f"{backend},id=net{number}", "-device", f"virtio-net-pci,netdev=net{number},mac={mac(number)}"]
        return argv


def monitor_command(path: Path, command: str, *, timeout: float = 10.0) -> str:
    """What QEMU's human monitor at PATH (Guest(monitor=PATH), running) answers to COMMAND, e.g. `info jit`."""
    prompt = b"(qemu) "
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(timeout)
        connection.connect(str(path))
        received = b""
        for line in (b"", command.encode() + b"\n"):
            connection.sendall(line)
            received = b""
            while not received.endswith(prompt):
                chunk = connection.recv(65536)
                if not chunk:
                    raise ConnectionError(f"QEMU's monitor at {path} closed before answering {command!r}")
                received += chunk
    return received[: -len(prompt)].decode(errors="replace")


def initrd_disk(initrd: Path, *, output: Path) -> Disk:
    """INITRD's contents as the squashfs disk ko.test=shutdown-initramfs puts back at /run/initramfs.

    Its stand-in for dracut-initramfs-restore. The root's kernel must have squashfs loaded (a
    squashfs root does; else add rd.driver.pre=squashfs). Unpacking a cpio in the guest takes
    over a minute under TCG; mounting this takes no time.
    """
    with tempfile.TemporaryDirectory(prefix="ko-bt-initrd-") as scratch:
        subprocess.run(["lsinitrd", "--unpack", str(initrd)], cwd=scratch, check=True, capture_output=True)  # run() has no cwd
        output.unlink(missing_ok=True)
        run(["mksquashfs", scratch, output, "-comp", "lz4", "-noappend", "-quiet"], capture=True)
    return Disk(output, serial="koinitrd", readonly=True)


def cpio_archive(tree: Path, *, output: Path) -> Path:
    """TREE as an uncompressed newc cpio at OUTPUT: an initramfs, or one more archive after an initrd's."""
    files = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout  # run() has no cwd
    with output.open("wb") as archive:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files, stdout=archive, check=True)
    return output


def mac(number: int) -> str:
    """The MAC of the guest's NUMBERth NIC (0 = the first)."""
    return USER_MAC[:-2] + f"{0x56 + number:02x}"


@dataclass(frozen=True)
class Mark:
    name: str
    value: str
    time: float  # guest uptime (/proc/uptime) when the guest wrote it


def parse_mark(line: str) -> Mark | None:
    """The marker a result-channel LINE is, if the whole line is one (see the protocol above)."""
    found = _MARK.fullmatch(line)
    if not found:
        return None
    return Mark(found["name"], found["value"] or "", float(found["time"]))


class ResultChannel:
    """The pipe behind the guest's second serial port (RESULT_PORT): results apart from printk's console.

    QEMU writes what the guest sends to ttyS1 into the pipe (`-serial file:/dev/fd/N`); the harness
    reads whole lines until QEMU exits. For boots the harness does not start itself:

        channel = ResultChannel()
        process = subprocess.Popen([..., *channel.serial_argv()], pass_fds=channel.pass_fds, ...)
        channel.started()
        lines = channel.read_all()   # every line the guest wrote, once QEMU has exited
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_inheritable(self._write_fd, True)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self._write_fd,)

    def serial_argv(self) -> list[str]:
        return ["-serial", f"file:/dev/fd/{self._write_fd}"]

    def started(self) -> None:
        """QEMU has its end now: drop ours, so the pipe ends when QEMU does."""
        os.close(self._write_fd)

    def lines(self) -> Iterator[str]:
        """Each line as the guest wrote it (the tty's CR removed), until QEMU exits."""
        with os.fdopen(self._read_fd, "rb") as pipe:
            for raw in pipe:
                yield raw.decode(errors="replace").rstrip("\r\n")

    def read_all(self) -> list[str]:
        return list(self.lines())


@dataclass(frozen=True)
class BootResult:
    log: Path  # the whole console, kept; the result channel next to it (.results)
    marks: tuple[Mark, ...]
    returncode: int | None  # None when the time limit killed QEMU
    seconds: float  # wall clock, QEMU start to exit
    last_timestamp: float | None  # the last kernel timestamp seen (guest uptime at the end)
    stray: tuple[str, ...] = ()  # result-channel lines that are no marker (a broken writer)

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def mark(self, name: str) -> Mark | None:
        return next((mark for mark in self.marks if mark.name == name), None)

    def value(self, name: str) -> str | None:
        found = self.mark(name)
        return found.value if found else None

    def values(self, name: str) -> list[str]:
        return [mark.value for mark in self.marks if mark.name == name]

    @property
    def reached_root(self) -> bool:
        return self.mark("init") is not None

    @property
    def time_to_root(self) -> float | None:
        """Guest uptime when the root's init started (the benchmarks' figure)."""
        found = self.mark("init")
        return found.time if found else None

    @property
    def mounts(self) -> list[str]:
        return self.values("mount")

    def console(self) -> str:
        return self.log.read_text(errors="replace")

    def describe(self, tail: int = 40) -> str:
        """The failure report: how the boot ended, where the log is, and its last lines."""
        ended = "time limit hit" if self.timed_out else f"QEMU exit status {self.returncode}"
        lines = self.console().splitlines()[-tail:]
        return f"boot: {ended} after {self.seconds:.1f} s; console log {self.log}\n" + "\n".join(lines)

    def expect(self, **expected: str) -> None:
        """Assert marker values (names with - written as _), with the console tail on failure."""
        wrong = {name: self.value(name.replace("_", "-")) for name in expected}
        wrong = {name: got for name, got in wrong.items() if got != expected[name]}
        if wrong or not self.reached_root or self.stray:
            got = ", ".join(f"{name.replace('_', '-')}={got!r} (expected {expected[name]!r})" for name, got in wrong.items())
            stray = f"; result lines that are no marker: {self.stray!r}" if self.stray else ""
            raise AssertionError(f"{got or ('root not reached' if not self.reached_root else '')}{stray}\n{self.describe()}")


class RunningGuest:
    """A booting guest: its console read on a thread into LOG (and ECHO), its result channel on another."""

    def __init__(self, guest: Guest, *, log: Path, echo: TextIO | None = None, on_mark: Callable[[Mark], None] | None = None) -> None:
        self.log = log
        self._echo = echo
        self._on_mark = on_mark
        self._marks: list[Mark] = []
        self._stray: list[str] = []
        self._last_timestamp: float | None = None
        self._changed = threading.Condition()
        log.parent.mkdir(parents=True, exist_ok=True)
        channel = ResultChannel()
        argv = guest.argv(results=channel)
        log.write_text(f"# {shlex.join(argv)}\n")
        self._started = time.monotonic()
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=channel.pass_fds,
        )
        channel.started()
        self._reader = threading.Thread(target=self._read, name=f"console {log.name}", daemon=True)
        self._reader.start()
        self._result_reader = threading.Thread(target=self._read_results, args=(channel,), name=f"results {log.name}", daemon=True)
        self._result_reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        with self.log.open("a") as log:
            for raw in self._process.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                log.write(line + "\n")
                log.flush()
                if self._echo is not None:
                    print(line, file=self._echo, flush=True)
                stamp = _TIMESTAMP.match(line)
                if stamp:
                    with self._changed:
                        self._last_timestamp = float(stamp[1])
                if _HALTED in line:
                    self.kill()

    def _read_results(self, channel: ResultChannel) -> None:
        with self.log.with_suffix(".results").open("w") as copy:
            for line in channel.lines():
                copy.write(line + "\n")
                copy.flush()
                mark = parse_mark(line)
                with self._changed:
                    if mark:
                        self._marks.append(mark)
                    else:
                        self._stray.append(line)
                    self._changed.notify_all()
                if mark and self._on_mark is not None:
                    self._on_mark(mark)
        with self._changed:
            self._changed.notify_all()

    def wait_for_mark(self, name: str, *, timeout: float) -> Mark:
        """Block until the guest prints marker NAME; AssertionError when it ends or TIMEOUT passes first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((mark for mark in self._marks if mark.name == name), None)
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._result_reader.is_alive():
                    raise AssertionError(f"no KO-MARK {name} within {timeout:g} s; console log {self.log}")
                self._changed.wait(min(remaining, 1.0))

    def wait(self, *, timeout: float = DEFAULT_TIMEOUT) -> BootResult:
        """Wait for QEMU to exit, killing it TIMEOUT seconds after the start."""
        remaining = max(0.0, timeout - (time.monotonic() - self._started))
        try:
            returncode: int | None = self._process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = None
        self._reader.join(timeout=10)
        self._result_reader.join(timeout=10)
        seconds = time.monotonic() - self._started
        if returncode is None:
            with self.log.open("a") as log:
                log.write(f"# killed by the harness after {timeout:g} s\n")
        with self._changed:
            return BootResult(self.log, tuple(self._marks), returncode, seconds, self._last_timestamp, tuple(self._stray))

    def kill(self) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def __enter__(self) -> RunningGuest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def log_path(name: str) -> Path:
    """A fresh console log path under RESULTS for a boot called NAME."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return RESULTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{stamp}-{os.getpid()}.log"


def boot(
    guest: Guest, *, name: str, timeout: float = DEFAULT_TIMEOUT, echo: TextIO | None = None, on_mark: Callable[[Mark], None] | None = None
) -> BootResult:
    """Boot GUEST to the end (poweroff, panic or TIMEOUT) and return what the console showed."""
    with RunningGuest(guest, log=log_path(name), echo=echo, on_mark=on_mark) as running:
        return running.wait(timeout=timeout)


if __name__ == "__main__":
    # python3 -m tests.boot.qemu INITRD CMDLINE: boot by hand with the console shown.
    result = boot(Guest(initrd=Path(sys.argv[1]), cmdline=sys.argv[2]), name="manual", echo=sys.stdout)
    print(f"root reached at {result.time_to_root}; marks: {[(m.name, m.value) for m in result.marks]}; log {result.log}")
