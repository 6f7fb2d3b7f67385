"""dm-verity's image side and plan (issue 17, item 1): layout arithmetic against veritysetup itself, format, option.

What the kernel does with the tree is booted in tests/test_boot_verity.py (the host has no device-mapper).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.config import parse_plan
from kiwi_overlay.errors import KiwiOverlayError, OptionError
from kiwi_overlay.explain import describe, plan_dict
from kiwi_overlay.verity import BLOCK, MAPPER, data_blocks_of, format_image, hash_tree_blocks

ROOT_HASH = "0123456789abcdef" * 4


@pytest.mark.parametrize("data_blocks", [1, 2, 127, 128, 129, 16384, 16385])
def test_layout_matches_what_veritysetup_writes(tmp_path: Path, data_blocks: int) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"\x5a" * (data_blocks * BLOCK))
    format_image(image)
    size = image.stat().st_size
    assert size == (data_blocks + 1 + hash_tree_blocks(data_blocks)) * BLOCK
    assert data_blocks_of(size) == data_blocks


def test_sizes_of_no_layout_have_no_data_size() -> None:
    sizes = {(blocks + 1 + hash_tree_blocks(blocks)) * BLOCK for blocks in range(1, 400)}
    assert [size for size in range(BLOCK, 400 * BLOCK, BLOCK) if data_blocks_of(size) is None] == sorted(
        set(range(BLOCK, 400 * BLOCK, BLOCK)) - sizes
    )
    assert data_blocks_of(BLOCK * 3 + 1) is None


def test_format_pads_appends_the_tree_that_veritysetup_verifies_and_refuses_a_second_time(tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    image.write_bytes(b"filesystem" * 1000)  # not a whole number of blocks
    result = subprocess.run([sys.executable, "-m", "kiwi_overlay", "verity", "format", str(image)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    option, _, root_hash = result.stdout.strip().partition("=")
    assert option == "rd.root.overlay.verity" and len(root_hash) == 64
    offset = 3 * BLOCK  # 10000 bytes padded to three blocks
    verify = ["veritysetup", "verify", str(image), str(image), root_hash, f"--hash-offset={offset}"]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    with pytest.raises(KiwiOverlayError, match="already has a verity hash tree"):
        format_image(image)
    with image.open("r+b") as handle:  # a changed data byte: veritysetup's own check fails
        handle.write(b"F")
    assert subprocess.run(verify, capture_output=True).returncode != 0


def test_plan_carries_the_root_hash_and_explain_shows_the_verity_device() -> None:
    plan = parse_plan(KernelCmdline(f"root=overlay:nbd=10.0.2.2:root rd.root.overlay.verity={ROOT_HASH.upper()}"))
    assert plan.verity == ROOT_HASH
    data = plan_dict(plan)
    assert data["verity"] == ROOT_HASH
    assert data["mounts"][1]["source"] == str(MAPPER)
    assert f"verified by dm-verity: root hash {ROOT_HASH}" in describe(plan)
    assert parse_plan(KernelCmdline("root=overlay:LABEL=root")).verity is None


@pytest.mark.parametrize("value", ["", "xyz", "0123", ROOT_HASH + "0", "g" * 64])
def test_a_value_that_is_no_root_hash_is_refused_in_one_line(value: str) -> None:
    with pytest.raises(OptionError, match=r"^rd\.root\.overlay\.verity=.*: needs the root hash .*; e\.g\. rd\.root\.overlay\.verity="):
        parse_plan(KernelCmdline(f"root=overlay:LABEL=root rd.root.overlay.verity={value}"))
