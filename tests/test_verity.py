"""dm-verity's image side and plan (issue 17, item 1): layout arithmetic against veritysetup itself, format, option.

What the kernel does with the tree is booted in tests/test_boot_verity.py (the host has no device-mapper).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.config.parse import parse_plan
from kiwi_overlay.errors import KiwiOverlayError, OptionError
from kiwi_overlay.explain import describe, plan_dict
from kiwi_overlay.verity import (
    BLOCK,
    MAPPER,
    SUPERBLOCK,
    VerityError,
    data_blocks_of,
    format_image,
    hash_locations,
    hash_tree_blocks,
    root_hash_of,
)

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


def test_explain_says_a_reconnect_checks_the_root_hash() -> None:
    servers = "root=overlay:nbd=10.0.2.2,10.0.2.3:root"
    assert "any with the same size and verity root hash" in describe(
        parse_plan(KernelCmdline(f"{servers} rd.root.overlay.verity={ROOT_HASH}"))
    )
    assert "any with the same size\n" in describe(parse_plan(KernelCmdline(servers)))


@pytest.mark.parametrize("value", ["", "xyz", "0123", ROOT_HASH + "0", "g" * 64])
def test_a_value_that_is_no_root_hash_is_refused_in_one_line(value: str) -> None:
    with pytest.raises(OptionError, match=r"^rd\.root\.overlay\.verity=.*: needs the root hash .*; e\.g\. rd\.root\.overlay\.verity="):
        parse_plan(KernelCmdline(f"root=overlay:LABEL=root rd.root.overlay.verity={value}"))


def _hash_blocks(image: Path, *, digest_size: int = 32) -> tuple[bytes, bytes]:
    """The superblock and the top hash block of a formatted IMAGE, where hash_locations says they are."""
    locations = hash_locations(image.stat().st_size, digest_size=digest_size)
    assert locations is not None
    with image.open("rb") as handle:
        blocks = []
        for offset in locations:
            handle.seek(offset)
            blocks.append(handle.read(BLOCK))
    return blocks[0], blocks[1]


@pytest.mark.parametrize("data_blocks", [1, 3, 129, 16385])  # no tree, one level, two levels, three levels
def test_root_hash_from_the_superblock_and_top_block_is_the_one_verity_format_prints(tmp_path: Path, data_blocks: int) -> None:
    image = tmp_path / "root.img"
    image.write_bytes(bytes(range(256)) * (data_blocks * BLOCK // 256))
    result = subprocess.run([sys.executable, "-m", "kiwi_overlay", "verity", "format", str(image)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().partition("=")[2]
    assert root_hash_of(*_hash_blocks(image)) == printed


@pytest.mark.parametrize(("hash_type", "algorithm", "digest_size"), [(0, "sha256", 32), (1, "sha1", 20), (1, "sha512", 64)])
def test_root_hash_follows_the_hash_type_and_algorithm(tmp_path: Path, hash_type: int, algorithm: str, digest_size: int) -> None:
    """Chrome OS's type 0 puts the salt after the block; the algorithm is the superblock's, not always sha256."""
    data_blocks = 300
    image = tmp_path / "root.img"
    image.write_bytes(b"\x17" * (data_blocks * BLOCK))
    argv = ["veritysetup", "format", str(image), str(image), f"--hash-offset={data_blocks * BLOCK}", f"--data-blocks={data_blocks}"]
    result = subprocess.run([*argv, f"--format={hash_type}", f"--hash={algorithm}"], capture_output=True, text=True, check=True)
    printed = next(line.partition(":")[2].strip() for line in result.stdout.splitlines() if line.startswith("Root hash"))
    assert root_hash_of(*_hash_blocks(image, digest_size=digest_size)) == printed


def _superblock(**fields: object) -> bytes:
    values = {
        "magic": b"verity\0\0",
        "version": 1,
        "hash_type": 1,
        "algorithm": b"sha256",
        "hash_block_size": BLOCK,
        "salt_size": 32,
    } | fields
    return SUPERBLOCK.pack(
        values["magic"],
        values["version"],
        values["hash_type"],
        bytes(16),
        values["algorithm"],
        BLOCK,
        values["hash_block_size"],
        9,
        values["salt_size"],
        b"s" * 32,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"magic": b"ext4\0\0\0\0"}, r"lacks the magic verity\\0\\0"),
        ({"version": 2}, "has version 2"),
        ({"hash_type": 7}, "has hash type 7"),
        ({"salt_size": 257}, "claims a salt of 257 bytes"),
        ({"hash_block_size": 512}, "has 512-byte hash blocks instead of 4096"),
        ({"algorithm": b"rot13"}, "names the hash algorithm 'rot13', which this Python lacks"),
        ({"algorithm": b"shake_128"}, "names the hash algorithm 'shake_128'"),
    ],
)
def test_a_superblock_that_is_not_one_is_named_not_hashed(fields: dict[str, object], message: str) -> None:
    with pytest.raises(VerityError, match=message):
        root_hash_of(_superblock(**fields), bytes(BLOCK))
    with pytest.raises(VerityError, match="is truncated"):
        root_hash_of(_superblock()[:100], bytes(BLOCK))
