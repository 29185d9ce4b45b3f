"""``--tool SPEC``: the Python functions an ``orchestrate`` run offers the model as client tools.

A spec is ``MODULE:FUNCTION`` (``MODULE`` imported from ``sys.path`` or, failing that, the current
directory) or ``path/to/file.py:FUNCTION`` (the file loaded as a module of its own); ``FUNCTION``
may be a dotted attribute path (``tools:Search.run``). The library builds each tool's schema from
the function's signature and docstring. Every problem is a :class:`_cli_common.UsageError` naming
the spec, raised before any request is sent.

>>> load_tools(["json:dumps"])[0].__name__
'dumps'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

from _cli_common import UsageError, one_line

__all__ = ["load_tools", "parse_spec"]

_FORM = "MODULE:FUNCTION or path/to/file.py:FUNCTION"


def parse_spec(spec: str) -> tuple[str, str]:
    """``(module_or_path, attribute)`` of a ``--tool`` spec; the last ``:`` separates them.

    >>> parse_spec("my_tools:lookup")
    ('my_tools', 'lookup')
    >>> parse_spec("C:/work/tools.py:lookup")
    ('C:/work/tools.py', 'lookup')
    """
    where, sep, attribute = spec.rpartition(":")
    if not sep or not where.strip() or not attribute.strip():
        raise UsageError(f"--tool {spec!r}: expected {_FORM}")
    if not all(part.isidentifier() for part in attribute.split(".")):
        raise UsageError(f"--tool {spec!r}: {attribute!r} is not a Python name (expected {_FORM})")
    return where, attribute


def _is_path(where: str) -> bool:
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return where.endswith(".py") or any(sep in where for sep in seps)


def _load_file(path: str, spec: str) -> ModuleType:
    """The module of the Python file ``path``, under a private name derived from its full path."""
    if not os.path.exists(path):
        raise UsageError(f"--tool {spec!r}: no such file: {path}")
    if os.path.isdir(path):
        raise UsageError(f"--tool {spec!r}: is a directory: {path} (give a .py file)")
    full = os.path.abspath(path)
    stem = "".join(ch if ch.isalnum() else "_" for ch in os.path.splitext(os.path.basename(full))[0])
    name = f"_orchestrate_tool_{stem}_{hashlib.sha256(full.encode('utf-8')).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, full)
    if loader_spec is None or loader_spec.loader is None:
        raise UsageError(f"--tool {spec!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # as an import would: the module may refer to itself while loading
    try:
        loader_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(f"--tool {spec!r}: loading {path} failed: {_describe(exc)}") from None
    return module


def _import(module_name: str, spec: str) -> ModuleType:
    """Import ``module_name`` from ``sys.path``, with the current directory searched last."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # last: a local file never shadows an installed or library module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UsageError(
                f"--tool {spec!r}: no module named {missing!r} (looked in sys.path and the "
                f"current directory; for a file give its path, e.g. ./{missing}.py:NAME)"
            ) from None
        raise UsageError(f"--tool {spec!r}: importing {module_name} failed: {_describe(exc)}") from None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(f"--tool {spec!r}: importing {module_name} failed: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}", 300)


def _function(module: ModuleType, attribute: str, where: str, spec: str) -> Callable[..., Any]:
    obj: Any = module
    for i, part in enumerate(attribute.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = ".".join([where, *attribute.split(".")[:i]])
            raise UsageError(f"--tool {spec!r}: {owner} has no attribute {part!r}") from None
    if not callable(obj):
        raise UsageError(f"--tool {spec!r}: {where}.{attribute} is not callable (it is a {type(obj).__name__})")
    return obj


def load_tools(specs: Sequence[str]) -> list[Callable[..., Any]]:
    """The function of every ``--tool`` spec, in order (an empty list for no specs)."""
    functions = []
    for spec in specs:
        where, attribute = parse_spec(spec)
        if _is_path(where):
            module, name = _load_file(where, spec), where
        else:
            module, name = _import(where, spec), where
        functions.append(_function(module, attribute, name, spec))
    return functions
