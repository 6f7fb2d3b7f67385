"""dm-verity for the read layer: the image carries its hash tree, the kernel checks every block read.

Layout (what `veritysetup format IMAGE IMAGE --hash-offset=DATA --data-blocks=N` writes, and what
`kiwi-overlay verity format` makes): the filesystem padded to 4 KiB blocks, then veritysetup's
superblock (one 4 KiB block), then the hash tree. One file, one export: the tree can never be
served from a different image version than the data, and every transport (NBD, AoE, a local
disk) carries it unchanged. The data size is not on the command line: it follows from the
device size, because data + superblock + tree grows strictly with the data.

The device-mapper table is made by veritysetup (cryptsetup), not by ioctls of our own: it reads
and checks the superblock (algorithm, salt, block sizes), speaks every kernel's dm ioctl
version, and is the tool that wrote the image, so format and open cannot disagree.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from kiwi_overlay.errors import KiwiOverlayError

BLOCK = 4096  # data and hash block size: veritysetup's default, the only one of this layout
DEVICE_NAME = "kiwi-overlay-root"
MAPPER = Path("/dev/mapper") / DEVICE_NAME
SUPERBLOCK_MAGIC = b"verity\0\0"
ROOT_HASH_LENGTHS = {40: "sha1", 64: "sha256", 128: "sha512"}  # hex digits: veritysetup's usual algorithms
# veritysetup's on-disk superblock up to the salt, little-endian: magic, version, hash type, uuid,
# algorithm name, data and hash block sizes, data blocks, salt size, padding, salt.
SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6x256s")


class VerityError(KiwiOverlayError):
    """A verity superblock that cannot give a root hash; the message says what is wrong with it."""


def hash_tree_blocks(data_blocks: int, *, digest_size: int = 32) -> int:
    """The hash blocks veritysetup writes for DATA_BLOCKS (each level one hash per block below, until one block)."""
    per_block = BLOCK // (1 << (digest_size - 1).bit_length())  # digests are padded to a power of two
    total, level = 0, data_blocks
    while level > 1:
        level = -(-level // per_block)
        total += level
    return total


def data_blocks_of(size: int, *, digest_size: int = 32) -> int | None:
    """The data blocks of an image of SIZE bytes in this layout, or None when no data size gives SIZE."""
    if size % BLOCK:
        return None
    blocks = size // BLOCK
    low, high = 1, blocks
    while low <= high:  # data + superblock + tree grows strictly with the data: one answer at most
        middle = (low + high) // 2
        total = middle + 1 + hash_tree_blocks(middle, digest_size=digest_size)
        if total == blocks:
            return middle
        low, high = (middle + 1, high) if total < blocks else (low, middle - 1)
    return None


def hash_locations(size: int, *, digest_size: int = 32) -> tuple[int, int] | None:
    """Where an image of SIZE bytes in this layout has its superblock and the block its root hash digests.

    That block is the top level of the hash tree, written first, right after the superblock; with a
    single data block there is no tree and it is the data block itself. None when SIZE fits no layout.
    """
    data_blocks = data_blocks_of(size, digest_size=digest_size)
    if data_blocks is None:
        return None
    superblock = data_blocks * BLOCK
    return superblock, superblock + BLOCK if data_blocks > 1 else 0


def root_hash_of(superblock: bytes, top_block: bytes) -> str:
    """The root hash (lowercase hex) from an image's verity SUPERBLOCK and the top block of its hash tree.

    It is the salted digest of that block with the superblock's algorithm: hash type 1 (veritysetup's
    default) hashes the salt first, type 0 (Chrome OS) last. Raises VerityError for a superblock
    that is not one (magic, version, hash type, salt size, algorithm, block size).
    """
    if len(superblock) < SUPERBLOCK.size:
        raise VerityError(f"is truncated ({len(superblock)} bytes)")
    magic, version, hash_type, _, algorithm, _, hash_block_size, _, salt_size, salt = SUPERBLOCK.unpack_from(superblock)
    if magic != SUPERBLOCK_MAGIC:
        raise VerityError("lacks the magic verity\\0\\0")
    if version != 1:
        raise VerityError(f"has version {version} (only 1 exists)")
    if hash_type not in (0, 1):
        raise VerityError(f"has hash type {hash_type} (0 or 1)")
    if salt_size > len(salt):
        raise VerityError(f"claims a salt of {salt_size} bytes (at most {len(salt)})")
    if hash_block_size != len(top_block):
        raise VerityError(f"has {hash_block_size}-byte hash blocks instead of {len(top_block)}")
    import hashlib  # here: OpenSSL's libcrypto loads slowly, and the command line check needs only the lengths

    name = algorithm.rstrip(b"\0").decode("ascii", "replace")
    try:
        digest = hashlib.new(name)
    except ValueError:
        digest = None
    if digest is None or not digest.digest_size:  # the variable-length SHAKEs have none
        raise VerityError(f"names the hash algorithm {name[:32]!r}, which this Python lacks")
    salt = salt[:salt_size]
    digest.update(salt + top_block if hash_type == 1 else top_block + salt)
    return digest.hexdigest()


def _has_superblock(image: Path, data_blocks: int) -> bool:
    with image.open("rb") as handle:
        handle.seek(data_blocks * BLOCK)
        return handle.read(len(SUPERBLOCK_MAGIC)) == SUPERBLOCK_MAGIC


def format_image(image: Path) -> str:
    """Pad IMAGE to whole blocks, append the superblock and hash tree; return the root hash (hex)."""
    from kiwi_overlay.run import run

    size = image.stat().st_size
    data_blocks = data_blocks_of(size)
    if data_blocks is not None and _has_superblock(image, data_blocks):
        raise KiwiOverlayError(f"{image} already has a verity hash tree (veritysetup dump --hash-offset={data_blocks * BLOCK} shows it)")
    data_blocks = -(-size // BLOCK)
    os.truncate(image, data_blocks * BLOCK)
    offset = data_blocks * BLOCK
    result = run(["veritysetup", "format", image, image, f"--hash-offset={offset}", f"--data-blocks={data_blocks}"], capture=True)
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Root hash":
            return value.strip()
    raise KiwiOverlayError(f"veritysetup format {image}: no root hash in its output")


def _first_block_readable(device: Path) -> bool:
    """Whether the kernel verifies block 0 (the filesystem's superblock): an I/O error means it does not."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.read(fd, BLOCK)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def open_verified(device: Path, root_hash: str) -> Path:
    """DEVICE behind dm-verity checked against ROOT_HASH: the device to mount instead (MAPPER).

    A hash that does not match (changed image, tree or hash) stops here with one line, before any mount.
    """
    from kiwi_overlay import log
    from kiwi_overlay.devices import device_size
    from kiwi_overlay.run import run

    option = f"rd.root.overlay.verity={root_hash}"
    from shutil import which

    if which("veritysetup") is None:
        raise KiwiOverlayError(
            f'{option}: this initrd has no veritysetup; build it with kiwi_overlay_verity="yes" in dracut.conf.d '
            "(and veritysetup, cryptsetup-bin, on the build host)"
        )
    size = device_size(device)
    data_blocks = data_blocks_of(size, digest_size=len(root_hash) // 2)
    if data_blocks is None or not _has_superblock(device, data_blocks):
        raise KiwiOverlayError(
            f"{option}: {device} ({size} bytes) carries no verity hash tree after its data; make it with `kiwi-overlay verity format IMAGE`"
        )
    run(["modprobe", "-q", "dm_verity"], check=False)
    # No udev rules for device-mapper in this initrd: libdevmapper makes /dev/mapper/NAME itself.
    os.environ["DM_DISABLE_UDEV"] = "1"
    argv: list[str | Path] = ["veritysetup", "open", device, DEVICE_NAME, device, root_hash, f"--hash-offset={data_blocks * BLOCK}"]
    result = run(argv, check=False, capture=True)
    if result.returncode != 0:
        said = " ".join(line.strip() for line in result.stderr.splitlines() if line.strip()) or f"exit status {result.returncode}"
        raise KiwiOverlayError(f"{option}: veritysetup cannot open {device}: {said}")
    if not _first_block_readable(MAPPER):
        close()
        raise KiwiOverlayError(
            f"{option}: {device} fails verification at block 0 (the filesystem superblock): "
            "the image or its hash tree was changed, or the root hash is not this image's; not booting it"
        )
    log.info(f"{device}: every read is verified by dm-verity against root hash {root_hash[:16]}... ({MAPPER})")
    return MAPPER


def close() -> None:
    """Remove the verity device (undo of open_verified)."""
    from kiwi_overlay.run import run

    run(["veritysetup", "close", DEVICE_NAME], check=False, capture=True)
