"""Structured output: ``output_schema=`` (a Pydantic model or a JSON-schema dict) on a request.

:class:`OutputSpec` adds ``output_config.format`` to a request body exactly as the SDK's
``messages.parse(output_format=Model)`` does (same schema transformation, same dict) and validates
the reply: the model instance for a Pydantic model (pydantic validates it), the decoded value for a
JSON-schema dict (checked by a small validator of the common keywords: no new dependency). A
schema dict is itself checked (:func:`_request_rules.check_json_schema`) before anything is sent.
:func:`send_structured` sends, parses, and retries once when the reply does not validate.

>>> class City(pydantic.BaseModel):
...     name: str
...     population: int
>>> spec = OutputSpec.from_user(City)
>>> params = spec.apply({"model": "claude-sonnet-5-5", "max_tokens": 500,
...                      "messages": [{"role": "user", "content": "Largest city in Japan?"}]})
>>> reply = send_structured(lambda: send(params, client=get_client()), spec)
>>> reply.parsed.name, reply.usage.output_tokens
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from typing import Any, Callable, Mapping, Optional

import pydantic

from _errors import ClaudeInvocationError
from _request_rules import check_json_schema
from _results import ClaudeResponse
from _validation import is_mapping

logger = logging.getLogger("claude_client._structured")

__all__ = ["OutputSpec", "send_structured"]

_EXCERPT = 500  # characters of the invalid text quoted in an error message


def _sdk_format(output_type: Any) -> dict:
    """``output_config.format`` for a type, built as ``messages.parse(output_format=...)`` builds it."""
    from anthropic.lib._parse._transform import cached_json_schema, transform_schema
    from anthropic.types.json_output_format_param import JSONOutputFormatParam

    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(output_type)
    schema = cached_json_schema(adapter)
    return dict(JSONOutputFormatParam(schema=transform_schema(schema), type="json_schema"))


class OutputSpec:
    """What a reply must be: a Pydantic model (or another type pydantic can validate) or a JSON schema.

    Build it with :meth:`from_user`. ``apply(params)`` adds ``output_config.format``;
    ``parse(reply)`` validates the reply's text.

    >>> spec = OutputSpec.from_user({"type": "object", "properties": {"n": {"type": "integer"}},
    ...                              "required": ["n"], "additionalProperties": False})
    >>> spec.parse(ClaudeResponse('{"n": 3}'))
    {'n': 3}
    """

    __slots__ = ("output_type", "schema", "format", "_adapter")

    def __init__(self, output_type: Any = None, schema: Optional[dict] = None) -> None:
        if (output_type is None) == (schema is None):
            raise ValueError("give exactly one of output_type and schema")
        self.output_type = output_type
        self._adapter: Optional[pydantic.TypeAdapter[Any]] = None
        if output_type is not None:
            self._adapter = pydantic.TypeAdapter(output_type)
            self.format = _sdk_format(output_type)
            self.schema: dict = self.format["schema"]
        else:
            self.schema = copy.deepcopy(schema)  # type: ignore[arg-type]
            self.format = {"schema": self.schema, "type": "json_schema"}

    @classmethod
    def from_user(cls, output_schema: Any, name: str = "output_schema") -> Optional[OutputSpec]:
        """An OutputSpec from a Pydantic model class (or a type pydantic can build a schema for) or a
        JSON-schema dict; None for None, an OutputSpec as is. ``TypeError`` for anything else,
        ``ValueError`` for a dict that is not a valid JSON schema (the message names the JSON path,
        e.g. ``$.required``) or a type with no JSON schema.

        >>> OutputSpec.from_user(None) is None
        True
        """
        if output_schema is None or isinstance(output_schema, OutputSpec):
            return output_schema
        if is_mapping(output_schema):
            schema = dict(output_schema)
            if not any(k in schema for k in ("type", "anyOf", "oneOf", "allOf", "$ref", "enum", "const")):
                raise ValueError(
                    f"{name} must be a JSON schema (with 'type', 'anyOf', '$ref', ...), got {schema!r}"[:300]
                )
            try:
                json.dumps(schema)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be JSON-serializable: {exc}") from exc
            check_json_schema(schema, name)  # a real schema check, before anything is sent
            return cls(schema=schema)
        if isinstance(output_schema, type) or hasattr(output_schema, "__origin__"):
            try:
                return cls(output_type=output_schema)
            except (
                pydantic.errors.PydanticSchemaGenerationError,
                pydantic.errors.PydanticUserError,
                ValueError,
            ) as exc:
                raise ValueError(f"{name}: cannot build a JSON schema from {output_schema!r}: {exc}") from exc
        raise TypeError(
            f"{name} must be a Pydantic model class or a JSON-schema dict, got {type(output_schema).__name__}"
        )

    def apply(self, params: dict) -> dict:
        """A copy of the request body ``params`` with ``output_config.format`` set (other
        ``output_config`` keys kept)."""
        new = dict(params)
        config = params.get("output_config")
        kept: dict = dict(config) if isinstance(config, Mapping) else {}
        new["output_config"] = {**kept, "format": self.format}
        return new

    def parse(self, reply: ClaudeResponse) -> Any:
        """The validated value of ``reply``'s text: the model instance, or the decoded JSON for a
        schema dict. ``ClaudeInvocationError(kind="invalid_output")`` when it does not validate;
        its ``details`` hold the raw ``text``, the ``stop_reason`` and the ``errors``.
        """
        text = str.__str__(reply) if isinstance(reply, str) else str(reply)
        try:
            if self._adapter is not None:
                return self._adapter.validate_json(text)
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise _Invalid([f"not JSON: {exc}"]) from None
            errors: list[str] = []
            _check(value, self.schema, self.schema, "$", errors)
            if errors:
                raise _Invalid(errors)
            return value
        except (pydantic.ValidationError, _Invalid) as exc:
            errors = (
                [f"{'.'.join(map(str, e['loc'])) or '$'}: {e['msg']}" for e in exc.errors()]
                if isinstance(exc, pydantic.ValidationError)
                else exc.errors
            )
            stop = getattr(reply, "stop_reason", None)
            hint = f" (the reply stopped with {stop})" if stop in ("max_tokens", "refusal") else ""
            error = ClaudeInvocationError(
                f"The reply does not match output_schema{hint}: {'; '.join(errors)[:_EXCERPT]}; "
                f"text: {text[:_EXCERPT]!r}",
                details={"text": text, "stop_reason": stop, "errors": errors},
                kind="invalid_output",
            )
            raise error from None

    def __repr__(self) -> str:
        what = (
            getattr(self.output_type, "__name__", repr(self.output_type)) if self.output_type is not None else "schema"
        )
        return f"OutputSpec({what})"


class _Invalid(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def send_structured(send_once: Callable[[], ClaudeResponse], spec: OutputSpec) -> ClaudeResponse:
    """Send (``send_once()``), validate against ``spec``, and send once more if the reply does not
    validate; the reply with ``parsed`` set, its ``usage`` / ``cost_usd`` summed over both tries.
    A second invalid reply raises ``ClaudeInvocationError(kind="invalid_output")`` (``details``:
    ``text``, ``texts`` of both tries, ``usage``, ``cost_usd``).

    >>> reply = send_structured(lambda: send(spec.apply(params), client=get_client()), spec)
    >>> reply.parsed
    City(name='Tokyo', population=14000000)
    """
    if not callable(send_once):
        raise TypeError(f"send_once must be callable, got {type(send_once).__name__}")
    if not isinstance(spec, OutputSpec):
        raise TypeError(f"spec must be an OutputSpec, got {type(spec).__name__}")
    first = send_once()
    try:
        first.parsed = spec.parse(first)
        return first
    except ClaudeInvocationError as error:
        logger.info("The reply did not match output_schema; sending once more (%s)", error.message[:200])
        first_text = error.details["text"]
    try:
        second = send_once()
    except ClaudeInvocationError as error:  # the first try was paid: its usage travels with the error
        spent = getattr(error, "usage", None)
        error.usage = first.usage if spent is None else spent + first.usage  # type: ignore[attr-defined]
        spent_cost = getattr(error, "cost_usd", 0.0)
        error.cost_usd = (  # type: ignore[attr-defined]
            None if first.cost_usd is None or spent_cost is None else (spent_cost or 0.0) + first.cost_usd
        )
        raise
    usage = first.usage + second.usage
    cost = None if first.cost_usd is None or second.cost_usd is None else first.cost_usd + second.cost_usd
    second.usage = usage
    second.cost_usd = cost
    try:
        second.parsed = spec.parse(second)
    except ClaudeInvocationError as error:
        error.details["texts"] = [first_text, error.details["text"]]
        error.details["usage"] = usage
        error.details["cost_usd"] = cost
        error.message = "Twice, " + error.message[0].lower() + error.message[1:]
        error.args = (error.message,)
        raise
    return second


# ------------------------------------------------------------------------------ JSON-schema check
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _resolve(ref: str, root: dict) -> Any:
    if not ref.startswith("#/"):
        raise _Invalid([f"unsupported $ref {ref!r} (only local '#/...' references)"])
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not is_mapping(node) or part not in node:
            raise _Invalid([f"$ref {ref!r} does not resolve"])
        node = node[part]
    return node


def _check(value: Any, schema: Any, root: dict, path: str, errors: list[str]) -> None:
    """Append to ``errors`` where ``value`` breaks ``schema`` (the common JSON-schema keywords:
    type, enum, const, properties, required, additionalProperties, items, min/maxItems,
    min/maxLength, pattern, minimum/maximum (exclusive too), anyOf/oneOf/allOf, local $ref)."""
    if schema is True or schema is None:
        return
    if schema is False:
        errors.append(f"{path}: no value is allowed here")
        return
    if not is_mapping(schema):
        return
    if "$ref" in schema:
        _check(value, _resolve(schema["$ref"], root), root, path, errors)
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES.get(k, lambda v: True)(value) for k in kinds):
            errors.append(f"{path}: expected {' or '.join(map(str, kinds))}, got {type(value).__name__}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            matches = 0
            for option in options:
                trial: list[str] = []
                _check(value, option, root, path, trial)
                matches += not trial
            if matches == 0 or (key == "oneOf" and matches > 1):
                errors.append(f"{path}: matches {matches} of the {key} options")
    for option in schema.get("allOf") or ():
        _check(value, option, root, path, errors)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                errors.append(f"{path}: missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                _check(item, props[name], root, f"{path}.{name}", errors)
            elif extra is False:
                errors.append(f"{path}: unexpected property {name!r}")
            elif is_mapping(extra):
                _check(item, extra, root, f"{path}.{name}", errors)
    elif isinstance(value, list):
        items = schema.get("items")
        if items is not None:
            for i, item in enumerate(value):
                _check(item, items, root, f"{path}[{i}]", errors)
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            errors.append(f"{path}: does not match pattern {pattern!r}")
    elif _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: less than the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: more than the maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: not more than {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: not less than {schema['exclusiveMaximum']}")
