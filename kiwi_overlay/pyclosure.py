"""The Python that kiwi-overlay needs in an initrd: traced and installed when an initrd is built.

Both steps run under the interpreter of the kiwi-overlay command dracut calls (`kiwi-overlay
dracut-python`), so the closure always fits the Python the image has now: one emitted module
serves any supported Python, and upgrading Python in an image needs no re-emission.

Trace (`trace`): a child interpreter, started the way the initrd starts kiwi-overlay (-I -S -X utf8),
imports every kiwi_overlay module and every module any kiwi_overlay function imports, runs the
command line parser's help and `explain`; the standard-library
modules it then holds are the closure. A trace, not modulefinder: pyroute2 imports far less than
its sources name (no Windows or test modules), and lazy imports inside the standard library
(argparse's shutil, ctypes.util's subprocess) only show when the code runs. The result is a list of
module NAMES: those with a file of their own (builtins, frozen-only modules and aliases such as
os.path or, on 3.13, collections.abc need nothing installed). pyroute2 is traced through
kiwi_overlay.netlink.pyroute, without its package initializer: no NDB, no sqlite3, no asyncio.

The packages go in by directory: every subdirectory of a package that the trace entered, whole, so
that the modules a package loads by listing its own directory (pyroute2's link kinds) or imports
lazily next to the ones traced are there; directories the trace never entered (pyroute2's NDB,
DHCP, ethtool, nftables, ...) stay out. A package's top directory holds its parts side by side
(pyroute2's ipset, IPVS and wireless modules, psutil's one per operating system): of its modules,
only the traced ones go in; kiwi_overlay's own go in whole (`python3 -m kiwi_overlay` works).

Install (`install_tree`): the names are resolved against the running interpreter, and the
modules and packages are written into the initrd as sourceless bytecode (no compiling at boot,
no source needed: users see one-line errors, never tracebacks). The interpreter and the shared
libraries the extension modules need are returned for dracut to install, which resolves the
interpreter's own libraries.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from kiwi_overlay.errors import KiwiOverlayError

# The third-party packages kiwi-overlay ships with itself (pyproject.toml's dependencies).
PACKAGES = ("kiwi_overlay", "psutil", "pyroute2")
# Imported by the trace besides kiwi_overlay's own imports: psutil as a whole, ssl for
# nbds://, and what the standard library loads lazily where no import statement names it
# (time.strptime, codec lookups by name: socket.getaddrinfo encodes a host name with idna).
ALSO_IMPORTED = ("psutil", "ssl", "_strptime", "encodings.ascii", "encodings.latin_1", "encodings.idna")
# How the initrd runs Python: isolated from PYTHON* variables and the user site, no site
# import (all modules live in the standard-library directory), UTF-8 whatever the locale.
INTERPRETER_FLAGS = ("-I", "-S", "-B", "-X", "utf8")
# Traced, yet left out: compressors the standard library imports when it can (shutil, zipfile) and
# does without otherwise. kiwi-overlay packs and unpacks no archive; their absence makes argparse's
# `import shutil` faster.
LEFT_OUT = frozenset({"bz2", "_bz2", "lzma", "_lzma"})
LAUNCHER = Path("/usr/bin/kiwi-overlay")
_SKIPPED_DIRS = frozenset({"__pycache__", "tests", "test"})
# kiwi_overlay modules that run when an initrd is built, never in it: their imports stay out of
# the closure (__main__ would run the command).
BUILD_TIME = frozenset({"kiwi_overlay.__main__", "kiwi_overlay.dracut_module", "kiwi_overlay.pyclosure"})

# Runs in the child: argv = [package search dirs..., "--", modules to import...]. Prints the
# loaded modules, "-" before each one found in the search dirs (not the standard library).
_TRACE = """
import sys, os
args = sys.argv[1:]
split = args.index("--")
search = tuple(path + os.sep for path in args[:split])
sys.path[:0] = args[:split]
sys.stdout = open(os.devnull, "w")
for name in args[split + 1:]:
    try:
        __import__(name)
    except ImportError:
        pass
