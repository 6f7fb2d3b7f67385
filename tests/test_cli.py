"""kiwi_overlay.cli and .arguments: a boot step builds only its own subcommand's parser; everything else sees all of them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kiwi_overlay.arguments import build_parser


def choices(command: str | None) -> list[str]:
    subparsers = next(action for action in build_parser(command)._actions if action.dest == "command")
    return list(subparsers.choices)  # type: ignore[arg-type]


def test_a_subcommand_gets_its_parser_alone() -> None:
    assert choices("dracut-cmdline") == ["dracut-cmdline", "dracut-module", "dracut-python"]
    assert choices("mount") == ["prepare", "mount"]
    assert choices("shutdown") == ["shutdown"]


@pytest.mark.parametrize("word", [None, "--help", "-h", "explian"])
def test_anything_else_gets_every_subcommand(word: str | None) -> None:
    assert choices(word) == [
        "explain", "aoe", "verity", "net", "prepare", "mount", "status", "watch", "generate", "shutdown",
        "dracut-cmdline", "dracut-module", "dracut-python", "nbd",
    ]  # fmt: skip


def test_a_misspelt_subcommand_is_one_usage_error_listing_every_choice() -> None:
    result = subprocess.run([sys.executable, "-m", "kiwi_overlay", "explian"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice: 'explian'" in result.stderr and "'dracut-cmdline'" in result.stderr and "'nbd'" in result.stderr


def test_a_subcommand_parses_as_before() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "explain", "--cmdline", "root=overlay:nbd=192.0.2.1:root"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "NBD export 'root' on 192.0.2.1:10809" in result.stdout


def test_process_age_counts_from_the_process_start() -> None:
    """The hooks' debug line: how long the interpreter ran before it logged (here: 0.3 s of sleep at least)."""
    script = "import time; time.sleep(0.3); from kiwi_overlay.log import process_age; print(process_age())"
    age = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert 0.3 <= age < 10
