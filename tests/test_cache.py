"""tests/boot/cache.py: test runs on one machine share the cache; each entry is built once, whole."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.boot.cache import UNUSED_FOR, cached

CHECKOUT = Path(__file__).resolve().parents[1]
# A run that builds ENTRY slowly, counting its builds in BUILDS; it prints what it got.
RUN = """
import sys, time
from pathlib import Path
from tests.boot.cache import cached
entry, builds = Path(sys.argv[1]), Path(sys.argv[2])

def build(scratch):
    with builds.open("a") as count:
        count.write("built\\n")
    time.sleep(1)
    (scratch / "made").write_text("whole")
    return scratch / "made"

print(cached(entry, build).read_text())
"""


def test_two_runs_wanting_one_entry_build_it_once(tmp_path: Path) -> None:
    entry, builds = tmp_path / "entry", tmp_path / "builds"
    runs = [
        subprocess.Popen([sys.executable, "-c", RUN, str(entry), str(builds)], cwd=CHECKOUT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=60)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert outputs == ["whole\n", "whole\n"]
    assert builds.read_text() == "built\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".entry.lock", "builds", "entry"], "no scratch directory is left"


def test_a_failed_build_leaves_no_entry(tmp_path: Path) -> None:
    def fail(scratch: Path) -> Path:
        (scratch / "half").write_text("half")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError):
        cached(tmp_path / "entry", fail)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".entry.lock"]


def test_entries_of_other_inputs_go_when_unused(tmp_path: Path) -> None:
    """A new entry prunes its directory: digest-named entries no run used for two days; a lookup counts as a use."""
    stale = time.time() - UNUSED_FOR - 60
    names = ["kis-debian13-0123456789abcdef", "gpt-0123456789abcdef.img", "old-but-used-0123456789ab", "linux-image-6.1.0-57-amd64"]
    for name in names:
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (stale, stale))
    (tmp_path / "fresh-abcdef012345").mkdir()
    assert cached(tmp_path / "old-but-used-0123456789ab", build=lambda scratch: scratch) == tmp_path / "old-but-used-0123456789ab"

    def build(scratch: Path) -> Path:
        (scratch / "made").write_text("new")
        return scratch / "made"

    cached(tmp_path / "kis-debian13-fedcba9876543210", build)
    entries = sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith("."))
    assert entries == ["fresh-abcdef012345", "kis-debian13-fedcba9876543210", "linux-image-6.1.0-57-amd64", "old-but-used-0123456789ab"]
