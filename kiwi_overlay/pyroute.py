"""pyroute2 without its package initializers: `from kiwi_overlay.pyroute import IPRoute` loads only
the submodules that define what a step asks for.

`import pyroute2.netlink.generic` first runs pyroute2/__init__.py, and that imports every part of
the library (NDB with sqlite3, IPDB, ipset, IPVS, wireless, ...): 30 ms natively, about a second in
a TCG guest. Before the first name is taken from here, pyroute2 and pyroute2.iproute are registered
as bare packages whose submodules import as usual. A name only the initializer defines (`from
pyroute2 import IPRoute`, written by code elsewhere in the same process) runs the real initializer
on first use. The initrd carries only what these names import (kiwi_overlay.pyclosure traces them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

# What kiwi-overlay takes from pyroute2, each from the submodule that defines it.
EXPORTS = {
    "IPRoute": "pyroute2.iproute.linux",
    "NetlinkError": "pyroute2.netlink.exceptions",
    "GenericNetlinkSocket": "pyroute2.netlink.generic",
    "genlmsg": "pyroute2.netlink",
    "nla": "pyroute2.netlink",
    "NLM_F_ACK": "pyroute2.netlink",
    "NLM_F_REQUEST": "pyroute2.netlink",
}
# Packages whose initializer imports far more than their submodules need.
HEAVY_PACKAGES = ("pyroute2", "pyroute2.iproute")


def __getattr__(name: str) -> Any:
    """EXPORTS[NAME], imported on first use (then an attribute of this module)."""
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    _skip_package_init()
    value = getattr(import_module(EXPORTS[name]), name)
    globals()[name] = value
    return value


def _skip_package_init() -> None:
    """Register HEAVY_PACKAGES without running their __init__.py (a no-op once pyroute2 is imported)."""
    if "pyroute2" in sys.modules:
        return
    from importlib.util import find_spec, module_from_spec

    for name in HEAVY_PACKAGES:
        spec = find_spec(name)
        if spec is None or spec.loader is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        module = module_from_spec(spec)
        module.__getattr__ = _initialize_on_demand(module, Path(spec.submodule_search_locations[0]))  # type: ignore[method-assign,assignment]
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def _initialize_on_demand(module: ModuleType, directory: Path) -> object:
    def __getattr__(name: str) -> object:
        # A submodule is not an attribute yet: importlib asks (hasattr) before it imports one.
        if name.startswith("__") or (directory / name).is_dir() or (directory / f"{name}.py").is_file():
            raise AttributeError(name)
        del module.__getattr__
        assert module.__spec__ is not None and module.__spec__.loader is not None
        module.__spec__.loader.exec_module(module)
        return getattr(module, name)

    return __getattr__