import argparse, runpy
from kiwi_overlay import arguments, cli
from kiwi_overlay.netlink import pyroute
for name in pyroute.EXPORTS:
    getattr(pyroute, name)
parser = arguments.build_parser()
parser.format_help()
for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
        for subparser in action.choices.values():
            subparser.format_help()
cli.main(["explain", "--cmdline", "root=overlay:nbd=192.0.2.1:root"])
cli.main(["explain", "--json", "--cmdline", "root=overlay:aoe=e0.1 rd.root.overlay.write=LABEL=cow"])
sys.stdout = sys.__stdout__
for name, module in sorted(sys.modules.items()):
    spec_name = getattr(getattr(module, "__spec__", None), "name", name)
    if type(module) is not type(sys) or name != module.__name__ or name != spec_name or not getattr(module, "__file__", None):
        continue  # an alias (os.path; collections.abc on 3.13 is _collections_abc), a pseudo-module (typing.io), a builtin
    print(("-" if (getattr(module, "__file__", None) or "").startswith(search) else "") + name)
"""


@dataclass(frozen=True)
class Closure:
    packages: tuple[str, ...]  # shipped by directory (their own data and lazy imports included)
    stdlib: tuple[str, ...]  # standard-library modules, by name
    package_modules: tuple[str, ...]  # the packages' modules the trace loaded: which directories ship


# The oldest release of each dependency that kiwi-overlay is tested with (Debian 12's; pyproject.toml
# says the same): an older or missing one stops the initrd build, never a boot.
MINIMUM_VERSIONS = {"psutil": "5.9.4", "pyroute2": "0.7.2"}

# Runs in the child, with its site: per package, its directory, version and metadata directory
# ("-" for none), tab-separated.
_LOCATE = """
import sys, importlib.util, importlib.metadata
for name in sys.argv[1:]:
    spec = importlib.util.find_spec(name)
    try:
        distribution = importlib.metadata.distribution(name.replace("_", "-"))
        version, metadata = distribution.version, str(getattr(distribution, "_path", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = metadata = "-"
    directory = next(iter(spec.submodule_search_locations)) if spec and spec.submodule_search_locations else "-"
    print(directory, version, metadata, sep="\t")
"""


@dataclass(frozen=True)
class Installed:
    directory: Path  # the package
    metadata: Path | None  # its .dist-info or .egg-info: pyroute2 0.7 finds its classes through entry points


def _version(text: str) -> tuple[int, ...]:
    """A release's leading numbers: "0.7.2" -> (0, 7, 2), "7.0.0rc1" -> (7, 0, 0)."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def _locate(python: Path) -> dict[str, Installed]:
    """Each package PYTHON has installed; a missing or too old one is a one-line error."""
    from kiwi_overlay.run import run

    lines = run([python, "-I", "-c", _LOCATE, *PACKAGES], capture=True).stdout.splitlines()
    found = {name: line.split("\t") for name, line in zip(PACKAGES, lines, strict=True)}  # directory, version, metadata
    missing = [name for name, (directory, _, _) in found.items() if directory == "-"]
    if missing:
        raise KiwiOverlayError(f"{python} has no {', '.join(missing)}: install kiwi-overlay for the Python that goes into the initrd")
    for name, minimum in MINIMUM_VERSIONS.items():
        version = found[name][1]
        if version != "-" and _version(version) < _version(minimum):  # no metadata: a source tree; its import worked
            raise KiwiOverlayError(f"{name} {version} is too old for kiwi-overlay: it needs {name} >= {minimum} (for {python})")
    return {
        name: Installed(Path(directory), Path(metadata) if metadata != "-" and Path(metadata).is_dir() else None)
        for name, (directory, _, metadata) in found.items()
    }


def source_imports(package_dir: Path) -> set[str]:
    """Every module an import statement in the package names, at any depth (function-level imports too)."""
    names: set[str] = set()
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module in BUILD_TIME:
            continue
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    package = (module if path.name == "__init__.py" else module.rpartition(".")[0]).split(".")
                    base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        names.add(module)
    return {name for name in names if name} - BUILD_TIME


def _stdlib_dirs() -> tuple[Path, ...]:
    """The running interpreter's standard-library directories (the zip, Lib, lib-dynload), site dirs excluded."""
    bases = {Path(sys.base_prefix), Path(sys.base_exec_prefix)}
    return tuple(
        Path(entry)
        for entry in sys.path
        if entry and any(Path(entry).is_relative_to(base) for base in bases) and not re.search(r"[-/](site|dist)-packages\b", entry)
    )


def trace(*, python: Path) -> Closure:
    """The closure of kiwi-overlay's imports under PYTHON, with the packages installed for it."""
    from kiwi_overlay.run import run

    roots = {name: installed.directory for name, installed in _locate(python).items()}
    imports = sorted(source_imports(roots["kiwi_overlay"])) + list(ALSO_IMPORTED)
    search = sorted({str(root.parent) for root in roots.values()})
    loaded = run([python, *INTERPRETER_FLAGS, "-c", _TRACE, *search, "--", *imports], capture=True).stdout.split()
    foreign = sorted({name[1:].split(".")[0] for name in loaded if name.startswith("-")} - set(PACKAGES))
    if foreign:
        raise KiwiOverlayError(f"kiwi-overlay imports {', '.join(foreign)}, which is not one of its packages ({', '.join(PACKAGES)})")
    return Closure(
        packages=PACKAGES,
        stdlib=tuple(name for name in loaded if not name.startswith("-") and name not in LEFT_OUT),
        package_modules=tuple(name[1:] for name in loaded if name.startswith("-")),
    )


def _stdlib_file(name: str, dirs: tuple[Path, ...], found: dict[str, Path | None]) -> Path | None:
    """The file of standard-library module NAME (a package's __init__), None for a frozen-only one."""
    from importlib.machinery import FrozenImporter, PathFinder

    if name in found:
        return found[name]
    parent, _, _ = name.rpartition(".")
    if parent:
        _stdlib_file(parent, dirs, found)
        locations = [str(found[parent] or "").removesuffix("/__init__.py")] if found.get(parent) else []
    else:
        locations = [str(path) for path in dirs]
    spec = PathFinder.find_spec(name, locations)
    if spec is None or spec.origin is None:
        if FrozenImporter.find_spec(name) is not None:
            found[name] = None  # in the interpreter binary (_frozen_importlib and the like)
            return None
        raise KiwiOverlayError(f"{name}: kiwi-overlay imports it, yet it is not in the standard library of {sys.executable}")
    found[name] = Path(spec.origin)
    return found[name]


def _place(source: Path, target: Path, initdir: Path, extensions: list[Path], *, keep_asserts: bool) -> None:
    """SOURCE at TARGET (an absolute path in the initrd): .py as sourceless bytecode, extension modules as they are."""
    destination = initdir / target.relative_to("/")
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".py":
        destination.with_suffix(".pyc").write_bytes(_bytecode(source, target, keep_asserts=keep_asserts))
        return
    shutil.copy2(source, destination)
    if source.suffix == ".so":
        extensions.append(source)


def _bytecode(source: Path, target: Path, *, keep_asserts: bool) -> bytes:
    """SOURCE compiled without docstrings, and without asserts unless KEEP_ASSERTS, as a .pyc (PEP 552).

    Nothing on the boot path reads a docstring. Asserts go only where `python -O` is supported
    (the standard library): a package may test with them. The tree keeps each statement's line,
    so tracebacks (rd.kiwi.debug) point at the source. Unchecked-hash bytecode is reproducible and
    never recompiled.
    """
    import ast
    import importlib.util
    import marshal

    data = source.read_bytes()
    tree = ast.parse(data, str(target))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body[:1] = [] if len(node.body) > 1 else [ast.copy_location(ast.Pass(), first)]
    code = compile(tree, str(target), "exec", dont_inherit=True, optimize=0 if keep_asserts else 1)
    unchecked_hash = (1).to_bytes(4, "little")  # flags: hash-based, source not checked
    return importlib.util.MAGIC_NUMBER + unchecked_hash + importlib.util.source_hash(data) + marshal.dumps(code)


def _libraries(elf_files: list[Path]) -> set[Path]:
    """The shared libraries ELF_FILES load, transitively (ldd: dracut skips non-executable .so files)."""
    from kiwi_overlay.run import run

    libraries: set[Path] = set()
    for elf in elf_files:
        for line in run(["ldd", elf], capture=True).stdout.splitlines():
            if "not found" in line:
                raise KiwiOverlayError(f"{elf}: needs {line.split()[0]}, which is not installed")
            path = next((word for word in line.split() if word.startswith("/")), None)
            if path:
                libraries.add(Path(path))
    return libraries


def _entered_directories(modules: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The directories (as path parts) that MODULES live in: each one's package and those above it.

    A name does not say whether the module is a package, so a.b adds a/ and a/b/; for a module
    a/b.py, a/b/ is a directory that does not exist, which keeps nothing.
    """
    entered: set[tuple[str, ...]] = set()
    for name in modules:
        parts = tuple(name.split("."))
        entered.update(parts[:depth] for depth in range(1, len(parts) + 1))
    return entered


def _untraced_top_module(relative: Path, traced: set[str]) -> bool:
    """RELATIVE (package/name.py or package/name.ABI.so) is a module of a package's top directory that the trace never loaded."""
    if len(relative.parts) != 2 or relative.suffix not in (".py", ".so") or relative.name == "__init__.py":
        return False
    return f"{relative.parts[0]}.{relative.name.split('.')[0]}" not in traced


def install_tree(closure: Closure, *, initdir: Path) -> tuple[Path, ...]:
    """Write CLOSURE and the kiwi-overlay launcher into INITDIR; return the ELF files dracut must install.

    Standard-library modules keep their paths; the packages go into the standard-library
    directory too, so `python3 -m kiwi_overlay` works with or without site, like the launcher.
    """
    import sysconfig

    interpreter = Path(sys.executable).resolve()
    stdlib = Path(sysconfig.get_path("stdlib"))
    dirs = _stdlib_dirs()
    extensions: list[Path] = []
    found: dict[str, Path | None] = {}
    for name in closure.stdlib:
        source = _stdlib_file(name, dirs, found)
        if source is not None:
            _place(source, source, initdir, extensions, keep_asserts=False)
    entered = _entered_directories(closure.package_modules)
    traced = set(closure.package_modules)
    for name, installed in _locate(Path(sys.executable)).items():
        if name not in closure.packages:
            continue
        for source in sorted(installed.directory.rglob("*")):
            relative = source.relative_to(installed.directory.parent)
            if (
                source.is_file()
                and relative.parent.parts in entered
                and not _SKIPPED_DIRS.intersection(relative.parts)
                and source.suffix not in (".pyc", ".pyi")
                and (name == "kiwi_overlay" or not _untraced_top_module(relative, traced))  # its own whole: __main__
            ):
                _place(source, stdlib / relative, initdir, extensions, keep_asserts=True)
        if installed.metadata:  # as it is: importlib.metadata finds it on sys.path, the standard-library directory
            shutil.copytree(installed.metadata, initdir / stdlib.relative_to("/") / installed.metadata.name, dirs_exist_ok=True)
    launcher = initdir / LAUNCHER.relative_to("/")
    launcher.parent.mkdir(parents=True, exist_ok=True)
    flags = "".join(flag.lstrip("-") for flag in INTERPRETER_FLAGS)  # one shebang argument: -ISBXutf8
    launcher.write_text(f"#!{interpreter} -{flags}\nfrom kiwi_overlay.cli import main\n\nraise SystemExit(main())\n")
    launcher.chmod(0o755)
    python3 = initdir / interpreter.parent.relative_to("/") / "python3"
    if not python3.exists() and interpreter.name != "python3":
        python3.parent.mkdir(parents=True, exist_ok=True)  # outside /usr (pyenv, uv) nothing made it yet
        python3.symlink_to(interpreter.name)
    return (interpreter, *sorted(_libraries(extensions)))
