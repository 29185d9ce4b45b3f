"""Argument checks shared by every layer (the bottom of the library; imports nothing of it).

One rule everywhere: a value of the wrong *type* raises ``TypeError``, a value of the right type
that is out of range raises ``ValueError``; both name the parameter and say what was expected.
Every check runs before anything is sent.

>>> check_positive_int(4, "max_workers")
4
>>> check_seconds(0, "stall_timeout")
Traceback (most recent call last):
ValueError: stall_timeout must be a positive number of seconds, got 0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional


def is_mapping(value: Any) -> bool:
    """``isinstance(value, Mapping)`` with a fast path for plain dicts (hot in validation)."""
    return type(value) is dict or isinstance(value, Mapping)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_bool(value: Any, name: str) -> bool:
    if value is True or value is False:
        return value
    raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")
    return value


def check_number(value: Any, name: str, *, minimum: float = 0.0, integer: bool = False) -> float:
    """``value`` if a finite number (an int with ``integer``) >= ``minimum``."""
    kind = "an int" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise TypeError(f"{name} must be {kind} >= {minimum:g}, got {type(value).__name__}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite {kind[3:] if integer else 'number'} >= {minimum:g}, got {value!r}")
    return value


def check_seconds(value: Any, name: str, alternative: str = "") -> float:
    """``value`` as float seconds: a positive, finite number."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a positive number of seconds{alternative}, got {type(value).__name__}")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number of seconds{alternative}, got {value!r}")
    return float(value)


def check_optional_seconds(value: Any, name: str) -> Optional[float]:
    return None if value is None else check_seconds(value, name, " or None")


def check_model(model: Any, name: str = "model") -> str:
    if not isinstance(model, str):
        raise TypeError(f"{name} must be a non-empty string, got {type(model).__name__}")
    if not model.strip():
        raise ValueError(f"{name} must be a non-empty string, got {model!r}")
    return model


#: The Messages API default temperature: the one value the public ``temperature=`` still takes
#: (it is simply not sent).
DEFAULT_TEMPERATURE = 1.0


def removed_sampling(param: str, value: Any, name: Optional[str] = None, where: str = "") -> ValueError:
    """The error for a sampling parameter (``temperature``, ``top_p``, ``top_k``) the API removed."""
    return ValueError(
        f"{name or param}={value!r}{where} cannot be sent: {param} was removed from the Messages API (API version "
        "2026-10-21 rejects it on every model); use effort= ('low'..'max') to trade quality for speed and cost"
    )


def check_temperature(temperature: Any, name: str = "temperature") -> float:
    """``temperature`` if it is the API default 1.0 (which is not sent): every other value is
    refused, since API version 2026-10-21 removed the parameter.

    >>> check_temperature(1.0)
    1.0
    >>> check_temperature(0.2)  # ValueError: ... temperature was removed from the Messages API ...
    """
    if not _is_number(temperature):
        raise TypeError(
            f"{name} must be a number (only the default 1.0 is accepted: the API removed temperature), "
            f"got {type(temperature).__name__}"
        )
    if temperature != DEFAULT_TEMPERATURE:
        raise removed_sampling("temperature", temperature, name)
    return temperature


def check_callable(value: Any, name: str) -> Any:
    """``value`` if callable or None."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    return value


def check_text(value: Any, name: str) -> str:
    """A non-empty (not only whitespace) str that the API can carry: no lone surrogates.

    A lone surrogate (``"\\ud800"``) cannot be encoded as UTF-8, so the request would fail at send
    time; it is refused here instead.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    check_encodable(value, name)
    return value


def check_encodable(value: str, name: str) -> None:
    """``ValueError`` naming ``name`` when ``value`` holds a lone surrogate (not UTF-8 encodable)."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} contains a lone surrogate {value[exc.start]!r} at position {exc.start}, which is not "
            "valid Unicode text (it cannot be sent as UTF-8); fix the text, e.g. decode its source with "
            "errors='replace'"
        ) from None
