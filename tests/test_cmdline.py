"""The command line parser against dracut's own getarg/getargbool/getcmdline, answer for answer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kiwi_overlay.cmdline import KernelCmdline, gather

DRACUT = Path("/usr/lib/dracut")
# Run dracut's functions as they run in an initrd: dracut-lib.sh sourced, getarg backed by
# the dracut-getarg helper. Each answer is "<exit status>:<getarg output>:<getargbool>" and NUL-terminated.
DRACUT_QUERY = r"""
. "$DRACUT/modules.d/99base/dracut-dev-lib.sh"
. "$DRACUT/modules.d/99base/dracut-lib.sh"
if [ -n "${TEST_ROOT:-}" ]; then
    eval "$(declare -f getcmdline | sed "s#/etc/cmdline#$TEST_ROOT/etc/cmdline#g; s#/proc/cmdline#$TEST_ROOT/proc/cmdline#g")"
    printf '%s\0' "$(getcmdline)"
else
    getcmdline() { printf '%s' "$TEST_CMDLINE"; }
fi
# dracut-getarg 059 segfaults when the command line ends in a lone '"': say so first.
CMDLINE=$(getcmdline) dracut-getarg probe > /dev/null 2>&1
[ $? -lt 128 ] || printf 'CRASH\0'
for key in "$@"; do
    value=$(getarg "$key"); status=$?
    if getargbool 0 "$key"; then bool=1; else bool=0; fi
    printf '%s:%s:%s\0' "$status" "$value" "$bool"
done
"""

KEYS = ["root", "a", "b", "rd.x", "rd.root.overlay.size", "ip", "x\u00e9"]


@pytest.fixture(scope="module")
def getarg_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "dracut-getarg").symlink_to(DRACUT / "dracut-util")
    return f"{bindir}:{os.environ['PATH']}"


def dracut_answers(path: str, keys: list[str], *, cmdline: str | None = None, root: Path | None = None) -> list[bytes]:
    env = {"PATH": path, "DRACUT": str(DRACUT), "LC_ALL": "C"}
    if root is not None:
        env["TEST_ROOT"] = str(root)
    else:
        assert cmdline is not None
        env["TEST_CMDLINE"] = cmdline
    out = subprocess.run(["bash", "-c", DRACUT_QUERY, "query", *keys], env=env, capture_output=True, check=True, timeout=30).stdout
    return out.split(b"\0")[:-1]


def our_answers(cmdline: KernelCmdline, keys: list[str]) -> list[bytes]:
    answers = []
    for key in keys:
        value = cmdline.getarg(key)
        status = 1 if value is None else 0
        bool_ = 1 if cmdline.getargbool(key) else 0
        answers.append(f"{status}:{value or ''}:{bool_}".encode("utf-8", "surrogateescape"))
    return answers


EXAMPLES = [
    "",
    "root=overlay:nbd=192.168.1.1:rootfs",
    "a=1 a=2",
    "a=1 a",
    "a a=0",
    "a=off b=no rd.x=yes",
    "a=",
    'a="2 g" b="x" "b=c d"',
    '"a=1" "a"',
    'a="unterminated b=1',
    'a="',
    '"" a',
    'a "b',
    "=a=b a=c",
    "  a=1\t\tb=2\n",
    "a=\u00e9 x\u00e9=1",
    "a=b\u00a0b=1",  # NBSP is a space to the kernel's parser
    'root=overlay:LABEL="my root" a=x"y z"',
    "rd.root.overlay.size=2g rd.root.overlay.size=8M",
    '"\\\n',  # a quoted trailing newline: command substitution drops it
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_matches_dracut_on_examples(getarg_path: str, text: str) -> None:
    assert our_answers(KernelCmdline(text), KEYS) == dracut_answers(getarg_path, KEYS, cmdline=text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet='ab=" \t\n.\\\u00e9\u00a0xrd', max_size=40))
def test_matches_dracut_on_random_command_lines(getarg_path: str, text: str) -> None:
    keys = ["a", "b", "rd.x", "x\u00e9", "a.b", "\\"]
    theirs = dracut_answers(getarg_path, keys, cmdline=text)
    assume(theirs[0] != b"CRASH")  # dracut has no answer to compare with
    assert our_answers(KernelCmdline(text), keys) == theirs


def _layout_files(root: Path, proc: str, etc: str | None, confs: list[str]) -> None:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "etc/cmdline.d").mkdir(parents=True, exist_ok=True)
    (root / "proc/cmdline").write_text(proc)
    if etc is not None:
        (root / "etc/cmdline").write_text(etc)
    for index, conf in enumerate(confs):
        (root / f"etc/cmdline.d/{index:02d}-test.conf").write_text(conf)
    (root / "etc/cmdline.d/ignored.txt").write_text("a=ignored\n")


def test_merges_files_as_dracut_does(getarg_path: str, tmp_path: Path) -> None:
    _layout_files(
        tmp_path,
        proc="BOOT_IMAGE=/vmlinuz root=overlay:LABEL=x a=proc\n",
        etc="  b=etc  \n",
        confs=["a=conf1\nrd.x=1\n", "rd.x=0 b=conf2", ""],
    )
    keys = ["root", "a", "b", "rd.x"]
    ours = KernelCmdline.from_system(tmp_path)
    theirs = dracut_answers(getarg_path, keys, root=tmp_path)
    assert theirs[0] == gather(tmp_path).encode()
    assert our_answers(ours, keys) == theirs[1:]
    assert ours.getarg("a") == "proc"  # /proc/cmdline comes last and wins
    assert ours.getarg("b") == "etc"


line = st.text(alphabet='ab=" \t.x', max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    proc=line,
    etc=st.none() | st.lists(line, max_size=3).map("\n".join),
    confs=st.lists(st.lists(line, max_size=3).map("\n".join), max_size=3),
)
def test_merges_random_files_as_dracut_does(
    getarg_path: str, tmp_path_factory: pytest.TempPathFactory, proc: str, etc: str | None, confs: list[str]
) -> None:
    root = tmp_path_factory.mktemp("root")
    _layout_files(root, proc=proc + "\n", etc=etc, confs=confs)
    keys = ["a", "b", "x"]
    theirs = dracut_answers(getarg_path, keys, root=root)
    assume(theirs[1] != b"CRASH")
    assert theirs[0] == gather(root).encode()
    assert our_answers(KernelCmdline.from_system(root), keys) == theirs[1:]


def test_getargs_returns_every_occurrence() -> None:
    cmdline = KernelCmdline("ip=eth0:dhcp ip=eth1:dhcp6 ip rd.neednet")
    assert cmdline.getargs("ip") == ("eth0:dhcp", "eth1:dhcp6", "ip")
    assert cmdline.getargs("nameserver") == ()
