"""kiwi_overlay.pyroute: pyroute2's submodules without its package initializers (in a fresh interpreter each)."""

from __future__ import annotations

import subprocess
import sys


def python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_the_boot_imports_load_neither_ndb_nor_sqlite() -> None:
    loaded = python(
        "import sys\n"
        "from kiwi_overlay.pyroute import skip_package_init\n"
        "skip_package_init()\n"
        "from pyroute2.iproute.linux import IPRoute\n"
        "from pyroute2.dhcp.client import AsyncDHCPClient\n"
        "from pyroute2.netlink.exceptions import NetlinkError\n"
        "print(sorted(name for name in ('sqlite3', 'pyroute2.ndb.main', 'pyroute2.ipdb', 'pyroute2.ipset') if name in sys.modules))"
    )
    assert loaded == "[]"


def test_a_name_of_the_package_runs_its_initializer_on_demand() -> None:
    # Code elsewhere in the same process may still write `from pyroute2 import IPRoute`.
    assert (
        python(
            "from kiwi_overlay.pyroute import skip_package_init\n"
            "skip_package_init()\n"
            "from pyroute2.iproute.linux import IPRoute as Lean\n"
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
            "from kiwi_overlay.pyroute import skip_package_init\n"
            "skip_package_init()\n"
            "print(sys.modules['pyroute2'] is pyroute2, hasattr(pyroute2, 'NDB'))"
        )
        == "True True"
    )
