"""Replies that should be JSON: :func:`parse_json_response` (a fenced or bare JSON reply)."""

from __future__ import annotations

import json
import re
from typing import Optional, Union


def _fence_body(text: str) -> Optional[str]:
    """The body of the first ```-fenced block of ``text`` (None if there is none).

    Multi-line blocks (```` ```json ```` line, body, ```` ``` ```` line) and one-line blocks
    (```` ```json {"a": 1} ``` ````, as when line breaks were lost) are both understood.
    """
    if text.startswith("```"):
        opening = 0
    else:
        opening = text.find("\n```")
        if opening == -1:
            return None
        opening += 1
    rest = text[opening + 3 :]
    newline = rest.find("\n")
    first_line = rest if newline == -1 else rest[:newline]
    closing = first_line.find("```")
    if closing != -1:  # one line: an optional language tag, the body, the closing fence
        return _LANGUAGE_TAG.sub("", first_line[:closing], count=1)
    if newline == -1:
        return first_line
    body = rest[newline + 1 :]
    closing = body.find("```") if body.startswith("```") else body.find("\n```")
    return body if closing == -1 else body[:closing]


_LANGUAGE_TAG = re.compile(r"^[A-Za-z][\w+.-]*\s+")


def parse_json_response(raw: str) -> Union[dict, list]:
    """Parse a reply that should be JSON: strips a ```` ``` ```` / ```` ```json ```` fence, then ``json.loads``.

    A reply with prose around one fenced block uses the block. Raises ``json.JSONDecodeError``
    (a ``ValueError``) naming the problem when the text is not JSON, ``ValueError`` when it is
    JSON but not an object or array, ``TypeError`` when ``raw`` is not a string.

    >>> parse_json_response('```json\n{"a": 1}\n```')
    {'a': 1}
    >>> parse_json_response('[1, 2]')
    [1, 2]
    """
    if not isinstance(raw, str):
        raise TypeError(f"raw must be a str, got {type(raw).__name__}")
    text = raw.strip()
    body = text
    if text.startswith("```"):
        body = (_fence_body(text) or "").strip()
    if not body:
        raise json.JSONDecodeError("parse_json_response: the reply is empty (no JSON found)", body, 0)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        # Prose around a fenced block: use the block.
        fenced = None if body is not text else _fence_body(text)
        try:
            if fenced is None or not fenced.strip():
                raise exc
            value = json.loads(fenced)
        except json.JSONDecodeError as error:
            raise json.JSONDecodeError(
                f"parse_json_response: the reply is not valid JSON ({error.msg}); it starts with {text[:60]!r}",
                error.doc,
                error.pos,
            ) from None
    if not isinstance(value, (dict, list)):
        raise ValueError(
            f"parse_json_response: expected a JSON object or array, got {type(value).__name__}: {text[:60]!r}"
        )
    return value
