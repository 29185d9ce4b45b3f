"""Shared limits: the store through which processes using one API key share its rate limits, the
429 pause and spend caps (the entry point; the protocol is in :mod:`_shared_base`, the backends
in :mod:`_shared_sqlite` and :mod:`_shared_redis`).

The setting (``configure(shared_limits=...)``, else ``ORCHESTRATING_AGENTS_SHARED_LIMITS``):

* ``None`` / ``True`` (the default): one SQLite file on this machine, in the user's cache
  directory (``$XDG_CACHE_HOME`` or ``~/.cache``, under ``orchestrating-agents/``);
* ``False``: off (per-process admission);
* ``"redis://host:6379/0"`` (``rediss://``, ``unix://``): Redis, across machines (needs the
  ``[redis]`` extra);
* ``"sqlite:///path/to/file.sqlite3"``: SQLite at another path.

The environment variable takes the same URLs, or ``1``/``true``/``on`` and ``0``/``false``/``off``.
A store that cannot be opened or reached (the ``redis`` client missing, Redis down, an unwritable
file) logs one warning and leaves admission per process: no request fails because of it.

>>> store = open_store("redis://127.0.0.1:6379/0")     # or get_store(): one per setting, cached
>>> store.budget_report("nightly")
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
from typing import Any, Optional, Union

from _shared_base import (
    DEFAULT_TTL_S,
    KINDS,
    BucketState,
    BudgetGrant,
    BudgetReport,
    Grant,
    ScopeState,
    SharedStore,
    owner_id,
    scope_key,
)
from _shared_redis import REDIS_SCHEMES, RedisStore
from _shared_sqlite import SqliteStore, default_path

logger = logging.getLogger("claude_client._shared_limits")

__all__ = [
    "ENV_VAR",
    "KINDS",
    "DEFAULT_TTL_S",
    "SharedStore",
    "SqliteStore",
    "RedisStore",
    "Grant",
    "BucketState",
    "ScopeState",
    "BudgetGrant",
    "BudgetReport",
    "scope_key",
    "owner_id",
    "default_path",
    "resolve_setting",
    "open_store",
    "get_store",
    "reset_stores",
]

#: The environment variable that supplies the setting when none is configured.
ENV_VAR = "ORCHESTRATING_AGENTS_SHARED_LIMITS"
_ON = ("1", "true", "on", "yes", "sqlite")
_OFF = ("0", "false", "off", "no", "none", "")
_EXPECTED = "True, False, None, a redis://host:port/db URL or a sqlite:///path URL"

Setting = Union[bool, str, None]


def resolve_setting(setting: Setting = None, *, name: str = "shared_limits") -> Union[bool, str]:
    """The setting in its final form: False (off), True (SQLite at the default path) or a URL
    (``redis://...`` or ``sqlite:///...``). ``None`` reads :data:`ENV_VAR` (unset: True).

    >>> resolve_setting(None)              # with ORCHESTRATING_AGENTS_SHARED_LIMITS=off
    False
    """
    if setting is None:
        raw = os.environ.get(ENV_VAR)
        if raw is None:
            return True
        text = raw.strip()
        if text.lower() in _ON:
            return True
        if text.lower() in _OFF:
            return False
        return _check_url(text, ENV_VAR)
    if setting is True or setting is False:
        return setting
    if not isinstance(setting, str):
        raise TypeError(f"{name} must be {_EXPECTED}, got {type(setting).__name__}")
    return _check_url(setting.strip(), name)


def _check_url(text: str, name: str) -> str:
    scheme = urllib.parse.urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in REDIS_SCHEMES:
        return text
    if scheme == "sqlite" and _sqlite_path(text):
        return text
    shown = text if "@" not in text else "<a URL with credentials>"  # never echo a password
    raise ValueError(f"{name} must be {_EXPECTED}, got {shown!r}")


def _sqlite_path(url: str) -> str:
    """``sqlite:///abs/path`` -> ``/abs/path``; ``sqlite://rel/path`` -> ``rel/path``."""
    return url.split("://", 1)[1]


def open_store(setting: Setting = None) -> Optional[SharedStore]:
    """A new store for ``setting`` (see the module docstring), or None when shared limits are
    off or the store cannot be opened (one warning is logged; admission stays per process).

    Bad settings raise before anything is opened: TypeError (wrong type), ValueError (not a
    known form).

    >>> open_store(False) is None
    True
    """
    resolved = resolve_setting(setting)
    if resolved is False:
        return None
    if resolved is True:
        return SqliteStore()
    if resolved.lower().startswith("sqlite:"):
        return SqliteStore(_sqlite_path(resolved))
    try:
        return RedisStore(resolved)
    except ImportError:
        logger.warning(
            "shared limits: a redis:// setting needs the redis client (pip install 'orchestrating-agents[redis]'); "
            "admission and spend caps are per process",
        )
        return None


_stores_lock = threading.Lock()
_stores: dict[Any, Optional[SharedStore]] = {}


def get_store(setting: Setting = None) -> Optional[SharedStore]:
    """The process's one store for ``setting`` (opened on first use; None: off or unavailable).

    >>> get_store() is get_store()
    True
    """
    resolved = resolve_setting(setting)
    if resolved is False:
        return None
    key = (resolved, str(default_path())) if resolved is True else resolved
    try:
        return _stores[key]
    except KeyError:
        pass
    with _stores_lock:
        if key not in _stores:
            _stores[key] = open_store(resolved)
        return _stores[key]


def reset_stores() -> None:
    """Close and forget the stores :func:`get_store` opened (the next call opens new ones)."""
    with _stores_lock:
        stores = [s for s in _stores.values() if s is not None]
        _stores.clear()
    for store in stores:
        store.close()


def _after_fork() -> None:
    global _stores_lock
    _stores_lock = threading.Lock()  # (the stores themselves reconnect in the child)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
