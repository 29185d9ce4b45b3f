"""Credentials and process-wide settings: where the API key and base URL come from.

Credentials, first match wins: ``api_key=`` > :func:`configure` > ``ANTHROPIC_API_KEY`` >
``<dir>/ANTHROPIC_API_KEY.txt`` > ``<dir>/API_CREDENTIALS.json`` (field ``anthropic_api_key``) >
``<dir>/claude.env`` (a line ``API_KEY=...``), where ``<dir>`` is
``$ORCHESTRATING_AGENTS_PROJECT_DIR`` or ``/mnt/project``. The base URL is ``base_url=`` >
:func:`configure` > ``ANTHROPIC_BASE_URL`` > the SDK default. Every key resolved here is
registered with the error layer, which redacts it from every error text.

This module only finds keys and settings; the transport builds the clients. :func:`settings`
returns a generation number that changes with every :func:`configure` / :func:`reset_client`,
so the transport knows when to forget its clients.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import anthropic

import _tracing
from _errors import MissingAPIKeyError, register_secret
from _shared_limits import Setting, resolve_setting
from _validation import check_bool, check_number, check_seconds

#: Environment variable naming the project-knowledge folder searched for key files.
PROJECT_DIR_ENV = "ORCHESTRATING_AGENTS_PROJECT_DIR"
DEFAULT_PROJECT_DIR = "/mnt/project"
KEY_FILE_NAME = "ANTHROPIC_API_KEY.txt"
CREDENTIALS_FILE_NAME = "API_CREDENTIALS.json"
CREDENTIALS_FIELD = "anthropic_api_key"
#: The seed's env-style key file (a line ``API_KEY=...``), the last fallback.
ENV_FILE_NAME = "claude.env"
ENV_FILE_FIELDS = ("API_KEY", "ANTHROPIC_API_KEY")

_state_lock = threading.RLock()
_resolved_key: Optional[str] = None
_config: dict[str, Any] = {}
_generation = 0
_listeners: list[Callable[[], None]] = []


def on_change(fn: Callable[[], None]) -> None:
    """Call ``fn()`` after every :func:`configure` / :func:`reset_client` (the transport forgets
    its clients then)."""
    _listeners.append(fn)


def _changed() -> None:
    global _generation
    _generation += 1
    for fn in list(_listeners):
        fn()


def _project_dir() -> Path:
    return Path(os.environ.get(PROJECT_DIR_ENV) or DEFAULT_PROJECT_DIR)


def _missing_key_error(directory: Path) -> MissingAPIKeyError:
    return MissingAPIKeyError(
        "No Anthropic API key found. Looked in: the api_key= argument / configure(api_key=...); "
        "the ANTHROPIC_API_KEY environment variable; "
        f"{directory / KEY_FILE_NAME}; {directory / CREDENTIALS_FILE_NAME} (field {CREDENTIALS_FIELD!r}); "
        f"{directory / ENV_FILE_NAME} (a line API_KEY=...). "
        f"Fix: export ANTHROPIC_API_KEY, or put the key in one of those files "
        f"(set {PROJECT_DIR_ENV} to use another folder).",
    )


def _check_key(key: str, source: str) -> str:
    """``key`` stripped, or :class:`MissingAPIKeyError` naming ``source`` (never the key).

    A key must be one line of printable ASCII without spaces: anything else cannot be sent as
    an HTTP header, and the transport error would quote the header (the key).
    """
    key = key.strip()
    if not key:
        raise MissingAPIKeyError(f"The API key from {source} is empty")
    for position, char in enumerate(key):
        if "!" <= char <= "~":
            continue
        if char in "\r\n":
            problem = "a line break"
        elif char.isspace():
            problem = "whitespace"
        elif ord(char) < 128 or not char.isprintable():
            problem = "a control character"
        else:
            problem = "a non-ASCII character"
        raise MissingAPIKeyError(
            f"The API key from {source} contains {problem} (at character {position + 1}); an API key is "
            f"one line of printable ASCII without spaces. Fix the key there"
            + (" (the file must hold only the key)" if " file " in source else "")
        )
    return key


def _read_key_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a byte order mark is not part of the key
    except (OSError, UnicodeDecodeError) as exc:
        raise MissingAPIKeyError(f"Could not read the {what} {path}: {type(exc).__name__}") from None


_INLINE_COMMENT = re.compile(r"\s#")


def _env_file_value(value: str) -> str:
    """The value of a ``claude.env`` line: quotes removed, or an inline `` # comment`` cut off."""
    value = value.strip()
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        if end > 0:
            rest = value[end + 1 :].strip()
            if not rest or rest.startswith("#"):
                return value[1:end].strip()
        return value
    return _INLINE_COMMENT.split(value, 1)[0].strip()


