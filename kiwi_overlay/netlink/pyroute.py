"""pyroute2's message classes without its package initializer: `from kiwi_overlay.netlink.pyroute
import ifinfmsg` loads only the submodules that define what a step asks for.

`import pyroute2.netlink` first runs pyroute2/__init__.py, and that imports every part of the
library (its sockets and asyncio, NDB with sqlite3, IPDB, ipset, IPVS, wireless, ...): about a
second in a TCG guest. Before the first name is taken from here, pyroute2 is registered as a bare
package whose submodules import as usual. A name only the initializer defines (`from pyroute2
import IPRoute`, written by code elsewhere in the same process) runs the real initializer on
first use. The initrd carries only what these names import (kiwi_overlay.pyclosure traces them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

# What kiwi-overlay takes from pyroute2, each from the submodule that defines it: the messages
# (encoding and decoding of rtnetlink and generic netlink) and the error; the sockets are its own.
EXPORTS = {
    "NetlinkError": "pyroute2.netlink.exceptions",
    "ifinfmsg": "pyroute2.netlink.rtnl.ifinfmsg",
    "ifaddrmsg": "pyroute2.netlink.rtnl.ifaddrmsg",
    "rtmsg": "pyroute2.netlink.rtnl.rtmsg",
    "ctrlmsg": "pyroute2.netlink",
    "genlmsg": "pyroute2.netlink",
    "nla": "pyroute2.netlink",
}
# The package whose initializer imports far more than its submodules need.
HEAVY_PACKAGE = "pyroute2"


def __getattr__(name: str) -> Any:
    """EXPORTS[NAME], imported on first use (then an attribute of this module)."""
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    _skip_package_init()
    value = getattr(import_module(EXPORTS[name]), name)
    _forward_logging()
    globals()[name] = value
    return value


def _skip_package_init() -> None:
    """Register HEAVY_PACKAGE without running its __init__.py (a no-op once pyroute2 is imported)."""
    if HEAVY_PACKAGE in sys.modules:
        return
    from importlib.util import find_spec, module_from_spec

    spec = find_spec(HEAVY_PACKAGE)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named {HEAVY_PACKAGE!r}", name=HEAVY_PACKAGE)
    module = module_from_spec(spec)
    module.__getattr__ = _initialize_on_demand(module, Path(spec.submodule_search_locations[0]))  # type: ignore[method-assign,assignment]
    sys.modules[HEAVY_PACKAGE] = module


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


def _forward_logging() -> None:
    """pyroute2's decoders log through logging: into kiwi-overlay's debug log, never raw onto the console."""
    import logging

    from kiwi_overlay import log

    logger = logging.getLogger("pyroute2")
    if logger.handlers:
        return

    class ToDebugLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.debug(f"pyroute2: {record.getMessage()}")

    logger.handlers[:] = [ToDebugLog()]
    logger.propagate = False
    logger.setLevel(logging.WARNING if log.debugging() else logging.CRITICAL)
