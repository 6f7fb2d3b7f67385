"""files.write_whole: a reader sees the old file or the new one, and nothing is left behind on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiwi_overlay.files import write_whole


def test_write_whole_replaces_a_file_and_leaves_no_temporary_name(tmp_path: Path) -> None:
    target = tmp_path / "lease.json"
    target.write_text("old\n")
    write_whole(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["lease.json"]


def test_write_whole_takes_a_string_path_and_writes_undecodable_bytes_back(tmp_path: Path) -> None:
    raw = b"rd.root.overlay.write=LABEL=\xa0cow\n"  # the kernel command line is bytes, not UTF-8
    write_whole(str(tmp_path / "conf"), raw.decode("utf-8", "surrogateescape"))
    assert (tmp_path / "conf").read_bytes() == raw


def test_write_whole_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "answer"
    target.write_text("0\n")
    with pytest.raises(UnicodeEncodeError):
        write_whole(target, "\ud800")  # a lone surrogate that no byte escaped: cannot be encoded
    assert target.read_text() == "0\n"
    assert sorted(os.listdir(tmp_path)) == ["answer"]


def test_write_whole_into_a_missing_directory_fails_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_whole(tmp_path / "missing" / "file", "x")
    assert not (tmp_path / "missing").exists()