def _key_from_env_file(env_file: Path) -> str:
    """The key of a ``claude.env`` file: the last ``API_KEY=...`` line.

    ``export``, quotes, ``#`` comment lines and inline `` # comments`` after the value are allowed.
    """
    key = None
    key_line = 0
    for number, line in enumerate(_read_key_file(env_file, "key file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        if not sep or name.strip() not in ENV_FILE_FIELDS:
            continue
        key = _env_file_value(value) or None
        key_line = number
    if key is None:
        # Never quote the file's lines: they may hold a key under another name.
        raise MissingAPIKeyError(
            f"The key file {env_file} has no non-empty line API_KEY=... (or ANTHROPIC_API_KEY=...)"
        )
    return _check_key(key, f"the key file {env_file} (line {key_line})")


def _key_from_files(directory: Path) -> Optional[str]:
    """The key from the project folder: ANTHROPIC_API_KEY.txt > API_CREDENTIALS.json > claude.env."""
    key_file = directory / KEY_FILE_NAME
    if key_file.is_file():
        return _check_key(_read_key_file(key_file, "API key file"), f"the API key file {key_file}")
    cred_file = directory / CREDENTIALS_FILE_NAME
    if cred_file.is_file():
        text = _read_key_file(cred_file, "credentials file")
        try:
            data = json.loads(text)
        except ValueError as exc:
            # `from None`: a JSONDecodeError holds the whole document (the key) in `.doc`.
            raise MissingAPIKeyError(
                f"Could not parse the credentials file {cred_file} as JSON ({type(exc).__name__})"
            ) from None
        value = data.get(CREDENTIALS_FIELD) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise MissingAPIKeyError(
                f"The credentials file {cred_file} has no non-empty string field {CREDENTIALS_FIELD!r}"
            )
        return _check_key(value, f"the credentials file {cred_file} (field {CREDENTIALS_FIELD!r})")
    env_file = directory / ENV_FILE_NAME
    if env_file.is_file():
        return _key_from_env_file(env_file)
    return None


def resolve_api_key(explicit: Optional[str] = None) -> str:
    """The API key: explicit > configure() > env > key file > credentials JSON > claude.env (cached once)."""
    global _resolved_key
    if explicit is not None:
        _check_non_empty(explicit, "api_key")
        key = _check_key(explicit, "the api_key= argument")
        register_secret(key)
        return key
    with _state_lock:
        configured = _config.get("api_key")
        if configured:
            return configured
        if _resolved_key is not None:
            return _resolved_key
        env = os.environ.get("ANTHROPIC_API_KEY", "").strip()
        if env:
            env = _check_key(env, "the ANTHROPIC_API_KEY environment variable")
        directory = _project_dir()
        found = env or _key_from_files(directory)
        if not found:
            raise _missing_key_error(directory)
        key = found
        _resolved_key = key
        register_secret(key)
        return key


def get_anthropic_api_key() -> str:
    """The API key the library uses (same resolution order and cache as :func:`get_client`).

    Order: ``configure(api_key=...)`` > ``ANTHROPIC_API_KEY`` > ``<dir>/ANTHROPIC_API_KEY.txt`` >
    ``<dir>/API_CREDENTIALS.json`` (field ``anthropic_api_key``) > ``<dir>/claude.env`` (a line
    ``API_KEY=...``), where ``<dir>`` is ``$ORCHESTRATING_AGENTS_PROJECT_DIR`` or ``/mnt/project``.
    The first lookup is cached until :func:`reset_client`. Raises :class:`MissingAPIKeyError`
    (a ``ClaudeInvocationError`` of kind ``auth`` and a ``ValueError``) when there is none.

    >>> key = get_anthropic_api_key()
    >>> client = anthropic.Anthropic(api_key=key)   # e.g. for an SDK feature the library lacks
    """
    return resolve_api_key()


def resolve_base_url(explicit: Optional[str] = None) -> Optional[str]:
    if explicit is not None:
        _check_non_empty(explicit, "base_url")
        return explicit.strip()
    configured = _config.get("base_url")
    if configured:
        return configured
    return os.environ.get("ANTHROPIC_BASE_URL") or None


def _check_non_empty(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a non-empty string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value


def configure(
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    timeout: Optional[float] = None,
    client: Optional[anthropic.Anthropic] = None,
    max_retries: Optional[int] = None,
    *,
    shared_limits: Setting = None,
    tracing: Optional[bool] = None,
) -> None:
    """Set process-wide defaults (each given value replaces the previous one).

    ``client=`` injects your own ``anthropic.Anthropic``, used by every call that passes no
    ``api_key=`` / ``base_url=``. ``timeout`` (seconds) applies to the shared client created by the
    library; ``max_retries`` is the number of retries of plain calls (the library runs them
    itself, with the SDK's rules; default: the client's, 2). Calls that start afterwards use the
    new settings; calls already running (e.g. on other threads) finish with the client they
    started with, which is not closed (its connections are released when it is
    garbage-collected). An ``api_key`` that is not one line of printable ASCII raises
    :class:`MissingAPIKeyError`.

    ``shared_limits``: how processes using one key share its rate limits, the 429 pause and
    named spend caps: ``True`` (the default: one SQLite file in the user's cache directory),
    ``False`` (off: each process admits alone), ``"redis://host:6379/0"`` (across machines; the
    ``[redis]`` extra) or ``"sqlite:///path"``. Unset, ``ORCHESTRATING_AGENTS_SHARED_LIMITS``
    decides (the same values, or ``on``/``off``). ``tracing``: the library's OpenTelemetry spans
    on (default) or off.

    >>> configure(base_url="http://127.0.0.1:8080", max_retries=0)
    >>> configure(shared_limits="redis://redis.internal:6379/0", tracing=False)
    """
    if api_key is not None:
        api_key = _check_key(_check_non_empty(api_key, "api_key"), "configure(api_key=...)")
    if base_url is not None:
        base_url = _check_non_empty(base_url, "base_url").strip()
    if timeout is not None:
        check_seconds(timeout, "timeout")
    if client is not None and not isinstance(client, anthropic.Anthropic):
        raise TypeError(f"client must be an anthropic.Anthropic, got {type(client).__name__}")
    if max_retries is not None:
        check_number(max_retries, "max_retries", integer=True)
    if shared_limits is not None:
        shared_limits = resolve_setting(shared_limits)
    if tracing is not None:
        check_bool(tracing, "tracing")
    with _state_lock:
        for name, value in (
            ("api_key", api_key),
            ("base_url", base_url),
            ("timeout", timeout),
            ("client", client),
            ("max_retries", max_retries),
            ("shared_limits", shared_limits),
        ):
            if value is not None:
                _config[name] = value
        register_secret(api_key)
        register_secret(getattr(client, "api_key", None))
        if tracing is not None:
            _tracing.set_enabled(tracing)
        _changed()


def reset_client() -> None:
    """Forget the cached key, every shared client and everything set by :func:`configure`.

    Calls that start afterwards resolve the key and create a new client; calls already running
    finish with the old client, which is not closed (it is released when garbage-collected).
    """
    global _resolved_key
    with _state_lock:
        _resolved_key = None
        _config.clear()
        _tracing.set_enabled(True)
        _changed()


def shared_limits_setting() -> Setting:
    """The ``configure(shared_limits=...)`` setting, or None (then the environment decides: see
    :func:`_shared_limits.resolve_setting`)."""
    return _config.get("shared_limits")


def settings() -> tuple[int, dict[str, Any]]:
    """``(generation, a copy of the configure() settings)``."""
    with _state_lock:
        return _generation, dict(_config)
