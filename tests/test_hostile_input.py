"""Issue 14 items 3, 4, 7, 8: what a fuzzer found in command line handling, each refused in one line.

Non-ASCII digits (`str.isdigit()` takes '²' and '٣'), numbers too long to convert, control
characters echoed to the console, `..` in device paths, and a generator that left an empty
sysroot.mount behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from blockdev import loop_device

from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.devices import wait_for_device
from kiwi_overlay.errors import KiwiOverlayError, OptionError
from kiwi_overlay.generator import generate

LONG = "9" * 5000  # int() refuses more than 4300 digits; float() makes it inf

NUMBERS = [
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.connections=²", "rd.root.overlay.nbd.connections=²"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.connections=٣", "rd.root.overlay.nbd.connections=٣"),
    (f"root=overlay:nbd=h:e rd.root.overlay.nbd.connections={LONG}", f"rd.root.overlay.nbd.connections={LONG}"),
    ("root=overlay:nbd://h:²/x", "root=overlay:nbd://h:²/x"),
    (f"root=overlay:nbd://h:{LONG}/x", f"root=overlay:nbd://h:{LONG}/x"),
    ("root=overlay:nbd=h:e ip=10.0.0.2::10.0.0.1:²⁴:c:eth0:none", "ip=10.0.0.2::10.0.0.1:²⁴:c:eth0:none"),
    (f"root=overlay:nbd=h:e ip=10.0.0.2/{LONG}::10.0.0.1::c:eth0:none", f"ip=10.0.0.2/{LONG}::10.0.0.1::c:eth0:none"),
    ("root=overlay:nbd=h:e ip=eth0:dhcp:١٥٣٣", "ip=eth0:dhcp:١٥٣٣"),
    (f"root=overlay:nbd=h:e ip=eth0:dhcp:{LONG}", f"ip=eth0:dhcp:{LONG}"),
    ("root=overlay:nbd=h:e rd.route=10.1.0.0/١٦:10.0.0.1", "rd.route=10.1.0.0/١٦:10.0.0.1"),
    (f"root=overlay:nbd=h:e rd.route=10.1.0.0/{LONG}:10.0.0.1", f"rd.route=10.1.0.0/{LONG}:10.0.0.1"),
    ("root=overlay:LABEL=r rd.root.overlay.size=٣g", "rd.root.overlay.size=٣g"),
    ("root=overlay:LABEL=r rd.root.overlay.size=٥٥%", "rd.root.overlay.size=٥٥%"),
    (f"root=overlay:LABEL=r rd.root.overlay.size={LONG}g", f"rd.root.overlay.size={LONG}g"),
    ("root=overlay:LABEL=r rd.root.overlay.size=99999999999t", "rd.root.overlay.size=99999999999t"),
    ("root=overlay:LABEL=r rd.root.overlay.timeout=٣", "rd.root.overlay.timeout=٣"),
    ("root=overlay:LABEL=r rd.root.overlay.timeout=1_0", "rd.root.overlay.timeout=1_0"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.timeout=٣", "rd.root.overlay.nbd.timeout=٣"),
    ("root=overlay:aoe=e٣.١", "root=overlay:aoe=e٣.١"),
    (f"root=overlay:aoe=e{LONG}.1", f"root=overlay:aoe=e{LONG}.1"),
]


def explain(cmdline: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiwi_overlay", "explain", "--cmdline", cmdline], capture_output=True, text=True)


@pytest.mark.parametrize(("cmdline", "shown"), NUMBERS, ids=range(len(NUMBERS)))
def test_numbers_are_ascii_and_bounded(cmdline: str, shown: str) -> None:
    """Item 4: an OptionError naming the option (no 'unexpected ...' traceback class, no value passed on)."""
    result = explain(cmdline)
    assert (result.returncode, result.stdout) == (2, ""), result.stdout
    assert result.stderr.startswith(f"kiwi-overlay: {shown[:200]}"), result.stderr[:300]
    assert "unexpected" not in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("retry", ["٣", "²", LONG, "9" * 400])
def test_an_rd_retry_of_other_digits_or_too_long_counts_as_the_default(tmp_path: Path, retry: str) -> None:
    """Item 4: rd.retry with hundreds of digits made math.ceil(inf) crash the generator."""
    generate(KernelCmdline(f"root=overlay:LABEL=r rd.root.overlay.timeout=30 rd.retry={retry}"), tmp_path)
    assert "JobTimeoutSec=300s\n" in (tmp_path / "sysroot.mount").read_text()  # 180 s + 2 x 30 + 60 s


@pytest.mark.parametrize("control", ["\n", "\x1b[2J", "\r", "\x7f", "\x9b31m", "\x00"])
def test_control_characters_in_values_are_escaped(control: str) -> None:
    """Item 7: a newline or an ESC in a value never reaches the console raw."""
    error = OptionError("rd.root.overlay.size", f"2{control}x", f"bad {control}", "rd.root.overlay.size=2g")
    text = str(error)
    assert all(ord(char) >= 0x20 and not 0x7F <= ord(char) < 0xA0 for char in text), repr(text)
    assert text.startswith("rd.root.overlay.size=2\\x")


def test_control_characters_never_reach_the_console_from_the_command() -> None:
    result = explain('root=overlay:LABEL=r "rd.root.overlay.size=2\x1b[31m\nx"')
    assert result.returncode == 2
    assert result.stderr.startswith("kiwi-overlay: rd.root.overlay.size=2\\x1b[31m\\x0ax: must be a percentage of RAM")
    assert result.stderr.count("\n") == 1


def test_bytes_that_are_not_utf8_are_escaped_not_a_crash() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "explain", "--cmdline", b"root=overlay:LABEL=r rd.root.overlay.size=2\xc2"],
        capture_output=True,
    )
    assert (result.returncode, result.stderr[:45]) == (2, b"kiwi-overlay: rd.root.overlay.size=2\\xc2: mus")


@pytest.mark.parametrize("spec", ["/dev/../etc/passwd", "/dev/disk/../../etc/shadow", "/dev/./../run/x", "/dev/.."])
def test_dot_dot_in_a_write_device_path_is_refused(spec: str) -> None:
    """Item 8."""
    result = explain(f"root=overlay:LABEL=r rd.root.overlay.write={spec}")
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(f"kiwi-overlay: rd.root.overlay.write={spec}: ") and "unexpected" not in result.stderr


def test_a_write_device_that_is_not_a_block_device_is_refused(tmp_path: Path) -> None:
    """Item 8: wait_for_device takes block devices only (a regular file would be loop-mounted by mount)."""
    regular = tmp_path / "passwd"
    regular.write_text("root:x:0:0::/root:/bin/sh\n")
    with pytest.raises(KiwiOverlayError, match=f"^{regular} is not a block device$"):
        wait_for_device(regular, timeout=0.2)


@pytest.mark.root
def test_a_block_device_is_still_found(tmp_path: Path) -> None:
    image = tmp_path / "disk"
    image.write_bytes(b"\0" * (1 << 20))
    with loop_device(image) as device:
        assert wait_for_device(device, timeout=1) == device


def test_a_rootflags_byte_that_is_not_utf8_leaves_no_empty_unit(tmp_path: Path) -> None:
    """Item 3: the kernel splits at 0xA0 (cutting a UTF-8 no-break space); the unit was created, then encoding failed."""
    cmdline = KernelCmdline(b"root=overlay:LABEL=r rootflags=x\xc2\xa0y".decode("utf-8", "surrogateescape"))
    generate(cmdline, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["initrd-root-fs.target.requires", "kiwi-overlay.service"]
    assert "ExecStart=/usr/bin/kiwi-overlay mount\n" in (tmp_path / "kiwi-overlay.service").read_text()
    assert os.listdir(tmp_path / "initrd-root-fs.target.requires") == ["kiwi-overlay.service"]


def test_generate_writes_the_fallback_service_on_any_unexpected_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 3: a bug in planning (here: one put in on purpose) still leaves the service that reports on the console."""
    from kiwi_overlay import generator

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(generator, "mount_unit", broken)
    generate(KernelCmdline("root=overlay:LABEL=r"), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["initrd-root-fs.target.requires", "kiwi-overlay.service"]
    assert "ExecStart=/usr/bin/kiwi-overlay mount\n" in (tmp_path / "kiwi-overlay.service").read_text()


def test_units_are_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """Item 3: written to a temporary name and renamed: no temporary file stays, an old unit is replaced whole."""
    (tmp_path / "sysroot.mount").write_text("old\n")
    generate(KernelCmdline("root=overlay:LABEL=r"), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["initrd-root-fs.target.requires", "kiwi-overlay.service", "sysroot.mount"]
    assert (tmp_path / "sysroot.mount").read_text().startswith("# Generated by kiwi-overlay generate")
