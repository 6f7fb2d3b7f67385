"""A network namespace of a test's own, removed afterwards (with every link and socket in it)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def network_namespace(prefix: str) -> Iterator[str]:
    """The name of a new namespace `PREFIX-RANDOM`, deleted when the block ends."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)  # gone already is fine
