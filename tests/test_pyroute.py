"""kiwi_overlay.pyroute: pyroute2's submodules without its package initializers (in a fresh interpreter each)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_every_name_the_boot_takes_loads_neither_ndb_nor_sqlite() -> None:
    loaded = python(
        "import sys\n"
        "from kiwi_overlay import pyroute\n"
        "values = [getattr(pyroute, name) for name in pyroute.EXPORTS]\n"
        "print(sorted(name for name in ('sqlite3', 'pyroute2.ndb.main', 'pyroute2.ipdb', 'pyroute2.ipset') if name in sys.modules))"
    )
    assert loaded == "[]"


def test_a_name_is_the_one_its_submodule_defines() -> None:
    assert (
        python(
            "from kiwi_overlay.pyroute import IPRoute, NetlinkError\n"
            "import pyroute2.iproute.linux, pyroute2.netlink.exceptions\n"
            "print(IPRoute is pyroute2.iproute.linux.IPRoute, NetlinkError is pyroute2.netlink.exceptions.NetlinkError)"
        )
        == "True True"
    )


def test_a_name_it_does_not_export_is_an_attribute_error() -> None:
    from kiwi_overlay import pyroute

    with pytest.raises(AttributeError, match="NDB"):
        pyroute.NDB  # noqa: B018


def test_a_name_of_the_package_runs_its_initializer_on_demand() -> None:
    # Code elsewhere in the same process may still write `from pyroute2 import IPRoute`.
    assert (
        python(
            "from kiwi_overlay.pyroute import IPRoute as Lean\n"
            "from pyroute2 import IPRoute, NDB\n"
            "import pyroute2.iproute\n"
            "print(IPRoute is Lean, NDB.__name__, pyroute2.iproute.IPRoute is Lean)"
        )
        == "True NDB True"
    )


def test_nothing_changes_once_pyroute2_is_imported() -> None:
    assert (
        python(
            "import pyroute2, sys\n"
            "from kiwi_overlay.pyroute import IPRoute\n"
            "print(sys.modules['pyroute2'] is pyroute2, hasattr(pyroute2, 'NDB'), IPRoute is pyroute2.IPRoute)"
        )
        == "True True True"
    )
